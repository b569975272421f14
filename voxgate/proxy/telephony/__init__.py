"""Phone calls through voxgate (issue 22).

- ``twilio_protocol``: Twilio Media Streams messages, their validation, the
  played-audio tracker, ``X-Twilio-Signature`` (pure).
- ``twilio``: ``GET /v1/telephony/twilio``, the Media Stream bridged to the
  provider (``audio/pcmu``), admitted and metered as ``transport="twilio"``.
- ``settings``: ``TelephonySettings`` (the server-wide Twilio auth token).
- ``call_auth``: the upgrade's ``X-Twilio-Signature`` checked at ``start``
  with the token of the call's project (else the server-wide one), and the
  refused calls written to the audit log.
- ``sip``, ``sip_protocol``: OpenAI SIP calls (their own ``sip.setup``;
  docs/telephony-sip.md).

``setup(app)`` adds the Twilio route; docs/telephony.md is the guide.
"""

from __future__ import annotations

from aiohttp import web

from voxgate.proxy.keys import SETTINGS
from voxgate.proxy.telephony.call_auth import RefusalLog
from voxgate.proxy.telephony.settings import (
    TWILIO_AUTH_TOKEN,
    TWILIO_REFUSALS,
    telephony_settings,
)
from voxgate.proxy.telephony.twilio import TWILIO_PATH, twilio_stream

__all__ = ["setup", "routes", "TWILIO_PATH"]


def routes() -> list[web.RouteDef]:
    """The telephony routes: ``GET /v1/telephony/twilio``."""
    return [web.get(TWILIO_PATH, twilio_stream)]


def setup(app: web.Application) -> None:
    """Add the telephony routes to ``app``, its log of refused calls, and
    the server-wide Twilio auth token from its settings
    (``telephony_settings``), if one is configured."""
    app.router.add_routes(routes())
    app[TWILIO_REFUSALS] = RefusalLog()
    settings = app.get(SETTINGS)
    token = telephony_settings(settings).twilio_auth_token
    if token is not None and token.get_secret_value():
        app[TWILIO_AUTH_TOKEN] = token.get_secret_value()

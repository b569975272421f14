"""Telephony settings: ``[telephony]`` of voxgate.toml
(``voxgate.config.TelephonySettings``; ``VOXGATE_TELEPHONY__TWILIO_AUTH_TOKEN``
in the environment) and the app key the Twilio route reads them from."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from voxgate.config import TelephonySettings
from voxgate.proxy.telephony.call_auth import RefusalLog

__all__ = ["TelephonySettings", "TWILIO_AUTH_TOKEN", "TWILIO_REFUSALS", "telephony_settings"]

TWILIO_AUTH_TOKEN = web.AppKey("twilio_auth_token", str)
"""The Twilio auth token the ``X-Twilio-Signature`` of stream upgrades is
checked with (absent: not checked), the fallback of projects without their
own (``Project.twilio_token_sealed``)."""
TWILIO_REFUSALS = web.AppKey("twilio_refusals", RefusalLog)
"""The app's log of refused calls (``call_auth.RefusalLog``: the audit log,
rate-capped)."""


def telephony_settings(settings: Any) -> TelephonySettings:
    """``settings.telephony`` (defaults when ``settings`` is None)."""
    found = getattr(settings, "telephony", None)
    return found if isinstance(found, TelephonySettings) else TelephonySettings()

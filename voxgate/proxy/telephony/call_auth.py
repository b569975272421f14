"""Who may place a phone call through voxgate: Twilio's signature of a
stream's upgrade, checked with the token of the project the call's key
names, and the record of every refused call.

**The signature, per project.** Twilio signs the WebSocket upgrade of a
``<Connect><Stream>`` with the auth token of the Twilio account the call
came from (``X-Twilio-Signature``: HMAC-SHA1 of the stream URL,
``twilio_protocol.compute_signature``). The upgrade names no project: the
key arrives later, in the ``start`` message's ``customParameters``. So the
upgrade's signature and the URLs it may cover are kept
(:class:`UpgradeSignature`) and checked at ``start``, once the key names the
project, before admission:

- the project has its own Twilio auth token (``PATCH /v1/projects/{id}``
  ``{"twilio_auth_token": …}``, sealed like BYOK keys,
  ``ProviderKeys.twilio_token_of``): the signature must be Twilio's under
  that token;
- else, the server-wide ``[telephony] twilio_auth_token`` (the fallback), if
  configured;
- else nothing is checked.

A wrong or missing signature refuses the call: ``PermissionDenied``
(``invalid_twilio_signature``), the stream closed 1008, nothing admitted,
nothing billed. With a server-wide token, an upgrade with no signature at
all is refused at once (HTTP 403: no token could accept it); one signed
with another token gets to ``start``, since it may be the project's.

**The refused attempt.** Every call refused before it had a session (no
``start`` in time, a protocol error before it, a wrong key, signature or
session config, admission's no) is written to the audit log
(:class:`RefusalLog`: ``actor`` ``twilio``, ``action``
``twilio.call_refused``, the account when the key named one, ``detail``
with the ``call_sid``, ``stream_sid``, Twilio ``account_sid``, the project,
the close code, the refusal's ``code`` and ``message``, the peer address;
never the key), at most :data:`AUDIT_PER_MINUTE` a minute per process (an
unauthenticated flood cannot fill the table; beyond it the refusals are
logged and counted only, and the next row written says how many were
skipped).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from voxgate.errors import PermissionDenied
from voxgate.models import Project
from voxgate.proxy.provider_keys import ProviderKeys
from voxgate.proxy.telephony.twilio_protocol import signature_valid
from voxgate.store.base import Store

__all__ = ["UpgradeSignature", "RefusalLog", "REFUSALS", "AUDIT_ACTION", "AUDIT_ACTOR",
           "AUDIT_PER_MINUTE"]

log = logging.getLogger("voxgate.telephony")

AUDIT_ACTOR = "twilio"
AUDIT_ACTION = "twilio.call_refused"
AUDIT_PER_MINUTE = 120
"""Most refused calls written to the audit log per minute and process."""


@dataclass(frozen=True, slots=True)
class UpgradeSignature:
    """What a stream's upgrade carried for Twilio's signature check.

    Attributes:
        signature: its ``X-Twilio-Signature`` (None: none).
        urls: the URLs Twilio may have signed (``wss://``/``ws://`` on the
            ``Host`` and any ``X-Forwarded-Host``, with path and query).
        server_token: the server-wide ``[telephony] twilio_auth_token``
            (None: not configured).
    """

    signature: str | None
    urls: tuple[str, ...]
    server_token: str | None = None

    def refused_at_upgrade(self) -> bool:
        """True when no token can accept the upgrade: a server-wide token is
        configured and the upgrade has no signature at all."""
        return bool(self.server_token) and not self.signature

    def check(self, project: Project, keys: ProviderKeys) -> str | None:
        """Check the signature for ``project``'s call; returns whose token
        checked it (``project``, ``server``) or None when none applies.

        Raises:
            PermissionDenied (403, ``invalid_twilio_signature``): the
                signature is missing or not Twilio's under the token that
                applies (the project's own, else the server-wide one).
            PermissionDenied (403, ``twilio_token_unreadable``): the
                project's token cannot be opened (the call is not taken
                unverified).
        """
        own = keys.twilio_token_of(project)
        token, whose = (own, "project") if own else (self.server_token, "server")
        if not token:
            return None
        if not signature_valid(token, list(self.urls), self.signature):
            # short: a close reason holds 123 bytes
            raise PermissionDenied(f"X-Twilio-Signature missing or wrong for the {whose}'s "
                                   "Twilio auth token", code="invalid_twilio_signature")
        return whose


class RefusalLog:
    """Writes refused calls to the audit log, at most ``per_minute`` a
    minute (see the module's docstring)."""

    def __init__(self, per_minute: int = AUDIT_PER_MINUTE, clock=time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._window = -1
        self._written = 0
        self.skipped = 0  # refusals not written since the last row

    def _admit(self) -> bool:
        window = int(self._clock() // 60)
        if window != self._window:
            self._window, self._written = window, 0
        if self._written >= self.per_minute:
            self.skipped += 1
            return False
        self._written += 1
        return True

    async def record(self, store: Store, *, account_id: str | None, close_code: int,
                     code: str | None, message: str, **detail: Any) -> bool:
        """Write one refused call (``detail``: ``call_sid``, ``stream_sid``,
        ``account_sid``, ``project_id``, ``remote``, …; None values left
        out). False when the rate cap or the store said no (never raises:
        the refusal goes on)."""
        if not self._admit():
            return False
        row = {k: v for k, v in detail.items() if v is not None}
        row.update(close_code=close_code, code=code, message=message[:300])
        if self.skipped:
            row["skipped_before"], self.skipped = self.skipped, 0
        try:
            await store.audit(AUDIT_ACTOR, AUDIT_ACTION, account_id, row)
        except Exception as exc:  # noqa: BLE001 - the call is refused either way
            log.warning("refused twilio call not written to the audit log: %s: %s",
                        type(exc).__name__, exc)
            return False
        return True


REFUSALS = RefusalLog()
"""The process's refused-call log, for an app whose ``setup`` gave it none."""

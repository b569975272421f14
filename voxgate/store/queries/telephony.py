"""The SQL of OpenAI SIP calls (``voxgate.proxy.telephony.sip``) on the
store's connection: ``SipCallsDB``, the webhook deliveries taken
(``sip_webhook_deliveries``, ``migrations/0016_sip_calls.sql``) and a SIP
call's session found by OpenAI's ``call_id`` (``sessions.call_sid``).
Times are Unix seconds."""

from __future__ import annotations

from typing import Any

from voxgate.models import SessionRecord
from voxgate.store.statements import SESSION_COLS, session_row

__all__ = ["SipCallsDB", "SIP_TRANSPORT"]

SIP_TRANSPORT = "sip"
_PRUNE_EVERY_S = 60.0  # deliveries past the keep window are deleted at most this often


class SipCallsDB:
    """SIP call rows on an open store (SQLite or PostgreSQL). Each method
    is one autocommit statement (atomic on its own, in any process)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._pruned_at = 0.0

    async def claim_delivery(self, webhook_id: str, call_id: str, now: float,
                             keep_s: float) -> bool:
        """Take the delivery ``webhook_id`` (of the call ``call_id``): True
        the first time, from any process; False for a redelivery. Deliveries
        received more than ``keep_s`` seconds before ``now`` (past the
        sender's retries) are deleted first, at most once a minute per
        ``SipCallsDB``."""
        if now - self._pruned_at >= _PRUNE_EVERY_S:
            self._pruned_at = now
            await self.store._write(
                "DELETE FROM sip_webhook_deliveries WHERE received_at < ?", (now - keep_s,))
        inserted = await self.store._write(
            "INSERT INTO sip_webhook_deliveries (webhook_id, call_id, received_at)"
            " VALUES (?, ?, ?) ON CONFLICT DO NOTHING", (webhook_id, call_id, now))
        return inserted == 1

    async def release_delivery(self, webhook_id: str) -> None:
        """Forget a delivery that could not be handled (the database or the
        provider failed before a decision), so that OpenAI's retry of it is
        handled afresh."""
        await self.store._write("DELETE FROM sip_webhook_deliveries WHERE webhook_id = ?",
                                (webhook_id,))

    async def delivery_done(self, webhook_id: str, outcome: str,
                            session_id: str | None = None) -> None:
        """Record what a delivery led to: ``accepted`` (with the call's
        session) or ``rejected:<SIP status code>``."""
        await self.store._write(
            "UPDATE sip_webhook_deliveries SET outcome = ?, session_id = ? WHERE webhook_id = ?",
            (outcome[:100], session_id, webhook_id))

    async def delivery(self, webhook_id: str) -> dict[str, Any] | None:
        """``{"webhook_id", "call_id", "received_at", "outcome",
        "session_id"}`` of a delivery taken, or None."""
        row = await self.store._one(
            "SELECT webhook_id, call_id, received_at, outcome, session_id"
            " FROM sip_webhook_deliveries WHERE webhook_id = ?", (webhook_id,))
        if row is None:
            return None
        return {"webhook_id": row[0], "call_id": row[1], "received_at": row[2],
                "outcome": row[3], "session_id": row[4]}

    async def set_call(self, session_id: str, call_id: str) -> None:
        """Store OpenAI's ``call_id`` as the session's ``call_sid``."""
        await self.store._write("UPDATE sessions SET call_sid = ? WHERE id = ?",
                                (call_id, session_id))

    async def call_session(self, call_id: str) -> SessionRecord | None:
        """The newest session of transport ``sip`` whose ``call_sid`` is
        ``call_id``, or None."""
        row = await self.store._one(
            f"SELECT {SESSION_COLS} FROM sessions WHERE call_sid = ? AND transport = ?"
            " ORDER BY started_at DESC LIMIT 1", (call_id, SIP_TRANSPORT))
        return session_row(row) if row else None

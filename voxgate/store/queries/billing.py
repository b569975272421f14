"""Billing's own tables (``migrations/0002_billing.sql``) on the store's
connection (SQLite or PostgreSQL): writes inside ``store.transaction()``,
reads direct, all on the pool's background lane on PostgreSQL
(``voxgate.store.connection``). Used by ``voxgate.billing`` (re-exported
as ``voxgate.billing.db``).

Claims are bounded: ``claim_settlements`` takes at most ``limit`` due
invoice settlements, ``unclaimed_closed`` lists at most ``limit`` sessions
and ``claim_settlement`` claims them in one statement (on PostgreSQL with
``FOR UPDATE SKIP LOCKED``), never one round trip per session.

Times are Unix seconds; periods ``"YYYY-MM"`` (UTC).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from voxgate.models import Account
from voxgate.store.connection import lane
from voxgate.store.statements import ACCOUNT_COLS, account_row

__all__ = ["BillingDB", "EmailItem", "WebhookItem", "WebhookEndpoint", "WebhookDelivery",
           "InvoiceSettlement", "backoff_s"]


def backoff_s(attempts: int, base_s: float, max_s: float) -> float:
    """Delay before attempt ``attempts + 1``: ``base_s`` doubled per earlier
    attempt, capped at ``max_s`` (in seconds)."""
    return min(max_s, base_s * (2 ** min(max(attempts, 0), 30)))


@dataclass(slots=True)
class EmailItem:
    id: int
    account_id: str | None
    kind: str
    to_addr: str
    subject: str
    body: str
    attempts: int
    last_error: str | None
    sent_at: float | None


@dataclass(slots=True)
class WebhookItem:
    id: int
    account_id: str
    event_type: str
    payload: str
    attempts: int


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """An account's webhook endpoint (``account_webhooks``): ``events`` the
    event types it subscribes to (0015), ``created_at`` Unix s of its last set."""

    url: str
    secret: str
    events: tuple[str, ...]
    created_at: float


@dataclass(slots=True)
class WebhookDelivery:
    """One ``webhook_outbox`` row as the account sees it: ``payload`` the
    JSON text sent; times Unix s; ``delivered_at`` None while pending."""

    id: int
    event_type: str
    payload: str
    created_at: float
    attempts: int
    next_attempt_at: float
    last_error: str | None
    delivered_at: float | None


@dataclass(slots=True)
class InvoiceSettlement:
    """One invoice item for an account's billable sessions of a period:
    ``amount_cents = quantity × unit_cents``. ``id`` is the Idempotency-Key."""

    id: str
    account_id: str
    period: str
    seq: int
    quantity: int
    unit_cents: int
    amount_cents: int
    status: str
    invoice_item_id: str | None
    attempts: int
    next_attempt_at: float
    last_error: str | None


_EMAIL_COLS = "id, account_id, kind, to_addr, subject, body, attempts, last_error, sent_at"
_SETTLEMENT_COLS = ("id, account_id, period, seq, quantity, unit_cents, amount_cents, status,"
                    " invoice_item_id, attempts, next_attempt_at, last_error")
CLAIM_BATCH = 1000  # sessions per invoice settlement claim, settlements per claim
_SQLITE_IN_BATCH = 500  # ids per "IN (?, …)" (SQLite's bound-parameter limit)


class BillingDB:
    """Queries on billing's tables. ``store`` is a ``voxgate.store.sql.SQLStore``."""

    def __init__(self, store: Any) -> None:
        self.store = store

    @property
    def db(self):
        return self.store.db

    @property
    def _postgres(self) -> bool:
        return getattr(getattr(self.store, "dialect", None), "name", "sqlite") == "postgresql"

    async def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with lane("background"):
            return list(await self.db.execute_fetchall(sql, params))

    # -- accounts --------------------------------------------------------

    async def account_by_customer(self, customer_id: str) -> Account | None:
        rows = await self._rows(
            f"SELECT {ACCOUNT_COLS} FROM accounts WHERE stripe_customer_id = ?", (customer_id,))
        return account_row(rows[0]) if rows else None

    async def past_due_accounts(self, before: float) -> list[Account]:
        """Accounts past due since before ``before``."""
        rows = await self._rows(
            f"SELECT {ACCOUNT_COLS} FROM accounts WHERE status = 'past_due'"
            " AND past_due_since IS NOT NULL AND past_due_since < ?", (before,))
        return [account_row(r) for r in rows]

    # -- small state in meta ---------------------------------------------

    async def meta_with_prefix(self, prefix: str) -> list[tuple[str, str]]:
        """(key, value) of the non-empty ``meta`` rows whose key starts with ``prefix``."""
        rows = await self._rows(
            "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ? AND value <> ''"
            " ORDER BY key", (len(prefix), prefix))
        return [(r[0], r[1]) for r in rows]

    # -- Stripe events ---------------------------------------------------

    async def record_event(self, event_id: str, event_type: str, payload: bytes) -> bool:
        """Record a received event; False when it was already recorded (a replay)."""
        async with self.store.transaction() as db:
            cur = await db.execute(
                "INSERT INTO stripe_events (id, type, received_at, payload)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (event_id, event_type, time.time(), payload.decode()))
            return cur.rowcount == 1

    async def unprocessed_events(self, limit: int = 50) -> list[tuple[str, str]]:
        """(id, payload) of events not processed yet, oldest first."""
        rows = await self._rows(
            "SELECT id, payload FROM stripe_events WHERE processed_at IS NULL"
            " ORDER BY received_at, id LIMIT ?", (limit,))
        return [(r[0], r[1]) for r in rows]

    async def event_done(self, event_id: str) -> None:
        async with self.store.transaction() as db:
            await db.execute("UPDATE stripe_events SET processed_at = ?, last_error = NULL"
                             " WHERE id = ?", (time.time(), event_id))

    async def event_failed(self, event_id: str, error: str) -> None:
        async with self.store.transaction() as db:
            await db.execute("UPDATE stripe_events SET attempts = attempts + 1, last_error = ?"
                             " WHERE id = ?", (error, event_id))

    async def event_status(self, event_id: str) -> dict[str, Any] | None:
        rows = await self._rows(
            "SELECT id, type, processed_at, attempts, last_error FROM stripe_events WHERE id = ?",
            (event_id,))
        if not rows:
            return None
        r = rows[0]
        return {"id": r[0], "type": r[1], "processed_at": r[2], "attempts": r[3],
                "last_error": r[4]}

    # -- audit log -------------------------------------------------------

    async def audit(self, actor: str, account_id: str | None, action: str,
                    detail: dict[str, Any] | None = None) -> None:
        async with self.store.transaction() as db:
            await db.execute(
                "INSERT INTO audit_log (at, actor, account_id, action, detail)"
                " VALUES (?, ?, ?, ?, ?)",
                (time.time(), actor, account_id, action, orjson.dumps(detail or {}).decode()))

    async def list_audit(self, account_id: str | None = None,
                         limit: int = 100) -> list[dict[str, Any]]:
        """Newest first; every account's when ``account_id`` is None."""
        where, params = ("WHERE account_id = ?", (account_id,)) if account_id else ("", ())
        rows = await self._rows(
            f"SELECT id, at, actor, account_id, action, detail FROM audit_log {where}"
            " ORDER BY id DESC LIMIT ?", (*params, limit))
        return [{"id": r[0], "at": r[1], "actor": r[2], "account_id": r[3], "action": r[4],
                 "detail": orjson.loads(r[5])} for r in rows]

    # -- quota alerts ----------------------------------------------------

    async def claim_quota_alert(self, account_id: str, period: str, threshold: int) -> bool:
        """True the first time only, per account, period and threshold."""
        async with self.store.transaction() as db:
            cur = await db.execute(
                "INSERT INTO quota_alerts (account_id, period, threshold, sent_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (account_id, period, threshold, time.time()))
            return cur.rowcount == 1

    async def quota_alerts(self, account_id: str, period: str) -> list[int]:
        rows = await self._rows(
            "SELECT threshold FROM quota_alerts WHERE account_id = ? AND period = ?"
            " ORDER BY threshold", (account_id, period))
        return [r[0] for r in rows]

    # -- email outbox ----------------------------------------------------

    async def queue_email(self, *, account_id: str | None, kind: str, to_addr: str,
                          subject: str, body: str, dedupe_key: str | None = None) -> bool:
        """Queue a message; False when ``dedupe_key`` was queued before."""
        now = time.time()
        async with self.store.transaction() as db:
            cur = await db.execute(
                "INSERT INTO email_outbox (account_id, kind, to_addr, subject, body,"
                " dedupe_key, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (account_id, kind, to_addr, subject, body, dedupe_key, now, now))
            return cur.rowcount == 1

    async def due_emails(self, now: float, limit: int = 50) -> list[EmailItem]:
        rows = await self._rows(
            f"SELECT {_EMAIL_COLS} FROM email_outbox WHERE sent_at IS NULL"
            " AND next_attempt_at <= ? ORDER BY id LIMIT ?", (now, limit))
        return [EmailItem(*r) for r in rows]

    async def list_emails(self, account_id: str | None = None) -> list[EmailItem]:
        where, params = ("WHERE account_id = ?", (account_id,)) if account_id else ("", ())
        rows = await self._rows(f"SELECT {_EMAIL_COLS} FROM email_outbox {where} ORDER BY id",
                                params)
        return [EmailItem(*r) for r in rows]

    async def claim_email(self, email_id: int, now: float, until: float) -> bool:
        """Take a due, unsent message for sending until ``until`` (its next
        attempt moves there); True for the one caller, in any process, that
        took it."""
        async with self.store.transaction() as db:
            cur = await db.execute(
                "UPDATE email_outbox SET next_attempt_at = ? WHERE id = ? AND sent_at IS NULL"
                " AND next_attempt_at <= ?", (until, email_id, now))
            return cur.rowcount == 1

    async def email_sent(self, email_id: int) -> None:
        async with self.store.transaction() as db:
            await db.execute("UPDATE email_outbox SET sent_at = ?, last_error = NULL WHERE id = ?",
                             (time.time(), email_id))

    async def email_failed(self, email_id: int, next_attempt_at: float, error: str) -> None:
        async with self.store.transaction() as db:
            await db.execute(
                "UPDATE email_outbox SET attempts = attempts + 1, next_attempt_at = ?,"
                " last_error = ? WHERE id = ?", (next_attempt_at, error, email_id))

    # -- account webhooks ------------------------------------------------

    async def set_account_webhook(self, account_id: str, url: str, secret: str,
                                  events: Sequence[str] | None = None) -> None:
        """Set the account's endpoint. ``events``: the event types it
        subscribes to; None keeps those it had (a new endpoint gets the
        column's default, the alert events of 0015)."""
        async with self.store.transaction() as db:
            if events is None:
                await db.execute(
                    "INSERT INTO account_webhooks (account_id, url, secret, created_at)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET"
                    " url = excluded.url, secret = excluded.secret,"
                    " created_at = excluded.created_at",
                    (account_id, url, secret, time.time()))
                return
            await db.execute(
                "INSERT INTO account_webhooks (account_id, url, secret, created_at, events)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET"
                " url = excluded.url, secret = excluded.secret,"
                " created_at = excluded.created_at, events = excluded.events",
                (account_id, url, secret, time.time(), orjson.dumps(list(events)).decode()))

    async def set_webhook_events(self, account_id: str, events: Sequence[str]) -> None:
        """Change the event types of the account's endpoint (none: no-op)."""
        async with self.store.transaction() as db:
            await db.execute("UPDATE account_webhooks SET events = ? WHERE account_id = ?",
                             (orjson.dumps(list(events)).decode(), account_id))

    async def webhook_endpoint(self, account_id: str) -> WebhookEndpoint | None:
        rows = await self._rows(
            "SELECT url, secret, events, created_at FROM account_webhooks WHERE account_id = ?",
            (account_id,))
        if not rows:
            return None
        url, secret, events, created_at = rows[0]
        return WebhookEndpoint(url, secret, tuple(orjson.loads(events)), created_at)

    async def delete_account_webhook(self, account_id: str) -> None:
        async with self.store.transaction() as db:
            await db.execute("DELETE FROM account_webhooks WHERE account_id = ?", (account_id,))

    async def account_webhook(self, account_id: str) -> tuple[str, str] | None:
        """(url, secret) or None."""
        rows = await self._rows(
            "SELECT url, secret FROM account_webhooks WHERE account_id = ?", (account_id,))
        return (rows[0][0], rows[0][1]) if rows else None

    async def queue_webhook(self, account_id: str, event_type: str, payload: dict[str, Any],
                            dedupe_key: str | None = None) -> bool:
        now = time.time()
        async with self.store.transaction() as db:
            cur = await db.execute(
                "INSERT INTO webhook_outbox (account_id, event_type, payload,"
                " dedupe_key, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (account_id, event_type, orjson.dumps(payload).decode(), dedupe_key, now, now))
            return cur.rowcount == 1

    async def sessions_without_event(self, event_type: str, id_prefix: str, started_since: float,
                                     ended_before: float,
                                     limit: int = 500) -> list[tuple[str, str]]:
        """(session id, account id) of the completed sessions started since
        ``started_since`` and ended before ``ended_before``, of accounts whose
        endpoint subscribes to ``event_type`` since before the session ended,
        with no ``webhook_outbox`` row under the dedupe key ``id_prefix`` +
        session id: the ``session.completed`` events no completion hook
        queued (sessions completed by a sweep, a process that died first).
        Oldest first, at most ``limit``."""
        rows = await self._rows(
            "SELECT s.id, s.account_id FROM account_webhooks w JOIN sessions s"
            " ON s.account_id = w.account_id AND s.started_at >= ?"
            " WHERE w.events LIKE ? AND s.status = 'completed' AND s.ended_at < ?"
            " AND s.ended_at >= w.created_at AND NOT EXISTS (SELECT 1 FROM webhook_outbox o"
            " WHERE o.dedupe_key = ? || s.id) ORDER BY s.started_at, s.id LIMIT ?",
            (started_since, f'%"{event_type}"%', ended_before, id_prefix, limit))
        return [(r[0], r[1]) for r in rows]

    async def list_webhooks(self, account_id: str, limit: int = 50) -> list[WebhookDelivery]:
        """The account's deliveries, newest first (pending and delivered
        ones not pruned yet)."""
        rows = await self._rows(
            "SELECT id, event_type, payload, created_at, attempts, next_attempt_at, last_error,"
            " delivered_at FROM webhook_outbox WHERE account_id = ? ORDER BY id DESC LIMIT ?",
            (account_id, limit))
        return [WebhookDelivery(*r) for r in rows]

    async def resend_webhook(self, account_id: str, item_id: int, now: float) -> bool:
        """Make one of the account's deliveries due again at ``now`` (a
        delivered one is sent again, with the same payload and event id);
        False when the account has no such delivery."""
        async with self.store.transaction() as db:
            cur = await db.execute(
                "UPDATE webhook_outbox SET delivered_at = NULL, next_attempt_at = ?"
                " WHERE id = ? AND account_id = ?", (now, item_id, account_id))
            return cur.rowcount == 1

    async def due_webhooks(self, now: float, limit: int = 50) -> list[WebhookItem]:
        rows = await self._rows(
            "SELECT id, account_id, event_type, payload, attempts FROM webhook_outbox"
            " WHERE delivered_at IS NULL AND next_attempt_at <= ? ORDER BY id LIMIT ?",
            (now, limit))
        return [WebhookItem(*r) for r in rows]

    async def claim_webhook(self, item_id: int, now: float, until: float) -> bool:
        """``claim_email`` for a customer-webhook delivery."""
        async with self.store.transaction() as db:
            cur = await db.execute(
                "UPDATE webhook_outbox SET next_attempt_at = ? WHERE id = ?"
                " AND delivered_at IS NULL AND next_attempt_at <= ?", (until, item_id, now))
            return cur.rowcount == 1

    async def webhook_delivered(self, item_id: int) -> None:
        async with self.store.transaction() as db:
            await db.execute("UPDATE webhook_outbox SET delivered_at = ?, last_error = NULL"
                             " WHERE id = ?", (time.time(), item_id))

    async def webhook_failed(self, item_id: int, next_attempt_at: float, error: str) -> None:
        async with self.store.transaction() as db:
            await db.execute(
                "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = ?,"
                " last_error = ? WHERE id = ?", (next_attempt_at, error, item_id))

    # -- invoice-item settlement ------------------------------------------

    async def claim_settlements(self, now: float, until: float,
                                limit: int = CLAIM_BATCH) -> list[InvoiceSettlement]:
        """Take up to ``limit`` pending invoice settlements due at ``now``,
        oldest first, for sending until ``until`` (their next attempt moves
        there, so a dead worker's are due again then); each goes to one
        caller in any process. Returned as before the claim. PostgreSQL:
        one statement locking only the rows it takes (``FOR UPDATE SKIP
        LOCKED``: concurrent claimers get disjoint ones without waiting);
        SQLite: read and moved in one write transaction."""
        if self._postgres:
            cols = ", ".join(f"i.{c.strip()}" for c in _SETTLEMENT_COLS.split(","))
            cols = cols.replace("i.next_attempt_at", "c.next_attempt_at")
            rows = await self._rows(
                f"UPDATE invoice_settlements i SET next_attempt_at = ? FROM ("
                " SELECT id, next_attempt_at FROM invoice_settlements WHERE status = 'pending'"
                " AND next_attempt_at <= ? ORDER BY created_at, id LIMIT ? FOR UPDATE SKIP LOCKED"
                f") c WHERE i.id = c.id RETURNING {cols}, i.created_at", (until, now, limit))
            rows.sort(key=lambda r: (r[-1], r[0]))
            return [InvoiceSettlement(*r[:-1]) for r in rows]
        async with self.store.transaction() as db:
            cur = await db.execute(
                f"SELECT {_SETTLEMENT_COLS} FROM invoice_settlements WHERE status = 'pending'"
                " AND next_attempt_at <= ? ORDER BY created_at, id LIMIT ?", (now, limit))
            rows = await cur.fetchall()
            await db.executemany(
                "UPDATE invoice_settlements SET next_attempt_at = ? WHERE id = ?",
                [(until, r[0]) for r in rows])
        return [InvoiceSettlement(*r) for r in rows]

    async def list_settlements(self, account_id: str) -> list[InvoiceSettlement]:
        rows = await self._rows(
            f"SELECT {_SETTLEMENT_COLS} FROM invoice_settlements WHERE account_id = ?"
            " ORDER BY period, seq", (account_id,))
        return [InvoiceSettlement(*r) for r in rows]

    async def unclaimed_closed(self, current_period: str, limit: int = CLAIM_BATCH,
                               ) -> list[tuple[str, str, list[str]]]:
        """(account_id, period, session ids) of outbox sessions of periods
        before ``current_period`` not yet claimed by an invoice settlement:
        at most ``limit`` sessions (the next call lists the next ones, once
        these are claimed)."""
        rows = await self._rows(
            "SELECT o.account_id, o.period, o.session_id FROM settlement_outbox o"
            " LEFT JOIN invoice_settlement_sessions s ON s.session_id = o.session_id"
            " WHERE s.session_id IS NULL AND o.period < ?"
            " ORDER BY o.account_id, o.period, o.created_at, o.session_id LIMIT ?",
            (current_period, limit))
        groups: dict[tuple[str, str], list[str]] = {}
        for account_id, period, session_id in rows:
            groups.setdefault((account_id, period), []).append(session_id)
        return [(a, p, ids) for (a, p), ids in groups.items()]

    async def claim_settlement(self, account_id: str, period: str, session_ids: list[str],
                               unit_cents: int, now: float,
                               amount_of: Callable[[int, int], int] | None = None,
                               limit: int = CLAIM_BATCH) -> InvoiceSettlement | None:
        """Create the next invoice settlement of (account, period) covering
        the first ``limit`` of ``session_ids`` that are still in the
        account's outbox for the period and not claimed meanwhile; None if
        none was left. The sessions are claimed in one statement (on
        PostgreSQL ``FOR UPDATE SKIP LOCKED``; on SQLite one per
        ``_SQLITE_IN_BATCH`` ids), in one write transaction.
        ``amount_of(before, quantity)``: the cents of ``quantity`` sessions
        after ``before`` were settled in earlier settlements of the period
        (graduated tiers); default ``quantity × unit_cents``."""
        session_ids = list(session_ids[:max(0, limit)])
        async with self.store.transaction() as db:
            cur = await db.execute(
                "SELECT COALESCE(MAX(seq), 0), COALESCE(SUM(quantity), 0) FROM invoice_settlements"
                " WHERE account_id = ? AND period = ?", (account_id, period))
            last_seq, before = await cur.fetchone()
            seq = int(last_seq) + 1
            settlement_id = f"voxgate-ii-{account_id}-{period}-{seq}"
            await db.execute(
                "INSERT INTO invoice_settlements (id, account_id, period, seq, quantity,"
                " unit_cents, amount_cents, status, created_at, next_attempt_at)"
                " VALUES (?, ?, ?, ?, 0, ?, 0, 'pending', ?, ?)",
                (settlement_id, account_id, period, seq, unit_cents, now, now))
            claimed = 0
            if self._postgres:
                c = await db.execute(
                    "INSERT INTO invoice_settlement_sessions (settlement_id, session_id)"
                    " SELECT ?, o.session_id FROM settlement_outbox o WHERE o.account_id = ?"
                    " AND o.period = ? AND o.session_id = ANY(?) AND NOT EXISTS (SELECT 1 FROM"
                    " invoice_settlement_sessions s WHERE s.session_id = o.session_id)"
                    " ORDER BY o.created_at, o.session_id LIMIT ? FOR UPDATE OF o SKIP LOCKED"
                    " ON CONFLICT DO NOTHING",
                    (settlement_id, account_id, period, session_ids, limit))
                claimed = c.rowcount
            for i in range(0, 0 if self._postgres else len(session_ids), _SQLITE_IN_BATCH):
                batch = session_ids[i:i + _SQLITE_IN_BATCH]
                c = await db.execute(
                    "INSERT INTO invoice_settlement_sessions (settlement_id, session_id)"
                    " SELECT ?, o.session_id FROM settlement_outbox o WHERE o.account_id = ?"
                    f" AND o.period = ? AND o.session_id IN ({', '.join('?' * len(batch))})"
                    " ON CONFLICT DO NOTHING", (settlement_id, account_id, period, *batch))
                claimed += c.rowcount
            if claimed == 0:
                await db.execute("DELETE FROM invoice_settlements WHERE id = ?", (settlement_id,))
                return None
            amount = (claimed * unit_cents if amount_of is None
                      else amount_of(int(before), claimed))
            await db.execute(
                "UPDATE invoice_settlements SET quantity = ?, amount_cents = ? WHERE id = ?",
                (claimed, amount, settlement_id))
        rows = await self._rows(
            f"SELECT {_SETTLEMENT_COLS} FROM invoice_settlements WHERE id = ?", (settlement_id,))
        return InvoiceSettlement(*rows[0])

    async def settlement_sessions(self, settlement_id: str) -> list[str]:
        rows = await self._rows(
            "SELECT session_id FROM invoice_settlement_sessions WHERE settlement_id = ?"
            " ORDER BY session_id", (settlement_id,))
        return [r[0] for r in rows]

    async def settlement_done(self, settlement_id: str, invoice_item_id: str) -> None:
        """Mark the settlement created and its sessions ``invoiced`` (one transaction)."""
        async with self.store.transaction() as db:
            await db.execute(
                "UPDATE invoice_settlements SET status = 'created', invoice_item_id = ?,"
                " last_error = NULL WHERE id = ?", (invoice_item_id, settlement_id))
            await db.execute(
                "UPDATE sessions SET settlement = 'invoiced', settlement_ref = ? WHERE id IN"
                " (SELECT session_id FROM invoice_settlement_sessions WHERE settlement_id = ?)",
                (invoice_item_id, settlement_id))
            await db.execute(
                "DELETE FROM settlement_outbox WHERE session_id IN"
                " (SELECT session_id FROM invoice_settlement_sessions WHERE settlement_id = ?)",
                (settlement_id,))

    async def settlement_failed(self, settlement_id: str, next_attempt_at: float,
                                error: str) -> None:
        """Back off the settlement and note the error on its outbox sessions."""
        async with self.store.transaction() as db:
            await db.execute(
                "UPDATE invoice_settlements SET attempts = attempts + 1, next_attempt_at = ?,"
                " last_error = ? WHERE id = ?", (next_attempt_at, error, settlement_id))
            await db.execute(
                "UPDATE settlement_outbox SET attempts = attempts + 1, next_attempt_at = ?,"
                " last_error = ? WHERE session_id IN (SELECT session_id FROM"
                " invoice_settlement_sessions WHERE settlement_id = ?)",
                (next_attempt_at, error, settlement_id))

    async def outbox_errors(self, account_id: str) -> list[tuple[str, int, str | None]]:
        """(session_id, attempts, last_error) of the account's pending outbox items."""
        rows = await self._rows(
            "SELECT session_id, attempts, last_error FROM settlement_outbox WHERE account_id = ?"
            " ORDER BY created_at, session_id", (account_id,))
        return [(r[0], r[1], r[2]) for r in rows]

"""``SQLStore``: the ``Store`` interface (``voxgate.store.base``) on SQL,
one class for every database, holding a ``Dialect``
(``voxgate.store.dialects``) for what differs: SQLite
(``dialects.sqlite``, the default, one file in the data directory) and
PostgreSQL (``dialects.postgresql``). ``SQLiteStore(path)`` and
``PostgresStore(url, …)`` build one; ``voxgate.store.open_store(settings)``
builds the one the settings name.

The store's methods are here and in its parts: ``accounts.AccountMethods``
(accounts, projects, keys), ``instances.InstanceMethods`` (instances,
checkpoints, sweeps); the rows and the session path's statements are in
``statements``, the migration runner in ``migrate``. The queries of billing,
the dashboard and the jobs are in ``voxgate.store.queries``, on ``store.db``
inside ``async with store.transaction():``.

Schema: versioned migrations, ``migrations/NNNN_name.sql``
(``migrations/postgresql/`` for PostgreSQL, with the same versions), applied
in version order at ``open()`` (``auto_migrate``; else ``PendingMigrations``),
each in its own transaction, and recorded in ``schema_migrations`` with the
file's checksum, verified at every ``open()`` (``ChecksumMismatch``).

Times are Unix seconds (float); periods are ``"YYYY-MM"`` in UTC.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from voxgate.models import SessionRecord, Verdict, new_id
from voxgate.models.packs import AccountPack, PackBalance, pack_balance, pack_expiry
from voxgate.store.accounts import AccountMethods
from voxgate.store.base import MonthlyUsage, OutboxItem, SessionFilter, period_of
from voxgate.store.connection import LaneLimits
from voxgate.store.dialects.sqlite import SQLiteDialect
from voxgate.store.instances import InstanceMethods
from voxgate.store.statements import (
    OPEN_SESSION_SQL,
    OUTBOX_COLS,
    PACK_COLS,
    SESSION_COLS,
    USAGE_COLS,
    live_packs_sync,
    pack_row,
    session_row,
    usage_row,
)

__all__ = ["SQLStore", "SQLiteStore", "PostgresStore"]


def SQLiteStore(path: str | Path, migrations_dir: str | Path | None = None) -> SQLStore:
    """The store on the SQLite file ``path`` (``dialects.sqlite.SQLiteDialect``)."""
    return SQLStore(SQLiteDialect(path, migrations_dir))


def PostgresStore(url: str, *, schema: str | None = None,
                  migrations_dir: str | Path | None = None,
                  lanes: dict[str, LaneLimits] | None = None,
                  acquire_timeout_s: float = 10.0) -> SQLStore:
    """The store on PostgreSQL (``dialects.postgresql.PostgresDialect``, its
    parameters)."""
    from voxgate.store.dialects.postgresql import PostgresDialect

    return SQLStore(PostgresDialect(url, schema=schema, migrations_dir=migrations_dir,
                                    lanes=lanes, acquire_timeout_s=acquire_timeout_s))


class SQLStore(AccountMethods, InstanceMethods):
    """The ``Store`` on SQL (see the module docstring): sessions, usage, the
    settlement outbox, packs, enterprise terms and meta here; accounts and
    keys in ``AccountMethods``, instances in ``InstanceMethods``, the
    connection's lifecycle in ``voxgate.store.core.SQLCore``.

    Parameters:
        dialect: the database (``SQLiteDialect``, ``PostgresDialect``): one
            object per store.
    """

    # ------------------------------------------------------------ sessions

    async def open_session(self, record: SessionRecord, *, lease_id: str | None = None) -> None:
        """Insert the session row with ``status="active"`` (one statement, no
        lock but the new row's; group committed on PostgreSQL's session
        lane), owned by ``instance_id``, holding admission lease ``lease_id``."""
        params = self._open_params(record, lease_id)
        await self.dialect.session_statement(self, (record.account_id, params[8], record.id),
                                             OPEN_SESSION_SQL, params)

    def _open_params(self, record: SessionRecord, lease_id: str | None) -> tuple[Any, ...]:
        """``OPEN_SESSION_SQL``'s parameters."""
        m = record.measurements
        return (
            record.id, record.account_id, record.project_id, record.api_key_id,
            record.ephemeral_key_id, record.transport, record.model, record.started_at,
            record.period or period_of(record.started_at),
            m.connect_ms, m.duration_ms, m.audio_in_ms, m.audio_out_ms, m.bytes_in,
            m.bytes_out, orjson.dumps(m.to_dict()).decode(), self.instance_id, lease_id,
            record.paid_by,
        )

    async def complete_session(
        self, record: SessionRecord, verdict: Verdict, *, settle: bool = False,
        settle_from: int | None = None, pack_from: int | None = None,
        provisional: bool = False,
    ) -> MonthlyUsage:
        """Complete the session in one transaction (see ``Store``), the
        dialect's way: SQLite runs ``statements.complete_sync`` in one hop
        to the connection's thread, PostgreSQL the same rules in one round
        trip (``voxgate_complete_session``).

        Idempotent: completing a session already completed changes nothing
        and returns the period's current usage — except the owning
        instance's final record (``provisional`` False) for a row a sweeper
        completed ``provisional``, which replaces it once (the upgrade rule).
        A session never opened is inserted completed.
        """
        ended_at = record.ended_at or time.time()
        return await self.dialect.complete_session(
            self, record, verdict, settle=settle, ended_at=ended_at, settle_from=settle_from,
            pack_from=pack_from, provisional=provisional)

    async def set_session_call(self, session_id: str, call_sid: str, stream_sid: str) -> None:
        """Store a phone call's Twilio ``CallSid`` and ``StreamSid`` on its
        session row (migration 0013); one statement."""
        await self._write("UPDATE sessions SET call_sid = ?, stream_sid = ? WHERE id = ?",
                          (call_sid, stream_sid, session_id))

    async def get_session(self, session_id: str) -> SessionRecord | None:
        row = await self._one(f"SELECT {SESSION_COLS} FROM sessions WHERE id = ?", (session_id,))
        return session_row(row) if row else None

    @staticmethod
    def _where(account_id: str, filters: SessionFilter | None) -> tuple[list[str], list[Any]]:
        clauses: list[str] = ["account_id = ?"]
        params: list[Any] = [account_id]
        f = filters or SessionFilter()
        if f.project_id is not None:
            clauses.append("project_id = ?")
            params.append(f.project_id)
        if f.billable is not None:
            clauses.append("billable = 1" if f.billable else "COALESCE(billable, 0) = 0")
        if f.reason is not None:
            clauses.append("reason = ?")
            params.append(f.reason)
        if f.since is not None:
            clauses.append("started_at >= ?")
            params.append(f.since)
        if f.until is not None:
            clauses.append("started_at < ?")
            params.append(f.until)
        if f.status is not None:
            clauses.append("status = ?")
            params.append(f.status)
        return clauses, params

    async def list_sessions(
        self,
        account_id: str,
        *,
        limit: int = 20,
        after: str | None = None,
        filters: SessionFilter | None = None,
    ) -> list[SessionRecord]:
        """Newest first by (started_at, id). ``after`` is a session id of this
        account: only sessions strictly older than it are returned (an
        unknown cursor gives an empty page)."""
        clauses, params = self._where(account_id, filters)
        if after is not None:
            cursor_row = await self._one(
                "SELECT started_at, id FROM sessions WHERE id = ? AND account_id = ?",
                (after, account_id))
            if cursor_row is None:
                return []
            clauses.append("(started_at < ? OR (started_at = ? AND id < ?))")
            params += [cursor_row[0], cursor_row[0], cursor_row[1]]
        rows = await self.db.execute_fetchall(
            f"SELECT {SESSION_COLS} FROM sessions WHERE {' AND '.join(clauses)}"
            " ORDER BY started_at DESC, id DESC LIMIT ?", (*params, max(0, limit)))
        return [session_row(r) for r in rows]

    async def count_sessions(self, account_id: str, filters: SessionFilter | None = None) -> int:
        clauses, params = self._where(account_id, filters)
        row = await self._one(
            f"SELECT COUNT(*) FROM sessions WHERE {' AND '.join(clauses)}", tuple(params))
        return int(row[0])

    # ------------------------------------------------------------ usage

    async def _usage(self, account_id: str, period: str) -> MonthlyUsage:
        row = await self._one(
            f"SELECT {USAGE_COLS} FROM monthly_usage WHERE account_id = ? AND period = ?",
            (account_id, period))
        return usage_row(account_id, period, row) if row else MonthlyUsage(account_id, period)

    async def get_usage(self, account_id: str, period: str) -> MonthlyUsage:
        """The account's usage in ``period`` (zeros if none)."""
        return await self._usage(account_id, period)

    async def list_usage(self, account_id: str) -> list[MonthlyUsage]:
        """Every period with usage, newest first."""
        rows = await self.db.execute_fetchall(
            f"SELECT period, {USAGE_COLS} FROM monthly_usage WHERE account_id = ?"
            " ORDER BY period DESC", (account_id,))
        return [usage_row(account_id, r[0], r[1:]) for r in rows]

    # ------------------------------------------------------------ settlement outbox

    async def due_outbox(self, now: float, limit: int = 100) -> list[OutboxItem]:
        """Items with ``next_attempt_at <= now``, oldest first."""
        rows = await self.db.execute_fetchall(
            f"SELECT {OUTBOX_COLS} FROM settlement_outbox WHERE next_attempt_at <= ?"
            " ORDER BY created_at, session_id LIMIT ?", (now, limit))
        return [OutboxItem(*r) for r in rows]

    async def claim_outbox(self, now: float, until: float, limit: int = 100) -> list[OutboxItem]:
        """Take up to ``limit`` items due at ``now``, oldest first, for
        sending until ``until``, each going to one caller of any process
        (the dialect's: SQLite ``BEGIN IMMEDIATE``, PostgreSQL ``FOR UPDATE
        SKIP LOCKED``)."""
        return await self.dialect.claim_outbox(self, now, until, limit)

    async def settle_outbox(self, session_id: str, *, settlement: str, ref: str | None) -> None:
        async with self.transaction() as db:
            await db.execute(
                "UPDATE sessions SET settlement = ?, settlement_ref = ? WHERE id = ?",
                (settlement, ref, session_id))
            await db.execute("DELETE FROM settlement_outbox WHERE session_id = ?", (session_id,))

    async def retry_outbox(self, session_id: str, *, next_attempt_at: float, error: str) -> None:
        await self._write(
            "UPDATE settlement_outbox SET attempts = attempts + 1, next_attempt_at = ?,"
            " last_error = ? WHERE session_id = ?", (next_attempt_at, error, session_id))

    # ------------------------------------------------------------ meta

    async def get_meta(self, key: str) -> str | None:
        row = await self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return row[0] if row else None

    async def set_meta(self, key: str, value: str) -> None:
        await self._write(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    # ------------------------------------------------------------ add-on packs

    async def grant_pack(self, account_id: str, *, catalog_pack: str, sessions: int,
                         price_cents: int, source: str, ref: str,
                         purchased_at: float) -> tuple[AccountPack, bool]:
        """Credit a pack of ``sessions`` to the account, expiring 30 days after
        ``purchased_at``; idempotent on ``ref`` (a Checkout Session id or a
        grant id). Returns (the pack, True when this call credited it).

        Raises:
            KeyError: unknown account.
        """
        if await self.get_account(account_id) is None:
            raise KeyError(account_id)
        async with self.transaction() as db:
            cursor = await db.execute(
                f"INSERT INTO session_packs ({PACK_COLS}) VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?)"
                " ON CONFLICT (ref) DO NOTHING",
                (new_id("pack"), account_id, catalog_pack, sessions, price_cents, source, ref,
                 purchased_at, pack_expiry(purchased_at)))
            created = cursor.rowcount == 1
        row = await self._one(f"SELECT {PACK_COLS} FROM session_packs WHERE ref = ?", (ref,))
        return pack_row(row), created

    async def list_packs(self, account_id: str) -> list[AccountPack]:
        """Every pack the account ever held, newest purchase first."""
        rows = await self.db.execute_fetchall(
            f"SELECT {PACK_COLS} FROM session_packs WHERE account_id = ?"
            " ORDER BY purchased_at DESC, id DESC", (account_id,))
        return [pack_row(r) for r in rows]

    async def pack_balance(self, account_id: str, period: str, now: float) -> PackBalance:
        """The account's packs as they count in ``period`` at ``now``
        (``voxgate.models.packs.pack_balance``)."""
        def read(conn: Any) -> PackBalance:
            used = conn.execute(
                "SELECT COUNT(*) FROM pack_sessions WHERE account_id = ? AND period = ?",
                (account_id, period)).fetchone()
            return pack_balance(live_packs_sync(conn, account_id, now), int(used[0]), now)

        # both reads in one thread hop: this runs on every admission
        result: PackBalance = await self.db.run(read)
        return result

    async def expire_packs(self, now: float) -> list[AccountPack]:
        """Mark the packs whose 30 days are over at ``now`` as expired; returns
        those this call marked (each is returned once, by one caller)."""
        async with self.transaction() as db:
            cursor = await db.execute(
                f"UPDATE session_packs SET expired_at = ? WHERE expires_at <= ?"
                f" AND expired_at IS NULL RETURNING {PACK_COLS}", (now, now))
            rows = await cursor.fetchall()
        return [pack_row(r) for r in rows]

    # ------------------------------------------------------------ enterprise plans

    async def set_enterprise_terms(self, account_id: str, terms: dict[str, Any]) -> None:
        """Store the account's enterprise plan terms (a JSON object, see
        ``voxgate.models.enterprise``).

        Raises:
            KeyError: unknown account.
        """
        if await self.get_account(account_id) is None:
            raise KeyError(account_id)
        now = time.time()
        await self._write(
            "INSERT INTO enterprise_plans (account_id, terms, created_at, updated_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET"
            " terms = excluded.terms, updated_at = excluded.updated_at",
            (account_id, orjson.dumps(terms).decode(), now, now))

    async def get_enterprise_terms(self, account_id: str) -> dict[str, Any] | None:
        row = await self._one("SELECT terms FROM enterprise_plans WHERE account_id = ?",
                              (account_id,))
        return orjson.loads(row[0]) if row else None

    async def list_enterprise_terms(self) -> dict[str, dict[str, Any]]:
        """account id → enterprise plan terms, for every account that has some."""
        rows = await self.db.execute_fetchall(
            "SELECT account_id, terms FROM enterprise_plans ORDER BY account_id")
        return {r[0]: orjson.loads(r[1]) for r in rows}

    # ------------------------------------------------------------ provider spend

    async def provider_spend_micros(self, account_id: str, period: str) -> int:
        """What the provider charged the operator for the account's sessions
        completed in ``period``, micro-USD (priced sessions, those on the
        customer's own key left out): what ``spend_limit_usd`` caps."""
        row = await self._one(
            "SELECT COALESCE(SUM(provider_cost_micros), 0) FROM sessions"
            " WHERE account_id = ? AND period = ? AND status = 'completed'"
            " AND (paid_by IS NULL OR paid_by <> 'customer')", (account_id, period))
        return int(row[0]) if row else 0

    async def claim_spend_alert(self, account_id: str, period: str, threshold: int,
                                now: float) -> bool:
        """Record the ``threshold`` % spend alert of the account's period;
        True for the one caller (of any process) that recorded it."""
        return await self._write(
            "INSERT INTO spend_alerts (account_id, period, threshold, sent_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING", (account_id, period, threshold, now)) == 1

"""SQLite: the store on one ``sqlite3`` connection driven from a thread of
its own (``voxgate.store.connection.AsyncConnection``).

The database runs in WAL mode with ``synchronous=NORMAL`` (a commit is
durable across a process crash; the last commits may be lost on power loss),
``foreign_keys=ON`` and a busy timeout.

Transactions: the connection is opened in autocommit mode
(``isolation_level=None``); every write takes ``store.lock`` (an
``asyncio.Lock``) so that coroutines never interleave statements of different
transactions on the single connection, and a write transaction is ``BEGIN
IMMEDIATE`` (SQLite's one writer, across processes). Reads do not take the
lock and may see the uncommitted writes of a transaction in progress on this
connection.

Schema: ``migrations/NNNN_name.sql``, applied statement by statement, each
migration in a ``BEGIN IMMEDIATE`` transaction of its own
(``migrate_sqlite``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from voxgate.models import SessionRecord, Verdict
from voxgate.store.base import MonthlyUsage, OutboxItem
from voxgate.store.connection import AsyncConnection
from voxgate.store.dialects import DialectStore
from voxgate.store.migrate import (
    MIGRATIONS_DIR,
    SCHEMA_MIGRATIONS_SQL,
    Migration,
    MigrationError,
    PendingMigrations,
    pending_migrations,
    record_migration,
    recorded_migrations,
    split_sql,
)
from voxgate.store.statements import OUTBOX_COLS, complete_sync

__all__ = ["SQLiteDialect", "utc_day", "migrate_sqlite", "BUSY_TIMEOUT_MS"]

BUSY_TIMEOUT_MS = 5000


def utc_day(ts: float | None) -> str | None:
    """SQL function ``utc_day(ts)``: the UTC day (``"YYYY-MM-DD"``) of Unix
    time ``ts`` (s); defined on both SQLite and PostgreSQL, so that queries
    grouping by day are the same on both."""
    return None if ts is None else time.strftime("%Y-%m-%d", time.gmtime(ts))


def migrate_sqlite(conn: sqlite3.Connection, migrations: list[Migration],
                    apply: bool) -> list[Migration]:
    """``SQLiteDialect.migrate`` on the connection's thread: checksums
    recorded where missing and verified, then each pending migration
    applied statement by statement in a ``BEGIN IMMEDIATE`` transaction of
    its own (SQLite's one writer: another process waits for it, then finds
    it applied). Returns the migrations applied.

    Raises:
        ChecksumMismatch, PendingMigrations (``apply`` False), MigrationError.
    """
    conn.execute(SCHEMA_MIGRATIONS_SQL.format(int="INTEGER", real="REAL"))
    conn.execute("BEGIN IMMEDIATE")
    try:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(schema_migrations)")}
        if "checksum" not in columns:
            conn.execute("ALTER TABLE schema_migrations ADD COLUMN checksum TEXT")
        applied = recorded_migrations(conn.execute, migrations)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    pending = pending_migrations(migrations, applied)
    if pending and not apply:
        raise PendingMigrations(pending)
    done = []
    for migration in pending:
        statements = split_sql(migration.path.read_text())
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?",
                            (migration.version,)).fetchone() is None:
                for statement in statements:
                    conn.execute(statement)
                record_migration(conn.execute, migration)
                done.append(migration)
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise MigrationError(f"migration {migration.label} failed, nothing of it was "
                                 f"applied: {exc}") from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return done


class SQLiteDialect:
    """SQLite (see the module docstring).

    Parameters:
        path: the database file; its parent directory is created at open.
        migrations_dir: where the ``NNNN_name.sql`` files are (the packaged
            ``migrations`` directory when None).
    """

    name = "sqlite"
    begin_write = "BEGIN IMMEDIATE"

    def __init__(self, path: str | Path, migrations_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        self.migrations_dir = Path(migrations_dir) if migrations_dir else MIGRATIONS_DIR

    def new_lock(self) -> asyncio.Lock:
        return asyncio.Lock()

    def connection(self) -> AsyncConnection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return AsyncConnection(self._connect, "voxgate-sqlite")

    def _connect(self) -> sqlite3.Connection:
        """The connection with its pragmas and SQL functions (on the
        connection's thread)."""
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.create_function("utc_day", 1, utc_day, deterministic=True)
        return conn

    async def migrate(self, store: DialectStore, migrations: list[Migration],
                      apply: bool) -> list[Migration]:
        """``migrate_sqlite`` in one hop to the connection's thread, under
        ``store.lock``."""
        async with store.lock:
            applied: list[Migration] = await store.db.run(migrate_sqlite, migrations, apply)
        return applied

    @asynccontextmanager
    async def transaction(self, store: DialectStore) -> AsyncIterator[AsyncConnection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on any exception,
        a cancellation included, even one while waiting for ``BEGIN``),
        holding ``store.lock``.

        The ROLLBACK is queued on the connection's thread, not awaited: it
        runs after whatever the thread is still doing for this transaction
        (the thread runs work in order) and before the next transaction's
        BEGIN, so a cancelled caller can never leave the transaction open."""
        db = store.db
        async with store.lock:
            try:
                await db.execute("BEGIN IMMEDIATE")
                yield db
                await db.execute("COMMIT")
            except BaseException:
                db.rollback_later()
                raise

    async def session_statement(self, store: DialectStore, key: tuple[str, ...], sql: str,
                                params: tuple[Any, ...]) -> Any:
        """One autocommit statement under ``store.lock``."""
        async with store.lock:
            return await store.db.execute(sql, params)

    async def complete_session(
        self, store: DialectStore, record: SessionRecord, verdict: Verdict, *, settle: bool,
        ended_at: float, settle_from: int | None, pack_from: int | None, provisional: bool,
    ) -> MonthlyUsage:
        """``statements.complete_sync`` in one ``BEGIN IMMEDIATE``
        transaction, in one hop to the connection's thread."""
        usage: MonthlyUsage = await store.transact(
            complete_sync, record, verdict, settle, ended_at, settle_from, pack_from, provisional)
        return usage

    async def claim_outbox(self, store: DialectStore, now: float, until: float,
                           limit: int) -> list[OutboxItem]:
        """Read and moved in one ``BEGIN IMMEDIATE`` transaction (SQLite
        admits one writer at a time, across processes), so every item goes
        to one caller; returned as they were before."""
        def claim(conn: sqlite3.Connection) -> list[OutboxItem]:
            rows = conn.execute(
                f"SELECT {OUTBOX_COLS} FROM settlement_outbox WHERE next_attempt_at <= ?"
                " ORDER BY created_at, session_id LIMIT ?", (now, limit)).fetchall()
            conn.executemany(
                "UPDATE settlement_outbox SET next_attempt_at = ? WHERE session_id = ?",
                [(until, r[0]) for r in rows])
            return [OutboxItem(*r) for r in rows]

        items: list[OutboxItem] = await store.transact(claim)
        return items

    async def close(self) -> None:
        return None

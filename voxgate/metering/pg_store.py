"""``PostgresStore``: the ``Store`` on PostgreSQL (``database_url =
"postgresql://…"``), with every table of voxgate (metering, billing, web,
jobs) in one database shared by any number of voxgate processes and hosts.

It is ``SQLiteStore`` on another connection: the same queries (written
portably, see ``voxgate.metering.sqlite_store``) run on one psycopg
connection (https://www.psycopg.org/psycopg3/docs/) in autocommit mode,
driven from one thread exactly as the SQLite connection is
(``voxgate.metering.connection``), so that the rooms' queries
(``voxgate.metering.rooms``) use ``store.db`` and ``store.transaction()``
unchanged and a whole transaction on the hot paths (session completion, pack
balance) is one thread hop on either database. A connection the server
dropped fails the call that finds it (``psycopg.OperationalError``) and is
replaced at the next one. Statements are translated once each (cached):
``?`` placeholders become ``%s``.

Write transactions (``store.transaction()``, ``BEGIN IMMEDIATE`` on SQLite)
take a transaction-scoped advisory lock (``pg_advisory_xact_lock``) shared
by every process on the database: as on SQLite, one write transaction at a
time, so every read-then-write decision (quota and settlement at
completion, claims of jobs, outboxes and instances) holds across processes.
Single statements outside a transaction are atomic on their own.

Schema: ``migrations/postgresql/NNNN_name.sql``, each run as one script in
one transaction and recorded in ``schema_migrations`` (the same versions as
the SQLite migrations: version 9 creates the whole schema).

Errors: ``psycopg.OperationalError`` when the server is unreachable.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql

from voxgate.metering.sqlite_store import SQLiteStore, load_migrations
from voxgate.metering.store import OutboxItem

__all__ = ["PostgresStore", "PG_MIGRATIONS_DIR", "is_postgres_url", "libpq_url"]

PG_MIGRATIONS_DIR = Path(__file__).parent / "migrations" / "postgresql"
# the advisory lock key every write transaction takes (any constant bigint)
WRITE_LOCK_KEY = 0x766F786761746531  # "voxgate1"

_PLACEHOLDER = re.compile(r"'(?:[^']|'')*'|\?|%")


def is_postgres_url(url: str) -> bool:
    """Whether ``database_url`` names PostgreSQL (``postgresql://``,
    ``postgres://`` or SQLAlchemy's ``postgresql+asyncpg://``/``+psycopg://``)."""
    return re.match(r"^postgres(ql)?(\+\w+)?://", url) is not None


def libpq_url(url: str) -> str:
    """``url`` as libpq takes it (a ``+driver`` suffix dropped)."""
    return re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", url)


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """A statement written for sqlite3 (``?`` placeholders) for psycopg
    (``%s``; a literal ``%`` doubled); string literals are left alone."""
    def sub(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "?":
            return "%s"
        if token == "%":
            return "%%"
        return token.replace("%", "%%")

    return _PLACEHOLDER.sub(sub, sql)


class _Connection:
    """The sqlite3 connection's ``execute``/``executemany`` on a psycopg
    connection (autocommit), for the store's functions that run in one
    thread hop (``SQLiteStore._in_thread``). ``BEGIN IMMEDIATE`` begins a
    transaction holding the cluster-wide write lock."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    @property
    def broken(self) -> bool:
        """The server dropped the connection (``AsyncConnection`` replaces it)."""
        return self.conn.closed or self.conn.broken

    def close(self) -> None:
        self.conn.close()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor:
        if sql == "BEGIN IMMEDIATE":
            self.conn.execute("BEGIN")
            return self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
        if not params:
            return self.conn.execute(sql)  # type: ignore[arg-type]  # runtime SQL, no params
        return self.conn.execute(translate(sql), tuple(params))  # type: ignore[arg-type]

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> psycopg.Cursor:
        cur = self.conn.cursor()
        rows = [tuple(p) for p in seq]
        if rows:
            cur.executemany(translate(sql), rows)  # type: ignore[arg-type]
        return cur


class PostgresStore(SQLiteStore):
    """The ``Store`` on PostgreSQL (see the module docstring).

    Parameters:
        url: ``postgresql://user:password@host:port/dbname`` (libpq URL;
            ``postgresql+asyncpg://`` and ``+psycopg://`` are accepted too).
        schema: the schema to use (``search_path``; created if missing);
            None = the server's default (``public``).
        migrations_dir: the PostgreSQL migrations (the packaged ones when None).
    """

    def __init__(self, url: str, *, schema: str | None = None,
                 migrations_dir: str | Path | None = None) -> None:
        super().__init__("", migrations_dir or PG_MIGRATIONS_DIR)
        self.url = libpq_url(url)
        self.schema = schema

    async def open(self) -> None:
        """Connect and apply pending migrations.

        Raises:
            psycopg.OperationalError: the server is unreachable or refuses.
        """
        if self._db is not None:
            return
        await self._open_with(self._connect_pg, "voxgate-pg")

    def _connect_pg(self) -> _Connection:
        """A new connection (autocommit, in ``schema`` when given)."""
        conn = psycopg.connect(self.url, autocommit=True, application_name="voxgate")
        if self.schema:
            ident = pgsql.Identifier(self.schema)
            conn.execute(pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
            conn.execute(pgsql.SQL("SET search_path TO {}").format(ident))
        return _Connection(conn)

    async def claim_outbox(self, now: float, until: float, limit: int = 100) -> list[OutboxItem]:
        """``SQLiteStore.claim_outbox`` in one statement that locks only the
        rows it takes (``FOR UPDATE SKIP LOCKED``): concurrent claimers in
        any process get disjoint items without waiting for each other."""
        rows = await self.db.execute_fetchall(
            "UPDATE settlement_outbox o SET next_attempt_at = ? FROM ("
            " SELECT session_id, next_attempt_at FROM settlement_outbox"
            " WHERE next_attempt_at <= ? ORDER BY created_at, session_id LIMIT ?"
            " FOR UPDATE SKIP LOCKED) c WHERE o.session_id = c.session_id"
            " RETURNING o.session_id, o.account_id, o.period, o.created_at, o.attempts,"
            " c.next_attempt_at, o.last_error", (until, now, limit))
        return sorted((OutboxItem(*r) for r in rows), key=lambda i: (i.created_at, i.session_id))

    async def _migrate(self) -> None:
        db = self.db
        async with self.transaction():
            await db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY,"
                " name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
        for migration in load_migrations(self.migrations_dir):
            script = migration.path.read_text()
            async with self.transaction():
                rows = await db.execute_fetchall(
                    "SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,))
                if rows:
                    continue
                await db.execute(script)
                await db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()))

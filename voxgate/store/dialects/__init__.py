"""What differs between the databases the one SQL store
(``voxgate.store.sql.SQLStore``) runs on: a ``Dialect`` object per store.

- ``sqlite.SQLiteDialect``: one ``sqlite3`` connection on a thread of its own
  (pragmas, the ``utc_day`` function), writes under ``store.lock`` and
  ``BEGIN IMMEDIATE`` (SQLite's one writer), migrations statement by
  statement, the session path's statements in Python
  (``voxgate.store.statements.complete_sync``).
- ``postgresql.PostgresDialect``: a pool of psycopg connections in lanes
  (``voxgate.store.connection.Pool``), ``?`` placeholders translated, a
  plain ``BEGIN`` (row locks) and the advisory lock for the rooms'
  transactions on the background lane only, group commit and the
  one-round-trip completion function on the session lane, ``SKIP LOCKED``
  claims, migrations under a lock of their own.

Everything else (every query, the records, the rules) is the store's, the
same on both.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

from voxgate.models import SessionRecord, Verdict
from voxgate.store.base import MonthlyUsage, OutboxItem
from voxgate.store.connection import AsyncConnection
from voxgate.store.migrate import Migration

__all__ = ["Dialect", "DialectStore"]


class DialectStore(Protocol):
    """What a dialect uses of its store (``voxgate.store.core.SQLCore``)."""

    lock: asyncio.Lock

    @property
    def db(self) -> AsyncConnection:
        """The connection or pool (``Dialect.connection``), open."""

    async def transact(self, fn: Any, *args: Any) -> Any:
        """``fn(connection, *args)`` in one write transaction, one hop."""


class Dialect(Protocol):
    """A database as ``SQLStore`` sees it; one object per store (it may
    hold that store's connection state: PostgreSQL's pool and group commit).

    Attributes:
        name: ``"sqlite"`` or ``"postgresql"`` (the rooms' few
            dialect-specific statements test it).
        migrations_dir: where its ``NNNN_name.sql`` files are.
        begin_write: the statement opening a write transaction of the
            store's own functions (``statements.transact``).
    """

    name: str
    migrations_dir: Path
    begin_write: str

    def new_lock(self) -> asyncio.Lock:
        """``store.lock``: what the store's writes hold (SQLite: one
        connection, statements of different transactions must not
        interleave; PostgreSQL: nothing, each call has a connection)."""

    def connection(self) -> Any:
        """A new, not yet opened ``AsyncConnection`` or ``Pool`` (``store.db``)."""

    async def migrate(self, store: DialectStore, migrations: list[Migration],
                      apply: bool) -> list[Migration]:
        """Verify the applied migrations' checksums, apply the pending ones
        when ``apply`` (else ``PendingMigrations``); returns those applied."""

    def transaction(self, store: DialectStore) -> AbstractAsyncContextManager[AsyncConnection]:
        """``store.transaction()`` (see ``SQLStore.transaction``)."""

    async def session_statement(self, store: DialectStore, key: tuple[str, ...], sql: str,
                                params: tuple[Any, ...]) -> Any:
        """One write of the session path (``key`` orders it among
        concurrent ones); returns its result (cursor or ``Result``)."""

    async def complete_session(
        self, store: DialectStore, record: SessionRecord, verdict: Verdict, *, settle: bool,
        ended_at: float, settle_from: int | None, pack_from: int | None, provisional: bool,
    ) -> MonthlyUsage:
        """``Store.complete_session`` with ``ended_at`` decided."""

    async def claim_outbox(self, store: DialectStore, now: float, until: float,
                           limit: int) -> list[OutboxItem]:
        """``Store.claim_outbox``."""

    async def close(self) -> None:
        """Before the store's connections close (callers waiting on them
        get ``ServiceUnavailable``)."""



"""``SQLCore``: what every part of the SQL store (``voxgate.store.sql.SQLStore``)
stands on: the dialect object (``voxgate.store.dialects``), the connection
or pool (``store.db``, ``voxgate.store.connection``) and its lifecycle
(open, migrations, close), transactions (``transaction()`` for the rooms,
``transact(fn, …)`` for the store's own one-hop transactions), lanes and the
one-statement helpers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Self

from voxgate.store.connection import LANES, AsyncConnection, lane
from voxgate.store.dialects import Dialect
from voxgate.store.migrate import Migration, load_migrations
from voxgate.store.statements import transact

__all__ = ["SQLCore"]


class SQLCore:
    """What every part of ``SQLStore`` stands on: the dialect, the
    connection or pool (``db``), its lifecycle and migrations, transactions
    and the one-statement helpers.

    Parameters:
        dialect: the database (``SQLiteDialect``, ``PostgresDialect``): one
            object per store.
    """

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.lock = dialect.new_lock()
        # the instance this process's sessions are opened under (register_instance)
        self.instance_id: str | None = None
        # AsyncConnection (SQLite: one writer) or connection.Pool (PostgreSQL)
        self._db: Any = None
        # open(): apply pending migrations (else refuse: PendingMigrations);
        # what the last open() applied (``voxgate migrate`` prints it)
        self.auto_migrate = True
        self.migrations_applied: tuple[Migration, ...] = ()

    # ------------------------------------------------------------ lifecycle

    @property
    def migrations_dir(self) -> Path:
        """Where the dialect's ``NNNN_name.sql`` files are."""
        return self.dialect.migrations_dir

    @property
    def db(self) -> AsyncConnection:
        """The connection (SQLite) or the pool (PostgreSQL), in autocommit
        mode; write inside ``transaction()``.

        Raises:
            RuntimeError: the store is not open.
        """
        if self._db is None:
            raise RuntimeError("store is not open")
        db: AsyncConnection = self._db
        return db

    async def open(self) -> None:
        """Connect (the dialect's connection or pool) and apply pending
        migrations; closed again when they fail.

        Raises:
            ServiceUnavailable: the database is unreachable (PostgreSQL).
            ChecksumMismatch, PendingMigrations, MigrationError.
        """
        if self._db is not None:
            return
        db = self.dialect.connection()
        await db.open()
        try:
            self._db = db
            await self._migrate()
        except BaseException:
            self._db = None
            await db.close()
            raise

    async def close(self) -> None:
        await self.dialect.close()
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _migrate(self) -> None:
        """Verify the applied migrations' checksums and apply the pending
        ones (``auto_migrate``), the dialect's way; ``migrations_applied``
        lists what this call applied.

        Raises:
            ChecksumMismatch: an applied migration's file changed.
            PendingMigrations: some are pending and ``auto_migrate`` is False.
            MigrationError: a migration failed (nothing of it applied), or
                waited too long for a lock.
        """
        migrations = load_migrations(self.migrations_dir)
        applied = await self.dialect.migrate(self, migrations, self.auto_migrate)
        self.migrations_applied = tuple(applied)

    async def ping(self) -> None:
        """One trivial query (readiness checks): raises what the database
        raises when it cannot answer (``sqlite3.OperationalError``,
        ``ServiceUnavailable`` from psycopg's)."""
        await self.db.execute_fetchall("SELECT 1")

    async def applied_migrations(self) -> list[tuple[int, str]]:
        """(version, name) of every applied migration, in order."""
        rows = await self.db.execute_fetchall(
            "SELECT version, name FROM schema_migrations ORDER BY version")
        return [(r[0], r[1]) for r in rows]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A multi-statement write transaction (``store.db`` in the block
        is its connection): ``COMMIT`` at the end, ``ROLLBACK`` on any
        exception, a cancellation included. SQLite: ``BEGIN IMMEDIATE``
        under ``self.lock``; PostgreSQL: a background-lane connection with
        the cluster-wide advisory lock (see the dialects). Not re-entrant:
        do not nest."""
        async with self.dialect.transaction(self) as db:
            yield db

    async def transact(self, fn: Any, *args: Any) -> Any:
        """``fn(connection, *args)`` in one write transaction of the
        dialect's (``begin_write``), in one hop to a connection's thread
        (``statements.transact``), under ``self.lock``."""
        async with self.lock:
            return await self.db.run(transact, self.dialect.begin_write, fn, *args)

    @staticmethod
    def lane(name: str) -> Any:
        """``with store.lane("heartbeat"): …``: the block's statements run on
        that lane of the PostgreSQL pool (``voxgate.store.connection``:
        ``"session"``, ``"heartbeat"``, ``"background"``); nothing on SQLite.

        Raises:
            ValueError: an unknown lane (one of ``connection.LANES``).
        """
        if name not in LANES:
            raise ValueError(f"unknown database lane {name!r}")
        return lane(name)

    async def _write(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """One autocommit statement under the lock; returns its rowcount."""
        async with self.lock:
            cursor = await self.db.execute(sql, params)
            return cursor.rowcount

    async def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        rows = await self.db.execute_fetchall(sql, params)
        return next(iter(rows), None)

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(connection, *args)`` on the connection's thread in one hop
        (``AsyncConnection.run``): the hot paths pay one thread round trip
        for a whole transaction instead of one per statement. Callers hold
        ``self.lock`` (or use ``transact``)."""
        return await self.db.run(fn, *args)

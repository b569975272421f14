"""PostgreSQL: the store (``voxgate.store.sql.SQLStore``) on PostgreSQL
(``database_url = "postgresql://…"``), with every table of voxgate
(metering, billing, web, jobs) in one database shared by any number of
voxgate processes and hosts.

The same queries as on SQLite (written portably, see
``voxgate.store.statements``) run on psycopg connections
(https://www.psycopg.org/psycopg3/docs/) in autocommit mode, each driven
from a thread of its own as the SQLite connection is, in a pool of lanes
(``voxgate.store.connection.Pool``: ``"session"`` for the hot path,
``"heartbeat"`` for heartbeats and checkpoints, ``"background"`` for jobs,
dashboard and settlement; sizes and timeouts in ``Settings.database``), so
that the rooms' queries (``voxgate.store.queries``) use ``store.db`` and
``store.transaction()`` unchanged and a whole transaction on the hot paths
is one thread hop. Every connection has ``lock_timeout`` and
``statement_timeout`` set per lane, so a stalled lock cannot hold one for
ever. A connection the server dropped fails the call that finds it
(``ServiceUnavailable``, a 503, from ``psycopg.OperationalError``) and is
replaced at the next one. Statements are translated once each (cached):
``?`` placeholders become ``%s``.

Locks. The session path takes row locks only, always in one order per
transaction: the session row, the account's ``monthly_usage`` row, its
``session_packs`` rows, then the outbox. ``open_session`` is one INSERT;
``complete_session`` is one round trip, the PL/pgSQL function
``voxgate_complete_session`` (``migrations/postgresql/0011_hot_path.sql``),
which numbers a billable session with the usage upsert's ``RETURNING``
under the usage row lock and decrements a pack with a guarded UPDATE —
the same rules as ``statements.complete_sync``. Concurrent opens and
completions on the session lane are group committed (``GroupCommit``:
one pipelined transaction, one round trip and one WAL flush for all of
them, sorted by account so groups cannot deadlock). Transactions of the
store's own functions (``statements.transact``: instances, sweeps) are a
plain ``BEGIN`` (``begin_write``). Only ``store.transaction()`` — the
rooms' multi-statement read-then-write transactions (billing, dashboard, jobs), always on the
background lane — still takes a transaction-scoped advisory lock shared by
every process (``pg_advisory_xact_lock(WRITE_LOCK_KEY)``), one such
transaction at a time across the cluster, as SQLite's one writer gives;
nothing on the session or heartbeat lanes ever waits for it.

Schema: ``migrations/postgresql/NNNN_name.sql``, each run as one script in
one transaction and recorded in ``schema_migrations`` with its checksum (the
same versions as the SQLite migrations: version 9 creates the whole schema),
under a session-level advisory lock of their own (``MIGRATION_LOCK_KEY``,
never the write lock) and ``lock_timeout`` (``migrate_pg``).

Errors: ``voxgate.errors.ServiceUnavailable`` (its cause the psycopg
error) when the server is unreachable, a lock or statement timed out, or a
deadlock was broken; other psycopg errors as psycopg raises them.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict

from voxgate.errors import ServiceUnavailable
from voxgate.models import SessionRecord, Verdict
from voxgate.store.base import MonthlyUsage, OutboxItem, period_of
from voxgate.store.connection import (
    DEFAULT_LANES,
    LANE,
    AsyncConnection,
    LaneLimits,
    Pool,
    Result,
    lane,
    rollback_open,
)
from voxgate.store.dialects import DialectStore
from voxgate.store.migrate import (
    PG_MIGRATIONS_DIR,
    SCHEMA_MIGRATIONS_SQL,
    Migration,
    MigrationError,
    PendingMigrations,
    pending_migrations,
    record_migration,
    recorded_migrations,
)
from voxgate.store.statements import cost_params, usage_row

__all__ = ["PostgresDialect", "PG_MIGRATIONS_DIR", "is_postgres_url", "libpq_url", "lane_limits",
           "translate", "WRITE_LOCK_KEY", "MIGRATION_LOCK_KEY"]

# the advisory lock key every write transaction takes (any constant bigint)
WRITE_LOCK_KEY = 0x766F786761746531  # "voxgate1"
# the session-level advisory lock migrations run under (not the write lock)
MIGRATION_LOCK_KEY = 0x766F78676D696772  # "voxgmigr"
MIGRATION_LOCK_WAIT_S = 120.0  # for another process's migrations to finish
MIGRATION_LOCK_TIMEOUT_S = 5.0  # lock_timeout of a migration's statements

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


class PgConnection:
    """The sqlite3 connection's ``execute``/``executemany`` on a psycopg
    connection (autocommit), ``?`` placeholders translated, for the store's
    functions that run in one thread hop (``SQLStore._in_thread``)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    @property
    def broken(self) -> bool:
        """The server dropped the connection (``AsyncConnection`` replaces it)."""
        return self.conn.closed or self.conn.broken

    @property
    def in_transaction(self) -> bool:
        """Inside a transaction (``connection.rollback_open``)."""
        return self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def close(self) -> None:
        self.conn.close()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor:
        if not params:
            return self.conn.execute(sql)  # type: ignore[arg-type]  # runtime SQL, no params
        return self.conn.execute(translate(sql), tuple(params))  # type: ignore[arg-type]

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> psycopg.Cursor:
        cur = self.conn.cursor()
        rows = [tuple(p) for p in seq]
        if rows:
            cur.executemany(translate(sql), rows)  # type: ignore[arg-type]
        return cur


def migrate_pg(conn: Any, migrations: list[Migration], apply: bool, lock_wait_s: float,
                lock_timeout_s: float) -> list[Migration]:
    """Migrate on the store's connection thread (``conn``: the connection
    ``PostgresDialect`` drives, or the psycopg connection itself), in one hop.

    Migrations never take the write lock of the session path: they run under
    a session-level advisory lock of their own (``MIGRATION_LOCK_KEY``), so
    two processes starting at once apply each migration once. Waiting for
    that lock (another process migrating) is bounded by ``lock_wait_s``;
    each migration's statements run with ``lock_timeout`` =
    ``lock_timeout_s``, so a migration that needs a table live traffic holds
    gives up (its transaction rolled back; retried twice) instead of queueing
    every later query of that table behind it.

    Raises:
        ChecksumMismatch, PendingMigrations (``apply`` False), MigrationError.
    """
    pg: psycopg.Connection = getattr(conn, "conn", conn)

    def execute(sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor:
        return pg.execute(translate(sql), tuple(params))  # type: ignore[arg-type]

    def set_timeouts(lock_timeout: str, statement_timeout: str) -> None:
        execute("SELECT set_config('lock_timeout', ?, false),"
                " set_config('statement_timeout', ?, false)", (lock_timeout, statement_timeout))

    # the connection's own timeouts (its lane's) are put back afterwards
    row = execute("SELECT current_setting('lock_timeout'),"
                  " current_setting('statement_timeout')").fetchone()
    saved: tuple[str, str] = (row[0], row[1]) if row else ("0", "0")
    set_timeouts(f"{int(lock_wait_s * 1000)}ms", "0")
    try:
        execute("SELECT pg_advisory_lock(?)", (MIGRATION_LOCK_KEY,))
    except psycopg.errors.LockNotAvailable as exc:
        set_timeouts(*saved)
        raise MigrationError(f"another voxgate process has been migrating this database for "
                             f"more than {lock_wait_s:g} s: try again when it is done") from exc
    try:
        set_timeouts(f"{int(lock_timeout_s * 1000)}ms", "0")  # statements: no time limit
        with pg.transaction():
            execute(SCHEMA_MIGRATIONS_SQL.format(int="BIGINT", real="DOUBLE PRECISION"))
            execute("ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum TEXT")
            applied = recorded_migrations(execute, migrations)
        pending = pending_migrations(migrations, applied)
        if pending and not apply:
            raise PendingMigrations(pending)
        for migration in pending:
            apply_pg(pg, execute, migration, lock_timeout_s)
        return pending
    finally:
        if not pg.closed and not pg.broken:
            set_timeouts(*saved)
            execute("SELECT pg_advisory_unlock(?)", (MIGRATION_LOCK_KEY,))


def apply_pg(pg: psycopg.Connection, execute: Callable[..., Any], migration: Migration,
              lock_timeout_s: float, attempts: int = 3) -> None:
    """One migration's script and its ``schema_migrations`` row in one
    transaction; a lock not granted within ``lock_timeout_s`` is tried again
    (``attempts`` in all, a second apart)."""
    script = migration.path.read_text()
    for attempt in range(1, attempts + 1):
        try:
            with pg.transaction():
                pg.execute(script.encode())  # a whole script: the simple query protocol
                record_migration(execute, migration)
            return
        except psycopg.errors.LockNotAvailable as exc:
            if attempt == attempts:
                raise MigrationError(
                    f"migration {migration.label} waited more than {lock_timeout_s:g} s for a "
                    f"lock held by live traffic, {attempts} times; nothing of it was applied: "
                    f"run `voxgate migrate` when the database is quieter") from exc
            time.sleep(1.0)
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) and (pg.closed or pg.broken):
                raise  # the server went away: as any other call that finds it gone
            raise MigrationError(f"migration {migration.label} failed, nothing of it was "
                                 f"applied: {str(exc).splitlines()[0]}") from exc


# complete_session in one round trip (migrations/postgresql/0011_hot_path.sql)
_COMPLETE_FN_SQL = (
    "SELECT sessions, billable_sessions, minutes_used, audio_seconds, bytes"
    " FROM voxgate_complete_session_cost(?::text, ?::text, ?::text, ?::text, ?::text, ?::text,"
    " ?::text, ?::float8, ?::float8, ?::text, ?::boolean, ?::text, ?::text, ?::boolean,"
    " ?::bigint, ?::bigint, ?::boolean, ?::float8, ?::float8, ?::float8, ?::float8, ?::bigint,"
    " ?::bigint, ?::text, ?::bigint, ?::text)")


def _begin(conn: PgConnection, write_lock: bool) -> None:
    """BEGIN, and with ``write_lock`` the cluster-wide advisory lock (one hop)."""
    conn.conn.execute("BEGIN")
    if write_lock:
        conn.conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))


def _commit(conn: PgConnection) -> None:
    conn.conn.execute("COMMIT")


GROUP_MAX = 64  # statements per group commit


def _group_sync(conn: PgConnection, items: list[tuple[str, tuple[Any, ...]]]) -> list[Result]:
    """``items`` (statement, parameters) in one transaction, pipelined: one
    network round trip and one commit for all. Raises what the first
    failing statement raised (the transaction rolled back)."""
    pg = conn.conn
    try:
        with pg.pipeline():
            pg.execute("BEGIN")
            cursors = [pg.execute(translate(sql), params)  # type: ignore[arg-type]
                       for sql, params in items]
            pg.execute("COMMIT")
        return [Result(c.rowcount, c.fetchall() if c.description else []) for c in cursors]
    except BaseException:
        rollback_open(conn)
        raise


def _connection_lost(exc: BaseException) -> bool:
    """``exc`` says the server connection is gone (no SQLSTATE: a client-side
    failure; class 08 connection exception; 57P operator intervention)
    rather than one statement's error."""
    cause = exc.__cause__ if isinstance(exc, ServiceUnavailable) else exc
    if not isinstance(cause, psycopg.Error):
        return isinstance(exc, ServiceUnavailable)
    state = cause.sqlstate or ""
    return not state or state.startswith(("08", "57P"))


_Pending = tuple[tuple[str, ...], str, tuple[Any, ...], "asyncio.Future[Result]"]


class GroupCommit:
    """Group commit of the session path on PostgreSQL: ``open_session``'s
    INSERT and ``complete_session``'s function call from concurrent
    sessions, while the session lane's connections are all busy, go
    together in one pipelined transaction (one thread hop, one network round
    trip, one WAL flush for many). Each statement is the same as alone, so
    each session still finalizes in one round trip.

    Up to one flush per session connection runs at a time; a flush takes
    every waiting statement (``GROUP_MAX`` at most) sorted by (account,
    period, session id), so two flushes — in this process or another —
    take the usage rows' locks in one order and cannot deadlock each other.
    When the group fails on one statement's own error (a constraint, a
    lock or statement timeout, a deadlock with another path), each
    statement is run again alone so only its own caller sees its error (the
    others were delayed, not failed); when the connection to the database
    is lost, every caller gets that ``ServiceUnavailable``.
    """

    def __init__(self, dialect: PostgresDialect) -> None:
        self.dialect = dialect
        self._pending: list[_Pending] = []
        self._flushes: set[asyncio.Task[None]] = set()
        # flushes started and not yet past their last look at _pending (kept
        # here, not from _flushes, whose done callbacks run a step late)
        self._flushing = 0
        self.groups = 0  # transactions of more than one statement committed
        self.grouped = 0  # statements they carried

    async def execute(self, key: tuple[str, ...], sql: str, params: tuple[Any, ...]) -> Result:
        """Run ``sql`` with ``params`` in the next group; ``key`` orders it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((key, sql, params, future))
        if self._flushing < self.dialect.lanes["session"].connections:
            self._flushing += 1
            task = loop.create_task(self._flush())
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        return await future

    async def _flush(self) -> None:
        try:
            with lane("session"):
                while self._pending:
                    batch = sorted(self._pending[:GROUP_MAX], key=lambda item: item[0])
                    del self._pending[:GROUP_MAX]
                    try:
                        await self._send(batch)
                    except BaseException as exc:  # cancelled (closing), or a bug: nobody hangs
                        for *_, future in batch:
                            if not future.done():
                                future.set_exception(
                                    exc if isinstance(exc, Exception)
                                    else ServiceUnavailable("the store is closing"))
                        raise
        finally:
            self._flushing -= 1

    async def _send(self, batch: list[_Pending]) -> None:
        pool = self.dialect.pool
        if len(batch) > 1:
            try:
                results = await pool.run(_group_sync, [(sql, params) for _, sql, params, _ in batch])
            except Exception as exc:
                if _connection_lost(exc):
                    for *_, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    return
            else:
                self.groups += 1
                self.grouped += len(batch)
                for (*_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
                return
        await asyncio.gather(*(self._alone(pool, sql, params, future)
                               for _, sql, params, future in batch))

    @staticmethod
    async def _alone(pool: Pool, sql: str, params: tuple[Any, ...],
                     future: asyncio.Future[Result]) -> None:
        try:
            result = await pool.execute(sql, params)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Cancel the flushes (their callers get ``ServiceUnavailable``)."""
        for task in list(self._flushes):
            task.cancel()
        for *_, future in self._pending:
            if not future.done():
                future.set_exception(ServiceUnavailable("the store is closing"))
        self._pending.clear()


class _NoLock(asyncio.Lock):
    """``store.lock`` on PostgreSQL: nothing to wait for. Each call takes a
    pool connection of its own (SQLite needs the lock: one connection)."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def lane_limits(settings: Any) -> dict[str, LaneLimits]:
    """The pool's lanes from ``Settings.database`` (``DatabaseSettings``)."""
    return {
        "session": LaneLimits(settings.session_connections, settings.lock_timeout_s,
                              settings.statement_timeout_s),
        "heartbeat": LaneLimits(1, settings.heartbeat_timeout_s, settings.heartbeat_timeout_s),
        "background": LaneLimits(settings.background_connections, settings.lock_timeout_s,
                                 settings.background_statement_timeout_s),
    }


class PostgresDialect:
    """PostgreSQL (see the module docstring).

    Parameters:
        url: ``postgresql://user:password@host:port/dbname`` (libpq URL;
            ``postgresql+asyncpg://`` and ``+psycopg://`` are accepted too).
        schema: the schema to use (``search_path``; created if missing);
            None = the server's default (``public``).
        migrations_dir: the PostgreSQL migrations (the packaged ones when None).
        lanes: the pool's lanes (``connection.LaneLimits``: connections,
            lock and statement timeouts); ``connection.DEFAULT_LANES`` when None.
        acquire_timeout_s: how long a call waits for a free connection of
            its lane (then ``ServiceUnavailable``).
    """

    name = "postgresql"
    begin_write = "BEGIN"  # row locks do the rest

    def __init__(self, url: str, *, schema: str | None = None,
                 migrations_dir: str | Path | None = None,
                 lanes: dict[str, LaneLimits] | None = None,
                 acquire_timeout_s: float = 10.0) -> None:
        self.url = libpq_url(url)
        self.schema = schema
        self.migrations_dir = Path(migrations_dir) if migrations_dir else PG_MIGRATIONS_DIR
        self.lanes = {**DEFAULT_LANES, **(lanes or {})}
        self.acquire_timeout_s = acquire_timeout_s
        # s: how long open() waits for another process's migrations, and how
        # long a migration's statement waits for a table lock (lock_timeout)
        self.migration_lock_wait_s = MIGRATION_LOCK_WAIT_S
        self.migration_lock_timeout_s = MIGRATION_LOCK_TIMEOUT_S
        self.group = GroupCommit(self)
        self._pool: Pool | None = None

    def new_lock(self) -> asyncio.Lock:
        return _NoLock()

    def connection(self) -> Pool:
        """A new pool (it opens one session connection at once, the others
        when first needed).

        Raises (at ``open()``):
            ServiceUnavailable: the server is unreachable or refuses (its
                cause the ``psycopg.OperationalError``).
        """
        self._pool = Pool(self._connect, self.lanes, "voxgate-pg", self.acquire_timeout_s)
        return self._pool

    @property
    def pool(self) -> Pool:
        """The connection pool (``store.db``).

        Raises:
            RuntimeError: the store was never opened.
        """
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    async def close(self) -> None:
        """Statements waiting for a group commit get ``ServiceUnavailable``."""
        await self.group.close()

    def _connect(self, lane_name: str = "session",
                 limits: LaneLimits | None = None) -> PgConnection:
        """A new connection of lane ``lane_name`` (autocommit, in ``schema``
        when given), with the lane's ``lock_timeout`` and
        ``statement_timeout`` as its session defaults (libpq ``options``, so
        a ``RESET`` comes back to them) and ``idle_in_transaction_session_timeout``
        bounding a transaction whose task stalled."""
        limits = limits or self.lanes[lane_name]
        given = conninfo_to_dict(self.url).get("options") or ""
        options = (f"{given} -c lock_timeout={int(limits.lock_timeout_s * 1000)}"
                   f" -c statement_timeout={int(limits.statement_timeout_s * 1000)}"
                   f" -c idle_in_transaction_session_timeout="
                   f"{int(max(60.0, limits.statement_timeout_s) * 1000)}").strip()
        conn = psycopg.connect(self.url, autocommit=True, options=options,
                               application_name=f"voxgate-{lane_name}")
        if self.schema:
            ident = pgsql.Identifier(self.schema)
            conn.execute(pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
            conn.execute(pgsql.SQL("SET search_path TO {}").format(ident))
        return PgConnection(conn)

    @asynccontextmanager
    async def transaction(self, store: DialectStore) -> AsyncIterator[AsyncConnection]:
        """A multi-statement transaction of the rooms (billing, dashboard,
        jobs) and the store's own maintenance writes: a background-lane
        connection pinned to the calling task (``store.db`` in the block
        goes to it) with ``BEGIN`` and the cluster-wide advisory lock
        (``WRITE_LOCK_KEY``), ``COMMIT`` at the end, ``ROLLBACK`` on any
        exception — a cancellation included, even one while waiting for
        BEGIN or the lock (queued on the connection's thread, so it runs
        after them; the connection goes back to the pool after it). Under
        ``lane("heartbeat")`` it runs on the heartbeat connection without
        the advisory lock. Not re-entrant: do not nest.

        Raises:
            ServiceUnavailable: no connection in time, the server
                unreachable, a lock or statement timeout.
        """
        heartbeat = LANE.get() == "heartbeat"
        name = "heartbeat" if heartbeat else "background"
        pool = self.pool
        conn = await pool.acquire(name)
        last: asyncio.Future[Any] | None = None
        try:
            with pool.pinned(conn):
                try:
                    await conn.run(_begin, not heartbeat)
                    yield conn
                    await conn.run(_commit)
                except BaseException:
                    last = conn.rollback_later()
                    raise
        finally:
            if last is None:
                pool.release(name, conn)
            else:
                pool.release_after(name, conn, last)

    async def session_statement(self, store: DialectStore, key: tuple[str, ...], sql: str,
                                params: tuple[Any, ...]) -> Result:
        """One statement of the session path: on the session lane through the
        group commit (``GroupCommit``), else alone on the current lane (or
        the task's transaction)."""
        if LANE.get() == "session" and Pool.pinned_connection() is None:
            return await self.group.execute(key, sql, params)
        result: Result = await store.db.execute(sql, params)
        return result

    async def complete_session(
        self, store: DialectStore, record: SessionRecord, verdict: Verdict, *, settle: bool,
        ended_at: float, settle_from: int | None, pack_from: int | None, provisional: bool,
    ) -> MonthlyUsage:
        """``Store.complete_session`` in ONE round trip: the PL/pgSQL
        function ``voxgate_complete_session`` (migration 0011, called
        through 0014's ``voxgate_complete_session_cost``, which also writes
        the provider cost), the same rules as ``statements.complete_sync``,
        with row locks only
        (session row, usage row, packs, outbox); on the session lane through
        the group commit, else on the current lane.

        Raises:
            ServiceUnavailable: the server unreachable, a lock or statement
                timeout, a deadlock (retry: it is idempotent).
        """
        period = record.period or period_of(record.started_at)
        m = record.measurements
        result = await self.session_statement(store, (record.account_id, period, record.id),
                                              _COMPLETE_FN_SQL, (
            record.id, record.account_id, record.project_id, record.api_key_id,
            record.ephemeral_key_id, record.transport, record.model, record.started_at,
            ended_at, period, bool(verdict.billable), verdict.reason, verdict.rule, settle,
            settle_from, pack_from, provisional, m.connect_ms, m.duration_ms, m.audio_in_ms,
            m.audio_out_ms, m.bytes_in, m.bytes_out, orjson.dumps(m.to_dict()).decode(),
            *cost_params(record)))
        rows = await result.fetchall()
        row = rows[0] if rows else None
        if row is None or row[0] is None:
            return MonthlyUsage(record.account_id, period)
        return usage_row(record.account_id, period, row)

    async def claim_outbox(self, store: DialectStore, now: float, until: float,
                           limit: int) -> list[OutboxItem]:
        """One statement that locks only the rows it takes (``FOR UPDATE
        SKIP LOCKED``): concurrent claimers in any process get disjoint
        items without waiting for each other. On the background lane."""
        with lane("background"):
            rows = await store.db.execute_fetchall(
                "UPDATE settlement_outbox o SET next_attempt_at = ? FROM ("
                " SELECT session_id, next_attempt_at FROM settlement_outbox"
                " WHERE next_attempt_at <= ? ORDER BY created_at, session_id LIMIT ?"
                " FOR UPDATE SKIP LOCKED) c WHERE o.session_id = c.session_id"
                " RETURNING o.session_id, o.account_id, o.period, o.created_at, o.attempts,"
                " c.next_attempt_at, o.last_error", (until, now, limit))
        return sorted((OutboxItem(*r) for r in rows), key=lambda i: (i.created_at, i.session_id))

    async def migrate(self, store: DialectStore, migrations: list[Migration],
                      apply: bool) -> list[Migration]:
        """``migrate_pg`` in one hop: under the migration lock, checksums
        verified, pending migrations applied (``apply``), each script in
        one transaction.

        Raises:
            ChecksumMismatch, PendingMigrations, MigrationError (a migration
            failed, or a lock was not granted in time: nothing of it applied).
        """
        applied: list[Migration] = await store.db.run(
            migrate_pg, migrations, apply, self.migration_lock_wait_s, self.migration_lock_timeout_s)
        return applied

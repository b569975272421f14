"""``SQLiteStore``: the ``Store`` interface on one SQLite connection
(``sqlite3`` on a thread of its own, ``voxgate.metering.connection``).

The database runs in WAL mode with ``synchronous=NORMAL`` (a commit is
durable across a process crash; the last commits may be lost on power loss),
``foreign_keys=ON`` and a busy timeout.

Schema: versioned migrations, ``migrations/NNNN_name.sql``, applied in
version order at ``open()`` (``auto_migrate``; else ``PendingMigrations``),
each in its own transaction, and recorded in ``schema_migrations`` with the
file's checksum, verified at every ``open()`` (``ChecksumMismatch``)
(``migrations/postgresql/`` holds PostgreSQL's, with the same versions).
The queries of billing, the dashboard and the jobs are in
``voxgate.metering.rooms``, on ``store.db`` inside
``async with store.transaction():``.

Transactions: the connection is opened in autocommit mode
(``isolation_level=None``); every write takes ``store.lock`` (an
``asyncio.Lock``) so that coroutines never interleave statements of different
transactions on the single connection. Reads do not take the lock and may see
the uncommitted writes of a transaction in progress on this connection.

Times are Unix seconds (float); periods are ``"YYYY-MM"`` in UTC.

Portable SQL: the statements here and in billing, web and jobs run on
PostgreSQL too (``voxgate.metering.pg_store``): ``ON CONFLICT … DO
NOTHING/UPDATE`` (never ``INSERT OR IGNORE``), columns qualified in upsert
``SET`` clauses, ``utc_day(ts)`` for the UTC day of a timestamp.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from voxgate.caches import BoundedDict
from voxgate.errors import ConfigError
from voxgate.metering.connection import LANES, AsyncConnection, lane, rollback_open
from voxgate.metering.store import (
    Instance,
    MonthlyUsage,
    Orphan,
    OutboxItem,
    SessionFilter,
    period_of,
)
from voxgate.models import (
    Account,
    AdminKey,
    ApiKey,
    EphemeralKey,
    Measurements,
    Project,
    SessionRecord,
    Verdict,
    hash_secret,
    new_admin_key,
    new_api_key,
    new_ephemeral_key,
    new_id,
)
from voxgate.models.packs import AccountPack, PackBalance, pack_balance, pack_expiry, pack_to_use

__all__ = ["SQLiteStore", "Migration", "load_migrations", "split_sql", "MIGRATIONS_DIR",
           "MigrationError", "ChecksumMismatch", "PendingMigrations", "pending_migrations"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_MS = 5000
API_KEY_PREFIX_LEN = 12  # "vg_live_AbCd"
ADMIN_KEY_PREFIX_LEN = 13  # "vg_admin_AbCd"
LAST_USED_INTERVAL_S = 60.0  # write api_keys.last_used_at at most this often per key
KEY_CACHE_TTL_S = 5.0  # bound on how long another process's key change may go unseen
KEY_CACHE_MAX = 16_384  # keys remembered (lookups, last-used writes), least recently used out

_MIGRATION_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")

_ACCOUNT_FIELDS = frozenset({
    "plan_id", "status", "stripe_customer_id", "stripe_subscription_id",
    "past_due_since", "name", "email",
})


# ---------------------------------------------------------------- migrations

@dataclass(frozen=True, slots=True)
class Migration:
    """One ``NNNN_name.sql`` file. ``checksum``: the SHA-256 (hex) of its
    text with line endings as LF, recorded in ``schema_migrations`` when it
    is applied and compared with the file at every start."""

    version: int
    name: str
    path: Path
    checksum: str = ""

    @property
    def label(self) -> str:
        """``"0012 (0012_housekeeping.sql)"``, as messages name it."""
        return f"{self.version:04d} ({self.path.name})"


def migration_checksum(text: bytes) -> str:
    """SHA-256 (hex) of a migration file's bytes, CRLF read as LF (so a
    checkout with Windows line endings is the same file)."""
    return hashlib.sha256(text.replace(b"\r\n", b"\n")).hexdigest()


def load_migrations(directory: str | Path) -> list[Migration]:
    """The ``NNNN_name.sql`` files of ``directory`` in version order.

    Raises:
        ValueError: two files share a version number.
    """
    found: dict[int, Migration] = {}
    for path in Path(directory).iterdir():
        m = _MIGRATION_NAME.match(path.name)
        if not m or not path.is_file():
            continue
        version = int(m.group(1))
        if version in found:
            raise ValueError(f"duplicate migration version {version}: "
                             f"{found[version].path.name}, {path.name}")
        found[version] = Migration(version, m.group(2), path,
                                   migration_checksum(path.read_bytes()))
    return [found[v] for v in sorted(found)]


class MigrationError(ConfigError):
    """The schema cannot be brought to this voxgate's version: a migration
    failed (nothing of it applied), or waited too long for a lock. A
    ``ConfigError``: the command line prints its one-line message and stops."""


class ChecksumMismatch(MigrationError):
    """An applied migration's file is no longer what was applied (its
    checksum differs from the one recorded): voxgate refuses to start."""

    def __init__(self, migration: Migration, recorded: str) -> None:
        super().__init__(
            f"migration {migration.label} was changed after it was applied to this database "
            f"(checksum now {migration.checksum[:12]}…, {recorded[:12]}… when applied): "
            f"restore {migration.path} as it was; change a schema with a new migration, "
            f"never by editing an applied one")
        self.migration = migration
        self.recorded = recorded


class PendingMigrations(MigrationError):
    """Migrations are pending and this store may not apply them at open
    (``auto_migrate = false``): ``pending`` lists them."""

    def __init__(self, pending: list[Migration]) -> None:
        names = ", ".join(m.path.name for m in pending)
        super().__init__(
            f"{len(pending)} schema migration(s) pending ({names}) and auto_migrate is off: "
            f"run `voxgate migrate` first (or set auto_migrate = true)")
        self.pending = pending


def pending_migrations(migrations: Iterable[Migration],
                       applied: dict[int, str | None]) -> list[Migration]:
    """The migrations not applied yet, in version order, after checking
    that each applied one is still the file that was applied.

    Args:
        migrations: the files (``load_migrations``).
        applied: ``schema_migrations``: version → recorded checksum (None:
            recorded before checksums were kept; not checked).

    Raises:
        ChecksumMismatch: an applied migration's file changed since.
    """
    pending = []
    for migration in migrations:
        if migration.version not in applied:
            pending.append(migration)
            continue
        recorded = applied[migration.version]
        if recorded is not None and recorded != migration.checksum:
            raise ChecksumMismatch(migration, recorded)
    return pending


# schema_migrations: one row per applied migration; checksum NULL only for
# rows written before checksums were kept, until the first start that has them
_SCHEMA_MIGRATIONS = ("CREATE TABLE IF NOT EXISTS schema_migrations (version {int} PRIMARY KEY,"
                      " name TEXT NOT NULL, applied_at {real} NOT NULL, checksum TEXT)")


def _recorded_migrations(execute: Callable[..., Any],
                         migrations: Iterable[Migration]) -> dict[int, str | None]:
    """``schema_migrations`` as version → checksum, after recording the
    checksum of the files of the rows that have none (written before
    checksums were kept: the files are taken as they are now). Runs inside
    the caller's transaction (``execute`` is its connection's)."""
    files = {m.version: m for m in migrations}
    applied: dict[int, str | None] = {}
    for version, checksum in execute("SELECT version, checksum FROM schema_migrations").fetchall():
        if checksum is None and version in files:
            checksum = files[version].checksum
            execute("UPDATE schema_migrations SET checksum = ? WHERE version = ?"
                    " AND checksum IS NULL", (checksum, version))
        applied[int(version)] = checksum
    return applied


def _record_migration(execute: Callable[..., Any], migration: Migration) -> None:
    execute("INSERT INTO schema_migrations (version, name, applied_at, checksum)"
            " VALUES (?, ?, ?, ?)", (migration.version, migration.name, time.time(),
                                     migration.checksum))


def _migrate_sqlite(conn: sqlite3.Connection, migrations: list[Migration],
                    apply: bool) -> list[Migration]:
    """``SQLiteStore._migrate`` on the connection's thread: checksums
    recorded where missing and verified, then each pending migration
    applied statement by statement in a ``BEGIN IMMEDIATE`` transaction of
    its own (SQLite's one writer: another process waits for it, then finds
    it applied). Returns the migrations applied.

    Raises:
        ChecksumMismatch, PendingMigrations (``apply`` False), MigrationError.
    """
    conn.execute(_SCHEMA_MIGRATIONS.format(int="INTEGER", real="REAL"))
    conn.execute("BEGIN IMMEDIATE")
    try:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(schema_migrations)")}
        if "checksum" not in columns:
            conn.execute("ALTER TABLE schema_migrations ADD COLUMN checksum TEXT")
        applied = _recorded_migrations(conn.execute, migrations)
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
                _record_migration(conn.execute, migration)
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


def split_sql(script: str) -> list[str]:
    """Split a SQL script into complete statements.

    Uses ``sqlite3.complete_statement``, so semicolons inside strings,
    comments and ``CREATE TRIGGER … BEGIN … END`` bodies are handled.
    Comment-only fragments are dropped.
    """
    statements: list[str] = []
    buf = ""
    for part in script.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if _has_code(buf):
                statements.append(buf.strip())
            buf = ""
    # the split adds a ";" after the last fragment; what remains is a
    # trailing fragment without a semicolon of its own
    rest = buf[:-1]
    if _has_code(rest):
        statements.append(rest.strip())
    return statements


def _has_code(sql: str) -> bool:
    """True if ``sql`` holds anything besides comments, whitespace and ``;``."""
    text = re.sub(r"--[^\n]*", "", sql)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return bool(text.replace(";", "").strip())


def utc_day(ts: float | None) -> str | None:
    """SQL function ``utc_day(ts)``: the UTC day (``"YYYY-MM-DD"``) of Unix
    time ``ts`` (s); defined on both SQLite and PostgreSQL, so that queries
    grouping by day are the same on both."""
    return None if ts is None else time.strftime("%Y-%m-%d", time.gmtime(ts))


# ---------------------------------------------------------------- row mapping

_ACCOUNT_COLS = ("id, email, plan_id, created_at, status, stripe_customer_id, "
                 "stripe_subscription_id, past_due_since, name")
_PROJECT_COLS = "id, account_id, name, created_at, allowed_origins, allowed_models, allowed_ips"
_ADMIN_KEY_COLS = "id, account_id, prefix, key_hash, created_at, name, revoked_at, last_used_at"
_API_KEY_COLS = "id, project_id, prefix, key_hash, created_at, name, revoked_at, last_used_at"
_EPHEMERAL_COLS = "id, project_id, key_hash, created_at, expires_at, api_key_id, session"
_SESSION_COLS = ("id, account_id, project_id, transport, started_at, model, api_key_id, "
                 "ephemeral_key_id, status, ended_at, period, measurements, billable, "
                 "reason, rule, settlement, settlement_ref")
_USAGE_COLS = "sessions, billable_sessions, minutes_used, audio_seconds, bytes"
_OUTBOX_COLS = ("session_id, account_id, period, created_at, attempts, next_attempt_at, "
                "last_error")
_INSTANCE_COLS = "id, host, pid, started_at, heartbeat_at, epoch"


def _account(row: Any) -> Account:
    return Account(*row)


def _project(row: Any) -> Project:
    return Project(id=row[0], account_id=row[1], name=row[2], created_at=row[3],
                   allowed_origins=tuple(orjson.loads(row[4])),
                   allowed_models=tuple(orjson.loads(row[5])),
                   allowed_ips=tuple(orjson.loads(row[6])))


def _api_key(row: Any) -> ApiKey:
    return ApiKey(*row)


def _ephemeral(row: Any) -> EphemeralKey:
    return EphemeralKey(id=row[0], project_id=row[1], key_hash=row[2], created_at=row[3],
                        expires_at=row[4], api_key_id=row[5], session=orjson.loads(row[6]))


def _session(row: Any) -> SessionRecord:
    return SessionRecord(
        id=row[0], account_id=row[1], project_id=row[2], transport=row[3], started_at=row[4],
        model=row[5], api_key_id=row[6], ephemeral_key_id=row[7], status=row[8], ended_at=row[9],
        period=row[10],
        measurements=Measurements.from_dict(orjson.loads(row[11])),
        billable=None if row[12] is None else bool(row[12]),
        reason=row[13], rule=row[14], settlement=row[15], settlement_ref=row[16],
    )


def _usage_of(account_id: str, period: str, row: Any) -> MonthlyUsage:
    # REAL columns can come back as int (e.g. through RETURNING); keep the types
    return MonthlyUsage(account_id, period, int(row[0]), int(row[1]), float(row[2]),
                        float(row[3]), int(row[4]))


def _prefixed(cols: str, alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in cols.split(","))


# ---------------------------------------------------------------- the store

_OPEN_SESSION_SQL = """
INSERT INTO sessions (id, account_id, project_id, api_key_id, ephemeral_key_id, transport,
    model, status, started_at, ended_at, period, connect_ms, duration_ms, audio_in_ms,
    audio_out_ms, bytes_in, bytes_out, measurements, instance_id, lease_id)
VALUES (?, ?, ?, ?, ?, ?, ?, 'active', ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# Insert-or-complete: updates only a session not yet completed, so the
# rowcount (0 or 1) tells whether this call is the one completing it. On
# PostgreSQL it also locks the row, completed or not, until the commit.
# _COMPLETE_PROVISIONAL_SQL also sets ``provisional`` = 1 (a sweeper's
# completion); an active row's is 0 already.
_COMPLETE_SESSION_SQL = """
INSERT INTO sessions (id, account_id, project_id, api_key_id, ephemeral_key_id, transport,
    model, status, started_at, ended_at, period, billable, reason, rule, settlement,
    connect_ms, duration_ms, audio_in_ms, audio_out_ms, bytes_in, bytes_out, measurements{p})
VALUES (?, ?, ?, ?, ?, ?, ?, 'completed', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?{v})
ON CONFLICT (id) DO UPDATE SET
    status = 'completed', ended_at = excluded.ended_at, billable = excluded.billable,
    reason = excluded.reason, rule = excluded.rule, settlement = excluded.settlement,
    connect_ms = excluded.connect_ms, duration_ms = excluded.duration_ms,
    audio_in_ms = excluded.audio_in_ms, audio_out_ms = excluded.audio_out_ms,
    bytes_in = excluded.bytes_in, bytes_out = excluded.bytes_out,
    measurements = excluded.measurements{u}
WHERE sessions.status <> 'completed'
"""
_COMPLETE_PROVISIONAL_SQL = _COMPLETE_SESSION_SQL.format(
    p=", provisional", v=", 1", u=", provisional = excluded.provisional")
_COMPLETE_SESSION_SQL = _COMPLETE_SESSION_SQL.format(p="", v="", u="")

# The owning instance's final record replacing a provisional one
# (complete_session's upgrade rule): with the verdict (billable upgrade) or
# measurements only.
_UPGRADE_SESSION_SQL = """
UPDATE sessions SET ended_at = ?, billable = 1, reason = ?, rule = ?, settlement = ?,
    connect_ms = ?, duration_ms = ?, audio_in_ms = ?, audio_out_ms = ?, bytes_in = ?,
    bytes_out = ?, measurements = ?, provisional = 0
WHERE id = ?
"""
_REMEASURE_SESSION_SQL = """
UPDATE sessions SET ended_at = ?, connect_ms = ?, duration_ms = ?, audio_in_ms = ?,
    audio_out_ms = ?, bytes_in = ?, bytes_out = ?, measurements = ?, provisional = 0
WHERE id = ?
"""

# Adds to the period's usage and returns it: under this row's lock (held to
# the commit) the returned billable_sessions numbers a billable session.
_ADD_USAGE_SQL = f"""
INSERT INTO monthly_usage (account_id, period, sessions, billable_sessions, minutes_used,
    audio_seconds, bytes)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (account_id, period) DO UPDATE SET
    sessions = monthly_usage.sessions + excluded.sessions,
    billable_sessions = monthly_usage.billable_sessions + excluded.billable_sessions,
    minutes_used = monthly_usage.minutes_used + excluded.minutes_used,
    audio_seconds = monthly_usage.audio_seconds + excluded.audio_seconds,
    bytes = monthly_usage.bytes + excluded.bytes
RETURNING {_USAGE_COLS}
"""


_PACK_COLS = ("id, account_id, catalog_pack, sessions, sessions_used, price_cents, source, ref,"
              " purchased_at, expires_at")


def _pack(row: Any) -> AccountPack:
    return AccountPack(*row)


def _live_packs_sync(conn: sqlite3.Connection, account_id: str, now: float) -> list[AccountPack]:
    rows = conn.execute(
        f"SELECT {_PACK_COLS} FROM session_packs WHERE account_id = ? AND purchased_at <= ?"
        " AND expires_at > ?", (account_id, now, now)).fetchall()
    return [_pack(r) for r in rows]


def _transact(conn: sqlite3.Connection, fn: Any, *args: Any) -> Any:
    """``fn(conn, *args)`` inside BEGIN IMMEDIATE … COMMIT (ROLLBACK on error;
    a plain BEGIN on PostgreSQL, where row locks serialize what must be)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args)
        conn.execute("COMMIT")
    except BaseException:
        rollback_open(conn)
        raise
    return result


def _take_pack_sync(conn: sqlite3.Connection, account_id: str, now: float) -> str | None:
    """Take one session from the account's pack ``pack_to_use`` picks (live,
    sessions left, first to expire, then the older purchase, then id), with
    a guarded UPDATE (``sessions_used < sessions``); when another
    transaction took that pack's last session meanwhile, the next pack is
    tried. Returns the pack's id, None when no pack has a session left."""
    packs = _live_packs_sync(conn, account_id, now)
    while (pack := pack_to_use(packs, now)) is not None:
        if conn.execute("UPDATE session_packs SET sessions_used = sessions_used + 1"
                        " WHERE id = ? AND sessions_used < sessions", (pack.id,)).rowcount == 1:
            return pack.id
        packs = [p for p in packs if p.id != pack.id]
    return None


def _usage_now_sync(conn: sqlite3.Connection, account_id: str, period: str) -> MonthlyUsage:
    row = conn.execute(
        f"SELECT {_USAGE_COLS} FROM monthly_usage WHERE account_id = ? AND period = ?",
        (account_id, period)).fetchone()
    return _usage_of(account_id, period, row) if row else MonthlyUsage(account_id, period)


def _complete_sync(
    conn: sqlite3.Connection, record: SessionRecord, verdict: Verdict, settle: bool,
    ended_at: float, settle_from: int | None = None, pack_from: int | None = None,
    provisional: bool = False,
) -> MonthlyUsage:
    """The statements of ``complete_session``; the caller holds the
    transaction. The same rules, statement for statement, as PostgreSQL's
    ``voxgate_complete_session`` (``migrations/postgresql/0011_hot_path.sql``);
    locks in this order: the session row, the usage row, packs, outbox.

    1. Complete the row if not completed yet (``_COMPLETE_SESSION_SQL``).
       Already completed: no change, unless it is provisional and this is
       the owning instance's final record (``provisional`` False): then a
       billable verdict upgrades a not-billable one (counted as a billable
       session now, settled below), otherwise the stored verdict stays and
       only the measurements (and their difference in usage) change.
    2. Add to the period's usage; its ``RETURNING billable_sessions`` under
       the usage row lock numbers a billable session (before = it − 1).
    3. A billable session past ``pack_from`` takes a pack session
       (``_take_pack_sync``); else past ``settle_from`` it is settled
       (``settlement="pending"``, outbox).
    """
    period = record.period or period_of(record.started_at)
    m = record.measurements
    billable = bool(verdict.billable)
    measured = (m.connect_ms, m.duration_ms, m.audio_in_ms, m.audio_out_ms, m.bytes_in,
                m.bytes_out, orjson.dumps(m.to_dict()).decode())
    settlement = "pending" if settle else ("included" if billable else "none")
    audio_s = (m.audio_in_ms + m.audio_out_ms) / 1000.0
    nbytes = m.bytes_in + m.bytes_out
    counted, decide, pending = 1, billable, settle
    add_billable = int(billable)
    minutes = m.duration_ms / 60000.0 if billable else 0.0
    cursor = conn.execute(_COMPLETE_PROVISIONAL_SQL if provisional else _COMPLETE_SESSION_SQL, (
        record.id, record.account_id, record.project_id, record.api_key_id,
        record.ephemeral_key_id, record.transport, record.model, record.started_at,
        ended_at, period, int(billable), verdict.reason, verdict.rule, settlement, *measured,
    ))
    if cursor.rowcount == 0:  # already completed
        old = conn.execute(
            "SELECT provisional, billable, duration_ms, audio_in_ms, audio_out_ms, bytes_in,"
            " bytes_out FROM sessions WHERE id = ?", (record.id,)).fetchone()
        if old is None or not old[0] or provisional:  # a retry: counted once only
            return _usage_now_sync(conn, record.account_id, period)
        counted = 0
        audio_s -= (old[3] + old[4]) / 1000.0
        nbytes -= old[5] + old[6]
        if billable and not old[1]:  # the final record upgrades a not-billable one
            settlement = "pending" if settle else "included"
            conn.execute(_UPGRADE_SESSION_SQL, (ended_at, verdict.reason, verdict.rule,
                                                settlement, *measured, record.id))
        else:  # the stored verdict and settlement stay; measurements replaced
            decide = pending = False
            add_billable = 0
            minutes = (m.duration_ms - old[2]) / 60000.0 if old[1] else 0.0
            conn.execute(_REMEASURE_SESSION_SQL, (ended_at, *measured, record.id))
    row = conn.execute(_ADD_USAGE_SQL, (
        record.account_id, period, counted, add_billable, minutes, audio_s, nbytes)).fetchone()
    if decide and not settle and (settle_from is not None or pack_from is not None):
        before = int(row[1]) - 1  # billable sessions of the period before this one
        pack_id = None
        if pack_from is not None and before >= pack_from:
            pack_id = _take_pack_sync(conn, record.account_id, ended_at)
        final = settlement
        if pack_id is not None:
            conn.execute("INSERT INTO pack_sessions (session_id, account_pack_id, account_id,"
                         " period, used_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                         (record.id, pack_id, record.account_id, period, ended_at))
            final = "pack"
        elif settle_from is not None and before >= settle_from:
            final, pending = "pending", True
        if final != settlement:
            conn.execute("UPDATE sessions SET settlement = ? WHERE id = ?", (final, record.id))
    if pending:
        conn.execute(
            f"INSERT INTO settlement_outbox ({_OUTBOX_COLS})"
            " VALUES (?, ?, ?, ?, 0, ?, NULL) ON CONFLICT DO NOTHING",
            (record.id, record.account_id, period, ended_at, ended_at))
    return _usage_of(record.account_id, period, row)


def _orphans_sync(conn: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> list[Orphan]:
    """The active sessions matching ``where`` (on ``sessions s``) with their
    lease ids and last checkpoints, for ``complete_orphans``."""
    rows = conn.execute(
        f"SELECT {_prefixed(_SESSION_COLS, 's')}, s.lease_id, s.checkpoint_at FROM sessions s"
        f" WHERE s.status = 'active' AND {where} ORDER BY s.started_at, s.id", params).fetchall()
    return [Orphan(row[0], row[1], row[-2], _session(row[:-2]), row[-1]) for row in rows]


_CHECKPOINT_SQL = """
UPDATE sessions SET measurements = ?, connect_ms = ?, duration_ms = ?, audio_in_ms = ?,
    audio_out_ms = ?, bytes_in = ?, bytes_out = ?, checkpoint_at = ?
WHERE id = ? AND status = 'active' AND instance_id = ?
"""


def _checkpoint_sync(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> int:
    """``_CHECKPOINT_SQL`` for every row in one transaction (a plain BEGIN:
    no write lock of the whole database on PostgreSQL)."""
    conn.execute("BEGIN")
    try:
        count = conn.executemany(_CHECKPOINT_SQL, rows).rowcount
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return max(0, count or 0)


class SQLiteStore:
    """The ``Store`` on a SQLite file (see the module docstring).

    Parameters:
        path: the database file; its parent directory is created at ``open()``.
        migrations_dir: where the ``NNNN_name.sql`` files are (the packaged
            ``migrations`` directory when None).
    """

    def __init__(self, path: str | Path, migrations_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        self.migrations_dir = Path(migrations_dir) if migrations_dir else MIGRATIONS_DIR
        self.lock = asyncio.Lock()
        # the instance this process's sessions are opened under (register_instance)
        self.instance_id: str | None = None
        # AsyncConnection (SQLite: one writer) or connection.Pool (PostgreSQL)
        self._db: Any = None
        # open(): apply pending migrations (else refuse: PendingMigrations);
        # what the last open() applied (``voxgate migrate`` prints it)
        self.auto_migrate = True
        self.migrations_applied: tuple[Migration, ...] = ()
        # key id -> when last_used_at was last written (KEY_CACHE_MAX keys at most)
        self._last_used_written: BoundedDict[str, float] = BoundedDict(KEY_CACHE_MAX)
        # key hash -> (key, project, account, fetched at, monotonic s); cleared
        # by every method that changes a key, project or account, and aged out
        # after KEY_CACHE_TTL_S as a bound for changes made by other processes;
        # KEY_CACHE_MAX keys at most (least recently used out).
        self._key_cache: BoundedDict[str, tuple[ApiKey, Project, Account, float]] = \
            BoundedDict(KEY_CACHE_MAX)
        self._key_generation = 0

    # ------------------------------------------------------------ lifecycle

    @property
    def db(self) -> AsyncConnection:
        """The connection (autocommit mode; write inside ``transaction()``).

        Raises:
            RuntimeError: the store is not open.
        """
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def open(self) -> None:
        """Connect, set the pragmas and apply pending migrations."""
        if self._db is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._open_with(AsyncConnection(self._connect, "voxgate-sqlite"))

    async def _open_with(self, db: Any) -> None:
        """Open ``db`` (an ``AsyncConnection``, or PostgreSQL's ``Pool``) as
        ``self.db`` and apply pending migrations; closed again when they
        fail."""
        await db.open()
        try:
            self._db = db
            await self._migrate()
        except BaseException:
            self._db = None
            await db.close()
            raise

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

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _migrate(self) -> None:
        """Verify the applied migrations' checksums and apply the pending
        ones (``auto_migrate``), in one hop to the connection's thread;
        ``migrations_applied`` lists what this call applied.

        Raises:
            ChecksumMismatch: an applied migration's file changed.
            PendingMigrations: some are pending and ``auto_migrate`` is False.
            MigrationError: a migration failed (nothing of it applied).
        """
        migrations = load_migrations(self.migrations_dir)
        async with self.lock:
            applied = await self.db.run(_migrate_sqlite, migrations, self.auto_migrate)
        self.migrations_applied = tuple(applied)

    async def ping(self) -> None:
        """One trivial query (readiness checks): raises what the database
        raises when it cannot answer (``sqlite3.OperationalError``,
        ``psycopg.OperationalError``)."""
        await self.db.execute_fetchall("SELECT 1")

    async def applied_migrations(self) -> list[tuple[int, str]]:
        """(version, name) of every applied migration, in order."""
        rows = await self.db.execute_fetchall(
            "SELECT version, name FROM schema_migrations ORDER BY version")
        return [(r[0], r[1]) for r in rows]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on any exception,
        a cancellation included, even one while waiting for ``BEGIN``),
        holding ``self.lock``. Not re-entrant: do not nest.

        The ROLLBACK is queued on the connection's thread, not awaited: it
        runs after whatever the thread is still doing for this transaction
        (the thread runs work in order) and before the next transaction's
        BEGIN, so a cancelled caller can never leave the transaction open."""
        db = self.db
        async with self.lock:
            try:
                await db.execute("BEGIN IMMEDIATE")
                yield db
                await db.execute("COMMIT")
            except BaseException:
                db.rollback_later()
                raise

    dialect = "sqlite"  # "postgresql" on PostgresStore (rooms' dialect-specific SQL)

    @staticmethod
    def lane(name: str) -> Any:
        """``with store.lane("heartbeat"): …``: the block's statements run on
        that lane of the PostgreSQL pool (``voxgate.metering.connection``:
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

    # ------------------------------------------------------------ accounts

    async def create_account(self, email: str, plan_id: str, *, name: str = "") -> Account:
        account = Account(id=new_id("acct"), email=email, plan_id=plan_id,
                          created_at=time.time(), name=name)
        await self._write(
            f"INSERT INTO accounts ({_ACCOUNT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (account.id, account.email, account.plan_id, account.created_at, account.status,
             None, None, None, account.name),
        )
        return account

    async def get_account(self, account_id: str) -> Account | None:
        row = await self._one(f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE id = ?", (account_id,))
        return _account(row) if row else None

    async def get_account_by_email(self, email: str) -> Account | None:
        row = await self._one(f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE email = ?", (email,))
        return _account(row) if row else None

    async def list_accounts(self) -> list[Account]:
        rows = await self.db.execute_fetchall(
            f"SELECT {_ACCOUNT_COLS} FROM accounts ORDER BY created_at, id")
        return [_account(r) for r in rows]

    async def update_account(self, account_id: str, **fields: Any) -> Account:
        """Set fields of the account.

        Raises:
            KeyError: unknown account.
            TypeError: a field that cannot be set.
        """
        self._invalidate_keys()
        unknown = set(fields) - _ACCOUNT_FIELDS
        if unknown:
            raise TypeError(f"cannot update account fields {sorted(unknown)}")
        if fields:
            names = sorted(fields)
            assignments = ", ".join(f"{n} = ?" for n in names)
            changed = await self._write(
                f"UPDATE accounts SET {assignments} WHERE id = ?",
                (*(fields[n] for n in names), account_id),
            )
            self._invalidate_keys()
            if not changed:
                raise KeyError(account_id)
        account = await self.get_account(account_id)
        if account is None:
            raise KeyError(account_id)
        return account

    # ------------------------------------------------------------ projects

    async def create_project(self, account_id: str, name: str) -> Project:
        project = Project(id=new_id("proj"), account_id=account_id, name=name,
                          created_at=time.time())
        await self._write(
            f"INSERT INTO projects ({_PROJECT_COLS}) VALUES (?, ?, ?, ?, '[]', '[]', '[]')",
            (project.id, project.account_id, project.name, project.created_at),
        )
        return project

    async def get_project(self, project_id: str) -> Project | None:
        row = await self._one(
            f"SELECT {_PROJECT_COLS} FROM projects WHERE id = ? AND deleted_at IS NULL",
            (project_id,))
        return _project(row) if row else None

    async def list_projects(self, account_id: str) -> list[Project]:
        rows = await self.db.execute_fetchall(
            f"SELECT {_PROJECT_COLS} FROM projects WHERE account_id = ? AND deleted_at IS NULL"
            " ORDER BY created_at, id", (account_id,))
        return [_project(r) for r in rows]

    async def update_project(
        self,
        project_id: str,
        *,
        allowed_origins: tuple[str, ...] | None = None,
        allowed_models: tuple[str, ...] | None = None,
        allowed_ips: tuple[str, ...] | None = None,
    ) -> Project:
        """Replace the project's pins that are given (already normalized).

        Raises:
            KeyError: no such (undeleted) project.
        """
        fields = {name: value for name, value in (
            ("allowed_origins", allowed_origins), ("allowed_models", allowed_models),
            ("allowed_ips", allowed_ips)) if value is not None}
        if fields:
            self._invalidate_keys()
            assignments = ", ".join(f"{name} = ?" for name in fields)
            changed = await self._write(
                f"UPDATE projects SET {assignments} WHERE id = ? AND deleted_at IS NULL",
                (*(orjson.dumps(list(v)).decode() for v in fields.values()), project_id))
            self._invalidate_keys()
            if not changed:
                raise KeyError(project_id)
        project = await self.get_project(project_id)
        if project is None:
            raise KeyError(project_id)
        return project

    async def delete_project(self, project_id: str) -> None:
        """Delete the project (soft: its row stays for sessions and keys) and
        revoke its keys."""
        self._invalidate_keys()
        now = time.time()
        async with self.transaction() as db:
            await db.execute(
                "UPDATE projects SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL",
                (now, project_id))
            await db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE project_id = ? AND revoked_at IS NULL",
                (now, project_id))
        self._invalidate_keys()

    # ------------------------------------------------------------ API keys

    async def create_api_key(self, project_id: str, name: str = "") -> tuple[ApiKey, str]:
        plaintext = new_api_key()
        key = ApiKey(id=new_id("key"), project_id=project_id,
                     prefix=plaintext[:API_KEY_PREFIX_LEN], key_hash=hash_secret(plaintext),
                     created_at=time.time(), name=name)
        await self._write(
            f"INSERT INTO api_keys ({_API_KEY_COLS}) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)",
            (key.id, key.project_id, key.prefix, key.key_hash, key.created_at, key.name),
        )
        return key, plaintext

    async def list_api_keys(self, project_id: str) -> list[ApiKey]:
        rows = await self.db.execute_fetchall(
            f"SELECT {_API_KEY_COLS} FROM api_keys WHERE project_id = ? ORDER BY created_at, id",
            (project_id,))
        return [_api_key(r) for r in rows]

    async def revoke_api_key(self, key_id: str) -> None:
        self._invalidate_keys()
        await self._write(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), key_id))
        self._invalidate_keys()

    async def audit(self, actor: str, action: str, account_id: str | None,
                    detail: dict[str, Any] | None = None) -> None:
        await self._write(
            "INSERT INTO audit_log (at, actor, account_id, action, detail) VALUES (?, ?, ?, ?, ?)",
            (time.time(), actor, account_id, action, orjson.dumps(detail or {}).decode()))

    # ------------------------------------------------------------ admin keys

    async def create_admin_key(self, account_id: str, name: str = "") -> tuple[AdminKey, str]:
        plaintext = new_admin_key()
        key = AdminKey(id=new_id("adminkey"), account_id=account_id,
                       prefix=plaintext[:ADMIN_KEY_PREFIX_LEN], key_hash=hash_secret(plaintext),
                       created_at=time.time(), name=name)
        await self._write(
            f"INSERT INTO admin_keys ({_ADMIN_KEY_COLS}) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)",
            (key.id, key.account_id, key.prefix, key.key_hash, key.created_at, key.name))
        return key, plaintext

    async def list_admin_keys(self, account_id: str) -> list[AdminKey]:
        rows = await self.db.execute_fetchall(
            f"SELECT {_ADMIN_KEY_COLS} FROM admin_keys WHERE account_id = ?"
            " ORDER BY created_at, id", (account_id,))
        return [AdminKey(*r) for r in rows]

    async def revoke_admin_key(self, key_id: str) -> None:
        await self._write(
            "UPDATE admin_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), key_id))

    async def find_admin_key(self, plaintext: str) -> tuple[AdminKey, Account] | None:
        """The admin key with that plaintext and its account (revoked ones
        too: ``AdminKey.active`` tells); None if unknown. Not cached, and
        ``last_used_at`` is written on every use (admin keys are rare)."""
        row = await self._one(
            f"SELECT {_prefixed(_ADMIN_KEY_COLS, 'k')}, {_prefixed(_ACCOUNT_COLS, 'a')}"
            " FROM admin_keys k JOIN accounts a ON a.id = k.account_id WHERE k.key_hash = ?",
            (hash_secret(plaintext),))
        if row is None:
            return None
        key, account = AdminKey(*row[:8]), _account(row[8:])
        key.last_used_at = time.time()
        await self._write("UPDATE admin_keys SET last_used_at = ? WHERE id = ?",
                          (key.last_used_at, key.id))
        return key, account

    def _invalidate_keys(self) -> None:
        """Forget cached key lookups (before and after a change, so a lookup
        racing the write cannot cache what it read before)."""
        self._key_cache.clear()
        self._key_generation += 1

    async def find_api_key(self, plaintext: str) -> tuple[ApiKey, Project, Account] | None:
        """The key with that plaintext, its project and account; None if
        unknown. Revoked keys (and keys of deleted projects, which are
        revoked) are returned. ``last_used_at`` is written at most once a
        minute per key (per process). Found keys are cached for
        ``KEY_CACHE_TTL_S`` (copies are returned); any change to a key,
        project or account through this store clears the cache."""
        key_hash = hash_secret(plaintext)
        cached = self._key_cache.get(key_hash)
        if cached is not None and time.monotonic() - cached[3] < KEY_CACHE_TTL_S:
            key, project, account = replace(cached[0]), replace(cached[1]), replace(cached[2])
        else:
            generation = self._key_generation
            row = await self._one(
                f"SELECT {_prefixed(_API_KEY_COLS, 'k')}, {_prefixed(_PROJECT_COLS, 'p')},"
                f" {_prefixed(_ACCOUNT_COLS, 'a')}"
                " FROM api_keys k JOIN projects p ON p.id = k.project_id"
                " JOIN accounts a ON a.id = p.account_id WHERE k.key_hash = ?",
                (key_hash,))
            if row is None:
                return None
            key, project, account = _api_key(row[:8]), _project(row[8:15]), _account(row[15:])
            if generation == self._key_generation:
                self._key_cache[key_hash] = (replace(key), replace(project), replace(account),
                                             time.monotonic())
        now = time.time()
        last = self._last_used_written.get(key.id, key.last_used_at or 0.0)
        if now - last >= LAST_USED_INTERVAL_S:
            self._last_used_written[key.id] = now
            await self._write("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now, key.id))
        key.last_used_at = self._last_used_written.get(key.id, key.last_used_at)
        return key, project, account

    # ------------------------------------------------------------ ephemeral keys

    async def create_ephemeral_key(
        self,
        project_id: str,
        session: dict[str, Any],
        expires_at: float,
        api_key_id: str | None = None,
    ) -> tuple[EphemeralKey, str]:
        plaintext = new_ephemeral_key()
        key = EphemeralKey(id=new_id("ek"), project_id=project_id,
                           key_hash=hash_secret(plaintext), created_at=time.time(),
                           expires_at=expires_at, api_key_id=api_key_id, session=session)
        await self._write(
            f"INSERT INTO ephemeral_keys ({_EPHEMERAL_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key.id, key.project_id, key.key_hash, key.created_at, key.expires_at,
             key.api_key_id, orjson.dumps(session).decode()),
        )
        return key, plaintext

    async def find_ephemeral_key(
        self, plaintext: str
    ) -> tuple[EphemeralKey, Project, Account] | None:
        """The ephemeral key, its project and account; None if unknown.
        Expired keys are returned (``EphemeralKey.expired(now)`` tells), and
        so are revoked ones: ``EphemeralKey.revoked`` is set when the API key
        that minted it is revoked or its project deleted."""
        row = await self._one(
            f"SELECT {_prefixed(_EPHEMERAL_COLS, 'e')}, {_prefixed(_PROJECT_COLS, 'p')},"
            f" {_prefixed(_ACCOUNT_COLS, 'a')},"
            " (p.deleted_at IS NOT NULL OR k.revoked_at IS NOT NULL)"
            " FROM ephemeral_keys e JOIN projects p ON p.id = e.project_id"
            " JOIN accounts a ON a.id = p.account_id"
            " LEFT JOIN api_keys k ON k.id = e.api_key_id WHERE e.key_hash = ?",
            (hash_secret(plaintext),))
        if row is None:
            return None
        ek = _ephemeral(row[:7])
        ek.revoked = bool(row[-1])
        return ek, _project(row[7:14]), _account(row[14:-1])

    # ------------------------------------------------------------ sessions

    async def open_session(self, record: SessionRecord, *, lease_id: str | None = None) -> None:
        """Insert the session row with ``status="active"`` (one statement),
        owned by ``instance_id``, holding admission lease ``lease_id``."""
        await self._write(_OPEN_SESSION_SQL, self._open_params(record, lease_id))

    def _open_params(self, record: SessionRecord, lease_id: str | None) -> tuple[Any, ...]:
        """``_OPEN_SESSION_SQL``'s parameters."""
        m = record.measurements
        return (
            record.id, record.account_id, record.project_id, record.api_key_id,
            record.ephemeral_key_id, record.transport, record.model, record.started_at,
            record.period or period_of(record.started_at),
            m.connect_ms, m.duration_ms, m.audio_in_ms, m.audio_out_ms, m.bytes_in,
            m.bytes_out, orjson.dumps(m.to_dict()).decode(), self.instance_id, lease_id,
        )

    async def complete_session(
        self, record: SessionRecord, verdict: Verdict, *, settle: bool = False,
        settle_from: int | None = None, pack_from: int | None = None,
        provisional: bool = False,
    ) -> MonthlyUsage:
        """Complete the session in one transaction (see ``Store`` and
        ``_complete_sync``), in one hop to the connection's thread.

        Idempotent: completing a session already completed changes nothing
        and returns the period's current usage — except the owning
        instance's final record (``provisional`` False) for a row a sweeper
        completed ``provisional``, which replaces it once (the upgrade rule).
        A session never opened is inserted completed.
        """
        ended_at = record.ended_at or time.time()
        async with self.lock:
            return await self._in_thread(
                _transact, _complete_sync, record, verdict, settle, ended_at, settle_from,
                pack_from, provisional)

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(connection, *args)`` on the connection's thread in one hop
        (``AsyncConnection.run``): the hot paths pay one thread round trip
        for a whole transaction instead of one per statement. Callers hold
        ``self.lock``."""
        return await self.db.run(fn, *args)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        row = await self._one(f"SELECT {_SESSION_COLS} FROM sessions WHERE id = ?", (session_id,))
        return _session(row) if row else None

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
            f"SELECT {_SESSION_COLS} FROM sessions WHERE {' AND '.join(clauses)}"
            " ORDER BY started_at DESC, id DESC LIMIT ?", (*params, max(0, limit)))
        return [_session(r) for r in rows]

    async def count_sessions(self, account_id: str, filters: SessionFilter | None = None) -> int:
        clauses, params = self._where(account_id, filters)
        row = await self._one(
            f"SELECT COUNT(*) FROM sessions WHERE {' AND '.join(clauses)}", tuple(params))
        return int(row[0])

    # ------------------------------------------------------------ instances

    async def register_instance(self, instance_id: str, host: str, pid: int,
                                now: float) -> tuple[int, list[Orphan]]:
        """Record this process as ``instance_id`` under a new epoch (Unix ms
        of ``now``, or the previous epoch + 1 if larger) and open sessions
        under it from now on; returns (epoch, the sessions still active
        under that id with their last checkpoints), not completed (see
        ``Store``)."""
        def register(conn: sqlite3.Connection) -> tuple[int, list[Orphan]]:
            row = conn.execute("SELECT epoch FROM instances WHERE id = ?",
                               (instance_id,)).fetchone()
            epoch = max(int(now * 1000), (int(row[0]) + 1) if row else 1)
            conn.execute(
                f"INSERT INTO instances ({_INSTANCE_COLS}) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,"
                " started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,"
                " epoch = excluded.epoch",
                (instance_id, host, pid, now, now, epoch))
            return epoch, _orphans_sync(conn, "s.instance_id = ?", (instance_id,))

        async with self.lock:
            result: tuple[int, list[Orphan]] = await self._in_thread(_transact, register)
        self.instance_id = instance_id
        return result

    async def heartbeat(self, instance_id: str, epoch: int, now: float) -> bool:
        """Refresh the heartbeat of the instance's row of ``epoch`` (one
        UPDATE); False when there is none: declared dead, never re-created."""
        return await self._write("UPDATE instances SET heartbeat_at = ? WHERE id = ? AND epoch = ?",
                                 (now, instance_id, epoch)) > 0

    async def checkpoint_sessions(self, instance_id: str,
                                  sessions: list[tuple[str, Measurements]], now: float) -> int:
        """Write the live sessions' measurements as of ``now`` (one
        executemany in one transaction; see ``Store``); how many rows."""
        if not sessions:
            return 0
        rows = [(orjson.dumps(m.to_dict()).decode(), m.connect_ms, m.duration_ms, m.audio_in_ms,
                 m.audio_out_ms, m.bytes_in, m.bytes_out, now, session_id, instance_id)
                for session_id, m in sorted(sessions, key=lambda s: s[0])]  # one lock order
        async with self.lock:
            count: int = await self._in_thread(_checkpoint_sync, rows)
        return count

    async def unregister_instance(self, instance_id: str, epoch: int | None = None) -> None:
        if epoch is None:
            await self._write("DELETE FROM instances WHERE id = ?", (instance_id,))
        else:
            await self._write("DELETE FROM instances WHERE id = ? AND epoch = ?",
                              (instance_id, epoch))
        if self.instance_id == instance_id:
            self.instance_id = None

    async def list_instances(self) -> list[Instance]:
        """Every registered instance, oldest start first."""
        rows = await self.db.execute_fetchall(
            f"SELECT {_INSTANCE_COLS} FROM instances ORDER BY started_at, id")
        return [Instance(*r) for r in rows]

    async def expired_instances(self, heartbeat_before: float) -> list[Instance]:
        rows = await self.db.execute_fetchall(
            f"SELECT {_INSTANCE_COLS} FROM instances WHERE heartbeat_at < ?"
            " ORDER BY heartbeat_at, id", (heartbeat_before,))
        return [Instance(*r) for r in rows]

    async def sweep_instance(self, instance_id: str, epoch: int, now: float, *,
                             heartbeat_before: float) -> list[Orphan]:
        """Delete a dead instance's row of ``epoch`` if its heartbeat is
        still older than ``heartbeat_before`` and return its active
        sessions with their checkpoints, in one transaction (see ``Store``)."""
        def sweep(conn: sqlite3.Connection) -> list[Orphan]:
            gone = conn.execute(
                "DELETE FROM instances WHERE id = ? AND epoch = ? AND heartbeat_at < ?",
                (instance_id, epoch, heartbeat_before)).rowcount
            return _orphans_sync(conn, "s.instance_id = ?", (instance_id,)) if gone else []

        async with self.lock:
            result: list[Orphan] = await self._in_thread(_transact, sweep)
        return result

    async def orphaned_sessions(self, before: float) -> list[Orphan]:
        """Active sessions of an instance with no row whose last sign of
        life is older than ``before`` (see ``Store``)."""
        where = ("s.instance_id IS NOT NULL AND COALESCE(s.checkpoint_at, s.started_at) < ?"
                 " AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = s.instance_id)")
        async with self.lock:
            result: list[Orphan] = await self._in_thread(_orphans_sync, where, (before,))
        return result

    async def abandon_active_sessions(self, verdict: Verdict, now: float,
                                      started_before: float | None = None) -> int:
        """Complete every ``active`` session (left by a process that died)
        with ``verdict``'s reason and rule, ending at ``now``; with
        ``started_before`` (Unix s) only those started before it. They are
        recorded and counted as not billable whatever ``verdict.billable``
        says: nothing was measured to justify a charge. Returns how many
        (0 for sessions another process completed meanwhile: one
        transaction)."""
        not_billable = Verdict(False, verdict.reason, verdict.rule)
        where = "status = 'active'" + ("" if started_before is None else " AND started_at < ?")
        params: tuple[Any, ...] = () if started_before is None else (started_before,)

        def abandon(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                f"SELECT {_SESSION_COLS} FROM sessions WHERE {where}", params).fetchall()
            for row in rows:
                _complete_sync(conn, _session(row), not_billable, False, now)
            return len(rows)

        async with self.lock:
            return await self._in_thread(_transact, abandon)

    # ------------------------------------------------------------ usage

    async def _usage(self, account_id: str, period: str) -> MonthlyUsage:
        row = await self._one(
            f"SELECT {_USAGE_COLS} FROM monthly_usage WHERE account_id = ? AND period = ?",
            (account_id, period))
        return _usage_of(account_id, period, row) if row else MonthlyUsage(account_id, period)

    async def get_usage(self, account_id: str, period: str) -> MonthlyUsage:
        """The account's usage in ``period`` (zeros if none)."""
        return await self._usage(account_id, period)

    async def list_usage(self, account_id: str) -> list[MonthlyUsage]:
        """Every period with usage, newest first."""
        rows = await self.db.execute_fetchall(
            f"SELECT period, {_USAGE_COLS} FROM monthly_usage WHERE account_id = ?"
            " ORDER BY period DESC", (account_id,))
        return [_usage_of(account_id, r[0], r[1:]) for r in rows]

    # ------------------------------------------------------------ settlement outbox

    async def due_outbox(self, now: float, limit: int = 100) -> list[OutboxItem]:
        """Items with ``next_attempt_at <= now``, oldest first."""
        rows = await self.db.execute_fetchall(
            f"SELECT {_OUTBOX_COLS} FROM settlement_outbox WHERE next_attempt_at <= ?"
            " ORDER BY created_at, session_id LIMIT ?", (now, limit))
        return [OutboxItem(*r) for r in rows]

    async def claim_outbox(self, now: float, until: float, limit: int = 100) -> list[OutboxItem]:
        """Take up to ``limit`` items due at ``now``, oldest first, for
        sending until ``until``: read and moved in one ``BEGIN IMMEDIATE``
        transaction (SQLite admits one writer at a time, across processes),
        so every item goes to one caller; returned as they were before."""
        def claim(conn: sqlite3.Connection) -> list[OutboxItem]:
            rows = conn.execute(
                f"SELECT {_OUTBOX_COLS} FROM settlement_outbox WHERE next_attempt_at <= ?"
                " ORDER BY created_at, session_id LIMIT ?", (now, limit)).fetchall()
            conn.executemany(
                "UPDATE settlement_outbox SET next_attempt_at = ? WHERE session_id = ?",
                [(until, r[0]) for r in rows])
            return [OutboxItem(*r) for r in rows]

        async with self.lock:
            items: list[OutboxItem] = await self._in_thread(_transact, claim)
        return items

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
                f"INSERT INTO session_packs ({_PACK_COLS}) VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?)"
                " ON CONFLICT (ref) DO NOTHING",
                (new_id("pack"), account_id, catalog_pack, sessions, price_cents, source, ref,
                 purchased_at, pack_expiry(purchased_at)))
            created = cursor.rowcount == 1
        row = await self._one(f"SELECT {_PACK_COLS} FROM session_packs WHERE ref = ?", (ref,))
        return _pack(row), created

    async def list_packs(self, account_id: str) -> list[AccountPack]:
        """Every pack the account ever held, newest purchase first."""
        rows = await self.db.execute_fetchall(
            f"SELECT {_PACK_COLS} FROM session_packs WHERE account_id = ?"
            " ORDER BY purchased_at DESC, id DESC", (account_id,))
        return [_pack(r) for r in rows]

    async def pack_balance(self, account_id: str, period: str, now: float) -> PackBalance:
        """The account's packs as they count in ``period`` at ``now``
        (``voxgate.models.packs.pack_balance``)."""
        def read(conn: sqlite3.Connection) -> PackBalance:
            used = conn.execute(
                "SELECT COUNT(*) FROM pack_sessions WHERE account_id = ? AND period = ?",
                (account_id, period)).fetchone()
            return pack_balance(_live_packs_sync(conn, account_id, now), int(used[0]), now)

        # both reads in one thread hop: this runs on every admission
        result: PackBalance = await self.db.run(read)
        return result

    async def expire_packs(self, now: float) -> list[AccountPack]:
        """Mark the packs whose 30 days are over at ``now`` as expired; returns
        those this call marked (each is returned once, by one caller)."""
        async with self.transaction() as db:
            cursor = await db.execute(
                f"UPDATE session_packs SET expired_at = ? WHERE expires_at <= ?"
                f" AND expired_at IS NULL RETURNING {_PACK_COLS}", (now, now))
            rows = await cursor.fetchall()
        return [_pack(r) for r in rows]

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

"""The schema on both databases: after every migration a fresh SQLite and a
fresh PostgreSQL database have the same tables, columns (types
normalized), keys, indexes and triggers; every hot query is served by an
index (``EXPLAIN QUERY PLAN`` on SQLite, ``EXPLAIN`` with
``enable_seqscan = off`` on PostgreSQL); ``users.email`` is unique and
looked up ignoring case on both; and the migration runner keeps checksums,
refuses a changed migration at start, runs under its own lock with a
``lock_timeout`` on PostgreSQL, and is driven by ``voxgate migrate``."""

from __future__ import annotations

import asyncio
import re
import shutil
import sqlite3
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import PG_URL, drop_store, open_store
from voxgate.store.dialects.postgresql import MIGRATION_LOCK_KEY, WRITE_LOCK_KEY, translate
from voxgate.store.migrate import (
    MIGRATIONS_DIR,
    PG_MIGRATIONS_DIR,
    ChecksumMismatch,
    MigrationError,
    PendingMigrations,
    load_migrations,
)
from voxgate.store.queries.jobs import PRUNABLE
from voxgate.store.queries.web import WebDB
from voxgate.store.sql import PostgresStore, SQLiteStore, SQLStore

# ---------------------------------------------------------------- schema of each database

_TYPES = {"integer": "integer", "bigint": "integer", "smallint": "integer", "int": "integer",
          "real": "real", "double precision": "real", "text": "text", "blob": "blob",
          "bytea": "blob"}


def _type(declared: str) -> str:
    return _TYPES.get(declared.strip().lower(), declared.strip().lower())


def _expr(text: str | None) -> str | None:
    """An index's column list, predicate or a default as one comparable
    string: lower case, PostgreSQL's casts, spaces and parentheses dropped."""
    if text is None:
        return None
    text = re.sub(r"::[a-z ]+?(?=[^a-z ]|$)", "", text.lower())
    return re.sub(r"[\s()]", "", text)


def _index_parts(definition: str) -> tuple[str, str | None]:
    """(columns, predicate) of a ``CREATE [UNIQUE] INDEX … ON t (…) [WHERE …]``."""
    definition = " ".join(definition.split())
    head, _, where = definition.partition(" WHERE ")
    columns = head[head.index("(", head.index(" ON ")) + 1:head.rindex(")")]
    return _expr(columns) or "", _expr(where) if where else None


@dataclass
class Schema:
    columns: dict[str, dict[str, tuple[str, bool, str | None]]] = field(default_factory=dict)
    primary_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    uniques: set[tuple[str, tuple[str, ...]]] = field(default_factory=set)
    indexes: dict[str, tuple[str, bool, str, str | None]] = field(default_factory=dict)
    foreign_keys: set[tuple[str, str, str, str]] = field(default_factory=set)
    triggers: set[tuple[str, str]] = field(default_factory=set)


def sqlite_schema(path: Path) -> Schema:
    """Tables (name → column → (type, not null, default)), keys, named
    indexes (name → (table, unique, columns, predicate)), foreign keys and
    triggers of the SQLite database at ``path``."""
    schema = Schema()
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        for table in tables:
            info = conn.execute(f"PRAGMA table_info({table})").fetchall()
            schema.columns[table] = {
                name: (_type(decl), bool(notnull) or pk > 0, _expr(default))
                for _, name, decl, notnull, default, pk in info}
            schema.primary_keys[table] = tuple(r[1] for r in sorted(info, key=lambda r: r[5])
                                               if r[5] > 0)
            for _, name, unique, origin, _partial in conn.execute(f"PRAGMA index_list({table})"):
                columns = tuple(r[2] for r in conn.execute(f"PRAGMA index_info({name})"))
                if origin == "u":
                    schema.uniques.add((table, columns))
                elif origin == "c":
                    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?",
                                       (name,)).fetchone()[0]
                    schema.indexes[name] = (table, bool(unique), *_index_parts(sql))
            for row in conn.execute(f"PRAGMA foreign_key_list({table})"):
                schema.foreign_keys.add((table, row[3], row[2], row[4]))
        schema.triggers = {(r[0], r[1]) for r in conn.execute(
            "SELECT tbl_name, name FROM sqlite_master WHERE type = 'trigger'")}
    finally:
        conn.close()
    return schema


def pg_connect(schema: str) -> psycopg.Connection:
    return psycopg.connect(PG_URL, autocommit=True, options=f"-c search_path={schema}")


def pg_schema(schema: str) -> Schema:
    """``sqlite_schema`` for the PostgreSQL schema ``schema`` of PG_URL."""
    out = Schema()
    with pg_connect(schema) as conn:
        for table, column, data_type, nullable, default in conn.execute(
                "SELECT table_name, column_name, data_type, is_nullable, column_default"
                " FROM information_schema.columns WHERE table_schema = current_schema()"):
            out.columns.setdefault(table, {})[column] = (_type(data_type), nullable == "NO",
                                                         _expr(default))
        keys: dict[tuple[str, str, str], list[tuple[int, str]]] = {}
        for table, kind, name, column, position in conn.execute(
                "SELECT tc.table_name, tc.constraint_type, tc.constraint_name, kcu.column_name,"
                " kcu.ordinal_position FROM information_schema.table_constraints tc"
                " JOIN information_schema.key_column_usage kcu"
                "  ON kcu.constraint_schema = tc.constraint_schema"
                "  AND kcu.constraint_name = tc.constraint_name"
                " WHERE tc.table_schema = current_schema()"
                " AND tc.constraint_type IN ('PRIMARY KEY', 'UNIQUE')"):
            keys.setdefault((table, kind, name), []).append((position, column))
        for table in out.columns:
            out.primary_keys[table] = ()
        for (table, kind, _), columns in keys.items():
            names = tuple(c for _, c in sorted(columns))
            if kind == "PRIMARY KEY":
                out.primary_keys[table] = names
            else:
                out.uniques.add((table, names))
        for name, table, unique, definition in conn.execute(
                "SELECT i.relname, t.relname, x.indisunique, pg_get_indexdef(x.indexrelid)"
                " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
                " JOIN pg_class t ON t.oid = x.indrelid"
                " JOIN pg_namespace n ON n.oid = t.relnamespace"
                " WHERE n.nspname = current_schema()"
                " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)"):
            out.indexes[name] = (table, unique, *_index_parts(definition))
        for table, column, ref_table, ref_column in conn.execute(
                "SELECT tc.table_name, kcu.column_name, ccu.table_name, ccu.column_name"
                " FROM information_schema.table_constraints tc"
                " JOIN information_schema.key_column_usage kcu"
                "  ON kcu.constraint_schema = tc.constraint_schema"
                "  AND kcu.constraint_name = tc.constraint_name"
                " JOIN information_schema.constraint_column_usage ccu"
                "  ON ccu.constraint_schema = tc.constraint_schema"
                "  AND ccu.constraint_name = tc.constraint_name"
                " WHERE tc.table_schema = current_schema() AND tc.constraint_type = 'FOREIGN KEY'"):
            out.foreign_keys.add((table, column, ref_table, ref_column))
        out.triggers = {(r[0], r[1]) for r in conn.execute(
            "SELECT event_object_table, trigger_name FROM information_schema.triggers"
            " WHERE trigger_schema = current_schema()")}
    return out


@pytest.fixture
async def both(tmp_path):
    """A fresh SQLite store and a fresh PostgreSQL store (own schema), migrated."""
    sqlite = await open_store("sqlite", tmp_path)
    pg = await open_store("postgresql", tmp_path)
    yield sqlite, pg
    await drop_store(pg)
    await sqlite.close()


async def test_sqlite_and_postgresql_schemas_match(both):
    sqlite, pg = both
    assert (await sqlite.applied_migrations())[-1] == (await pg.applied_migrations())[-1]
    lite, post = sqlite_schema(sqlite.dialect.path), pg_schema(pg.dialect.schema)
    assert sorted(lite.columns) == sorted(post.columns)
    for table in lite.columns:
        assert lite.columns[table] == post.columns[table], table
        assert lite.primary_keys[table] == post.primary_keys[table], table
    assert lite.uniques == post.uniques
    assert lite.indexes == post.indexes
    assert lite.foreign_keys == post.foreign_keys
    assert lite.triggers == post.triggers
    # what the normalization keeps: a few facts checked by hand
    assert lite.indexes["users_email_lower"] == ("users", True, "loweremail", None)
    assert lite.indexes["sessions_active"][3] == "status='active'"
    assert lite.columns["sessions"]["started_at"] == ("real", True, None)
    assert lite.columns["schema_migrations"]["checksum"] == ("text", False, None)


# ---------------------------------------------------------------- hot queries use an index

# (where it runs, SQL, parameters, the indexes that serve it: PostgreSQL's
# names; SQLite's automatic indexes are named as PostgreSQL names them)
HOT_QUERIES: list[tuple[str, str, tuple[Any, ...], set[str]]] = [
    ("session path: api key lookup",
     "SELECT id FROM api_keys WHERE key_hash = ?", ("h",), {"api_keys_key_hash_key"}),
    ("session path: ephemeral key lookup",
     "SELECT id FROM ephemeral_keys WHERE key_hash = ?", ("h",), {"ephemeral_keys_key_hash_key"}),
    ("session path: usage of an account's period",
     "SELECT sessions FROM monthly_usage WHERE account_id = ? AND period = ?", ("a", "2026-01"),
     {"monthly_usage_pkey"}),
    ("session path: live add-on packs",
     "SELECT id FROM session_packs WHERE account_id = ? AND purchased_at <= ?", ("a", 1.0),
     {"session_packs_account"}),
    ("session path: sessions a pack paid for",
     "SELECT COUNT(*) FROM pack_sessions WHERE account_id = ? AND period = ?", ("a", "2026-01"),
     {"pack_sessions_period"}),
    ("instances: an instance's active sessions",
     "SELECT id FROM sessions WHERE status = 'active' AND instance_id = ?", ("i",),
     {"sessions_instance_active"}),
    ("jobs: stale active sessions",
     "SELECT id FROM sessions WHERE status = 'active' AND started_at < ?", (1.0,),
     {"sessions_active", "sessions_instance_active"}),
    ("dashboard: an account's sessions, newest first",
     "SELECT id FROM sessions WHERE account_id = ? AND started_at >= ?"
     " ORDER BY started_at DESC, id DESC LIMIT ?", ("a", 1.0, 20), {"sessions_account_started"}),
    ("dashboard: an account's sessions per day",
     "SELECT utc_day(started_at) AS day, COUNT(*) FROM sessions WHERE account_id = ?"
     " AND status = 'completed' AND started_at >= ? AND started_at < ? GROUP BY day",
     ("a", 1.0, 2.0), {"sessions_account_started", "sessions_account_period", "sessions_started"}),
    ("operator: accounts active since",
     "SELECT a.id FROM accounts a WHERE EXISTS (SELECT 1 FROM sessions s"
     " WHERE s.account_id = a.id AND s.started_at >= ?)", (1.0,),
     {"sessions_account_started", "sessions_started"}),
    ("operator: sessions per day since",
     "SELECT utc_day(started_at) AS day, COUNT(*) FROM sessions WHERE started_at >= ?"
     " GROUP BY day ORDER BY day", (1.0,), {"sessions_started"}),
    ("operator: a period's usage",
     "SELECT account_id, sessions FROM monthly_usage WHERE period = ?", ("2026-01",),
     {"monthly_usage_period"}),
    ("operator: plan history",
     "SELECT account_id FROM plan_changes WHERE at < ? ORDER BY at, id", (1.0,),
     {"plan_changes_at"}),
    ("operator: audit log page",
     "SELECT actor FROM audit_log WHERE at < ? ORDER BY at DESC LIMIT ?", (1.0, 200),
     {"audit_log_at"}),
    ("dashboard: user by email",
     "SELECT id FROM users WHERE lower(email) = lower(?)", ("a@example.com",),
     {"users_email_lower"}),
    ("settlement: outbox due",
     "SELECT session_id FROM settlement_outbox WHERE next_attempt_at <= ?"
     " ORDER BY created_at, session_id LIMIT ?", (1.0, 100), {"settlement_outbox_due"}),
    ("settlement: outbox of closed periods",
     "SELECT o.account_id, o.period, o.session_id FROM settlement_outbox o"
     " LEFT JOIN invoice_settlement_sessions s ON s.session_id = o.session_id"
     " WHERE s.session_id IS NULL AND o.period < ?"
     " ORDER BY o.account_id, o.period, o.created_at, o.session_id LIMIT ?", ("2026-01", 1000),
     {"settlement_outbox_period"}),
    ("settlement: invoice settlements due",
     "SELECT id FROM invoice_settlements WHERE status = 'pending' AND next_attempt_at <= ?"
     " ORDER BY created_at, id", (1.0,), {"invoice_settlements_due"}),
    ("billing: account of a Stripe customer",
     "SELECT id FROM accounts WHERE stripe_customer_id = ?", ("cus_1",),
     {"accounts_stripe_customer"}),
    ("billing: Stripe events to process",
     "SELECT id, payload FROM stripe_events WHERE processed_at IS NULL"
     " ORDER BY received_at, id LIMIT ?", (50,), {"stripe_events_pending"}),
    ("billing: emails due",
     "SELECT id FROM email_outbox WHERE sent_at IS NULL AND next_attempt_at <= ?"
     " ORDER BY id LIMIT ?", (1.0, 50), {"email_outbox_unsent"}),
    ("billing: webhooks due",
     "SELECT id FROM webhook_outbox WHERE delivered_at IS NULL AND next_attempt_at <= ?"
     " ORDER BY id LIMIT ?", (1.0, 50), {"webhook_outbox_undelivered"}),
    ("jobs: add-on packs to expire",
     "UPDATE session_packs SET expired_at = ? WHERE expires_at <= ? AND expired_at IS NULL",
     (1.0, 1.0), {"session_packs_expiry"}),
    ("dashboard: expired cookie sessions",
     "DELETE FROM web_sessions WHERE expires_at < ?", (1.0,), {"web_sessions_expires"}),
    ("dashboard: expired sign-in challenges",
     "DELETE FROM signin_challenges WHERE expires_at < ?", (1.0,),
     {"signin_challenges_expires"}),
    ("housekeeping: expired ephemeral keys",
     PRUNABLE["ephemeral_keys"], (1.0, 500), {"ephemeral_keys_expires"}),
    ("housekeeping: sent emails", PRUNABLE["email_outbox"], (1.0, 500), {"email_outbox_sent"}),
    ("housekeeping: delivered webhooks",
     PRUNABLE["webhook_outbox"], (1.0, 500), {"webhook_outbox_delivered"}),
    ("housekeeping: processed Stripe event payloads",
     PRUNABLE["stripe_events"], (1.0, 500), {"stripe_events_processed"}),
]


def _sqlite_index_names(conn: sqlite3.Connection) -> dict[str, str]:
    """SQLite's automatic index names → PostgreSQL's for the same key."""
    names = {}
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        for _, name, _, origin, _ in conn.execute(f"PRAGMA index_list({table})"):
            columns = [r[2] for r in conn.execute(f"PRAGMA index_info({name})")]
            if origin == "pk":
                names[name] = f"{table}_pkey"
            elif origin == "u":
                names[name] = f"{table}_{'_'.join(columns)}_key"
    return names


async def sqlite_plan_indexes(store: SQLStore, sql: str, params: tuple[Any, ...]) -> set[str]:
    """The indexes SQLite searches for ``sql`` (``EXPLAIN QUERY PLAN``)."""
    rows = await store.db.execute_fetchall(f"EXPLAIN QUERY PLAN {sql}", params)
    conn = sqlite3.connect(store.dialect.path)
    try:
        auto = _sqlite_index_names(conn)
    finally:
        conn.close()
    used = set()
    for row in rows:
        detail = row[-1]
        m = re.search(r"^(?:SEARCH|SCAN) (\w+)(?: AS \w+)? USING (?:COVERING )?INDEX (\w+)", detail)
        if m:
            used.add(auto.get(m.group(2), m.group(2)))
        m = re.search(r"^SEARCH (\w+)(?: AS \w+)? USING (?:INTEGER )?PRIMARY KEY", detail)
        if m:
            used.add(f"{m.group(1)}_pkey")
    return used


def pg_plan_indexes(schema: str, sql: str, params: tuple[Any, ...]) -> tuple[set[str], set[str]]:
    """(indexes scanned, tables read whole) in PostgreSQL's plan for ``sql``
    with sequential scans disabled (so an index is used whenever one
    serves the predicate)."""
    with pg_connect(schema) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = conn.execute(f"EXPLAIN (FORMAT JSON) {translate(sql)}",  # type: ignore[arg-type]
                            params).fetchone()[0]
    used: set[str] = set()
    seq: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        if "Index Name" in node:
            used.add(node["Index Name"])
        if node.get("Node Type") == "Seq Scan":
            seq.add(node["Relation Name"])
        for child in node.get("Plans", ()):
            walk(child)

    walk(plan[0]["Plan"])
    return used, seq


async def test_every_hot_query_uses_an_index(both):
    """Each of ``HOT_QUERIES`` is served by one of its indexes on both
    databases, and PostgreSQL reads no table whole for it."""
    sqlite, pg = both
    missing = []
    for what, sql, params, indexes in HOT_QUERIES:
        used = await sqlite_plan_indexes(sqlite, sql, params)
        if not used & indexes:
            missing.append(f"SQLite: {what} uses {sorted(used) or 'no index'}")
        used, seq = pg_plan_indexes(pg.dialect.schema, sql, params)
        if not used & indexes or seq:
            missing.append(f"PostgreSQL: {what} uses {sorted(used) or 'no index'}"
                           + (f", reads {sorted(seq)} whole" if seq else ""))
    assert missing == []


# ---------------------------------------------------------------- users.email ignoring case

@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_user_email_is_unique_and_found_ignoring_case(tmp_path, kind):
    store = await open_store(kind, tmp_path)
    try:
        web = WebDB(store, b"k" * 32)
        account = await store.create_account("owner@example.com", "starter")
        user = await web.create_user(account.id, "  Ada@Example.COM ", "hash")
        assert user.email == "ada@example.com"
        # a row written with capitals (before 0012, or by hand) is found by any case
        async with store.transaction() as db:
            await db.execute(
                "INSERT INTO users (id, account_id, email, password_hash, role, created_at)"
                " VALUES ('user_bob', ?, 'Bob@Example.com', 'h', 'member', 0)", (account.id,))
        for email in ("bob@example.com", "BOB@EXAMPLE.COM", "Bob@Example.com"):
            assert (await web.user_by_email(email)).id == "user_bob"
        assert (await web.user_by_email("ADA@example.com")).id == user.id
        # and a second user whose email differs only in case is refused
        with pytest.raises((sqlite3.IntegrityError, psycopg.errors.UniqueViolation)):
            async with store.transaction() as db:
                await db.execute(
                    "INSERT INTO users (id, account_id, email, password_hash, role, created_at)"
                    " VALUES ('user_ada2', ?, 'ADA@example.com', 'h', 'member', 0)",
                    (account.id,))
        assert await web.user_by_email("nobody@example.com") is None
    finally:
        await drop_store(store)


# ---------------------------------------------------------------- checksums

def _copy_migrations(source: Path, to: Path) -> Path:
    to.mkdir()
    for migration in load_migrations(source):
        shutil.copy(migration.path, to)
    return to


def _store(kind: str, tmp_path: Path, migrations: Path, schema: str) -> SQLStore:
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "v.db", migrations_dir=migrations)
    return PostgresStore(PG_URL, schema=schema, migrations_dir=migrations)


async def _drop_schema(schema: str) -> None:
    conn = await psycopg.AsyncConnection.connect(PG_URL, autocommit=True)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_a_changed_migration_is_refused_at_start(tmp_path, kind):
    source = MIGRATIONS_DIR if kind == "sqlite" else PG_MIGRATIONS_DIR
    migrations = _copy_migrations(source, tmp_path / "migrations")
    schema = f"test_{uuid.uuid4().hex[:12]}"
    try:
        async with _store(kind, tmp_path, migrations, schema) as store:
            applied = await store.applied_migrations()
            rows = await store.db.execute_fetchall(
                "SELECT version, checksum FROM schema_migrations ORDER BY version")
            assert [r[1] for r in rows] == [m.checksum for m in load_migrations(migrations)]
        changed = load_migrations(migrations)[1]
        changed.path.write_text(changed.path.read_text() + "\n-- an innocent-looking comment\n")
        store = _store(kind, tmp_path, migrations, schema)
        with pytest.raises(ChecksumMismatch) as refused:
            await store.open()
        message = str(refused.value)
        assert "\n" not in message
        assert message.startswith(f"migration {changed.version:04d} ({changed.path.name}) was "
                                  f"changed after it was applied to this database")
        assert str(changed.path) in message
        with pytest.raises(RuntimeError):
            store.db  # noqa: B018 - the store stayed closed
        # line endings alone are not a change
        changed.path.write_bytes(changed.path.read_bytes().replace(
            b"\n-- an innocent-looking comment\n", b"").replace(b"\n", b"\r\n"))
        async with _store(kind, tmp_path, migrations, schema) as store:
            assert await store.applied_migrations() == applied
    finally:
        if kind == "postgresql":
            await _drop_schema(schema)


async def test_checksums_are_backfilled_for_migrations_applied_before_them(tmp_path):
    """A database migrated by a voxgate without checksums (no ``checksum``
    column) gets the column and its rows' checksums at the first start of
    this one; from then on a changed file is refused."""
    migrations = _copy_migrations(MIGRATIONS_DIR, tmp_path / "migrations")
    path = tmp_path / "v.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
                 " name TEXT NOT NULL, applied_at REAL NOT NULL)")
    first = load_migrations(migrations)[0]
    conn.executescript(first.path.read_text())
    conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (first.version, first.name))
    conn.close()
    async with SQLiteStore(path, migrations_dir=migrations) as store:
        rows = await store.db.execute_fetchall(
            "SELECT version, checksum FROM schema_migrations ORDER BY version")
        assert [tuple(r) for r in rows] == [(m.version, m.checksum)
                                            for m in load_migrations(migrations)]
        assert store.migrations_applied == tuple(load_migrations(migrations)[1:])
    first.path.write_text(first.path.read_text().replace("accounts", "accounts "))
    with pytest.raises(ChecksumMismatch, match=r"^migration 0001 \(0001_core.sql\)"):
        await SQLiteStore(path, migrations_dir=migrations).open()


# ---------------------------------------------------------------- auto_migrate and the lock

@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_pending_migrations_refused_without_auto_migrate(tmp_path, kind):
    source = MIGRATIONS_DIR if kind == "sqlite" else PG_MIGRATIONS_DIR
    migrations = _copy_migrations(source, tmp_path / "migrations")
    last = load_migrations(migrations)[-1]
    held = last.path.read_text()
    last.path.unlink()
    schema = f"test_{uuid.uuid4().hex[:12]}"
    try:
        async with _store(kind, tmp_path, migrations, schema):
            pass
        last.path.write_text(held)
        store = _store(kind, tmp_path, migrations, schema)
        store.auto_migrate = False
        with pytest.raises(PendingMigrations) as refused:
            await store.open()
        assert [m.version for m in refused.value.pending] == [last.version]
        assert "run `voxgate migrate` first" in str(refused.value)
        async with _store(kind, tmp_path, migrations, schema) as store:  # auto_migrate: applied
            assert store.migrations_applied == (last,)
            store.auto_migrate = False
        async with store:  # nothing pending: opens with auto_migrate off
            assert store.migrations_applied == ()
    finally:
        if kind == "postgresql":
            await _drop_schema(schema)


async def test_postgresql_migrations_take_their_own_lock_with_a_lock_timeout(tmp_path):
    """Migrations do not wait for the write lock of the session path; they
    wait for each other (the migration lock) only so long; a migration that
    needs a table live traffic holds gives up after ``lock_timeout``
    (nothing of it applied) instead of queueing that table's traffic."""
    migrations = _copy_migrations(PG_MIGRATIONS_DIR, tmp_path / "migrations")
    schema = f"test_{uuid.uuid4().hex[:12]}"
    conn = pg_connect(schema)
    try:
        async with _store("postgresql", tmp_path, migrations, schema):
            pass
        (migrations / "0998_held.sql").write_text("CREATE INDEX held_ended ON sessions(ended_at);\n")
        # live traffic: a write transaction holding the write lock and writing to sessions
        conn.execute("BEGIN")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
        conn.execute("LOCK TABLE sessions IN ROW EXCLUSIVE MODE")
        blocked = _store("postgresql", tmp_path, migrations, schema)
        blocked.dialect.migration_lock_timeout_s = 0.2
        with pytest.raises(MigrationError, match=r"^migration 0998 \(0998_held\.sql\) waited more"
                                                 r" than 0\.2 s for a lock held by live traffic"):
            await blocked.open()
        assert conn.execute("SELECT count(*) FROM schema_migrations WHERE version = 998"
                            ).fetchone()[0] == 0
        conn.execute("ROLLBACK")
        # the write lock alone does not hold a migration up
        conn.execute("BEGIN")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
        async with _store("postgresql", tmp_path, migrations, schema) as store:
            assert [m.version for m in store.migrations_applied] == [998]
        conn.execute("ROLLBACK")
        # another process migrating is waited for, only so long
        (migrations / "0999_later.sql").write_text("CREATE TABLE later (x TEXT);\n")
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        waiting = _store("postgresql", tmp_path, migrations, schema)
        waiting.dialect.migration_lock_wait_s = 0.2
        with pytest.raises(MigrationError, match="another voxgate process has been migrating"):
            await waiting.open()
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        async with _store("postgresql", tmp_path, migrations, schema) as store:
            assert [m.version for m in store.migrations_applied] == [999]
    finally:
        conn.close()
        await _drop_schema(schema)


async def test_two_stores_starting_at_once_apply_each_migration_once():
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with pg_connect(schema) as conn:  # the stores' CREATE SCHEMA IF NOT EXISTS would race
        conn.execute(f'CREATE SCHEMA "{schema}"')
    stores = [PostgresStore(PG_URL, schema=schema) for _ in range(3)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        applied = [m.version for s in stores for m in s.migrations_applied]
        assert sorted(applied) == [m.version for m in load_migrations(PG_MIGRATIONS_DIR)]
        with pg_connect(schema) as conn:  # the open stores hold no migration lock
            assert conn.execute("SELECT pg_try_advisory_lock(%s)",
                                (MIGRATION_LOCK_KEY,)).fetchone()[0] is True
    finally:
        for s in stores:
            await s.close()
        await _drop_schema(schema)


# ---------------------------------------------------------------- voxgate migrate

def test_voxgate_migrate_applies_and_checks(tmp_path, capsys, monkeypatch):
    from voxgate.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VOXGATE_DATA_DIR", str(tmp_path / "data"))
    shipped = load_migrations(MIGRATIONS_DIR)
    assert main(["migrate", "--check"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{len(shipped)} pending migration(s):"
    assert out[1:] == [f"  {m.label}" for m in shipped]
    assert main(["migrate"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"applied {m.label}" for m in shipped]
    assert main(["migrate", "--check"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"no pending migrations: the schema is at version {shipped[-1].version:04d}")
    conn = sqlite3.connect(tmp_path / "data" / "voxgate.db")
    conn.execute("UPDATE schema_migrations SET checksum = 'f00d' WHERE version = 3")
    conn.commit()
    conn.close()
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("voxgate: migration 0003 (0003_web.sql) was changed after it was "
                          "applied") and err.count("\n") == 1


def test_voxgate_serve_refuses_a_changed_migration_and_pending_ones(tmp_path):
    """At start, `voxgate serve` says in one line why it will not run: an
    applied migration whose file changed, or (``auto_migrate = false``)
    migrations pending; then exits with status 2 without serving."""
    from tests.test_cli import clean_env, voxgate

    assert voxgate("migrate", cwd=tmp_path, env=clean_env(), timeout=60).returncode == 0
    conn = sqlite3.connect(tmp_path / "data" / "voxgate.db")
    conn.execute("UPDATE schema_migrations SET checksum = 'f00d' WHERE version = 2")
    conn.commit()
    result = voxgate("serve", "--port", "0", cwd=tmp_path, env=clean_env(), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("voxgate: migration 0002 (0002_billing.sql) was changed "
                                    "after it was applied to this database")
    assert "voxgate listening" not in result.stdout
    # pending migrations with auto_migrate off
    conn.execute("DELETE FROM schema_migrations WHERE version >= 2")
    conn.commit()
    conn.close()
    result = voxgate("serve", "--port", "0", cwd=tmp_path,
                     env=clean_env(VOXGATE_AUTO_MIGRATE="false"), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "pending (0002_billing.sql," in result.stderr
    assert "run `voxgate migrate` first" in result.stderr

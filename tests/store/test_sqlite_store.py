"""The store against real SQLite files in tmp_path and a real PostgreSQL
(127.0.0.1:5432, one schema per test): every test taking ``store`` runs on
both; the migration tests are SQLite's own."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import pytest

from voxgate.models import Measurements, Reason, SessionRecord, Verdict, hash_secret, new_id
from voxgate.store.base import SessionFilter, period_of
from voxgate.store.migrate import MIGRATIONS_DIR, MigrationError, load_migrations, split_sql
from voxgate.store.sql import SQLiteStore, SQLStore

BILLABLE = Verdict(True, Reason.BILLABLE, "connected and long enough")
TOO_SHORT = Verdict(False, Reason.TOO_SHORT, "duration 900 ms < 3000 ms")
INTERRUPTED = Verdict(False, Reason.INTERRUPTED, "voxgate stopped while active")

T0 = 1_760_000_000.0  # 2025-10-09 UTC


@pytest.fixture
async def store(any_store):
    """Each store test runs on SQLite and on PostgreSQL (``tests/conftest.py``)."""
    return any_store


@pytest.fixture
async def project(store: SQLStore):
    account = await store.create_account("ada@example.com", "starter", name="Ada")
    return await store.create_project(account.id, "main")


def make_record(project, started_at: float = T0, **measured) -> SessionRecord:
    return SessionRecord(
        id=new_id("sess"), account_id=project.account_id, project_id=project.id,
        transport="websocket", started_at=started_at, model="gpt-realtime",
        measurements=Measurements(**measured),
    )


def ended(record: SessionRecord, after_s: float = 60.0) -> SessionRecord:
    record.ended_at = record.started_at + after_s
    return record


# ---------------------------------------------------------------- migrations


def test_split_sql_keeps_semicolons_in_strings_and_triggers():
    script = """
    -- a comment; with a semicolon
    CREATE TABLE t (x TEXT DEFAULT 'a;b');
    CREATE TRIGGER tr AFTER INSERT ON t BEGIN
        UPDATE t SET x = 'c;d'; DELETE FROM t WHERE 0;
    END;
    /* trailing; */
    INSERT INTO t VALUES ('no semicolon at end')
    """
    statements = split_sql(script)
    assert len(statements) == 3
    assert statements[0].endswith("DEFAULT 'a;b');")
    assert statements[1].rstrip(";").endswith("END")
    assert statements[2].rstrip(";").strip().endswith("('no semicolon at end')")


async def test_migrations_applied_once(tmp_path: Path):
    path = tmp_path / "nested" / "dir" / "v.db"
    shipped = [(m.version, m.name) for m in load_migrations(MIGRATIONS_DIR)]
    assert shipped[0] == (1, "core")
    async with SQLiteStore(path) as s:
        assert await s.applied_migrations() == shipped
    async with SQLiteStore(path) as s:  # re-open: nothing applied again
        assert await s.applied_migrations() == shipped
        rows = await s.db.execute_fetchall("SELECT COUNT(*) FROM schema_migrations")
        assert rows[0][0] == len(shipped)


async def test_a_version_8_data_directory_upgrades_in_place(tmp_path: Path):
    """A database written at version 8 (before instances) opens with the
    current store: 0009 is applied, every row is kept, its old active
    session has no instance and is left to the stale-session sweep."""
    old = tmp_path / "old-migrations"
    old.mkdir()
    for m in load_migrations(MIGRATIONS_DIR):
        if m.version <= 8:
            shutil.copy(m.path, old)
    path = tmp_path / "data" / "voxgate.db"
    key = "vg_live_version8_" + "k" * 32
    period = period_of(T0)
    async with SQLiteStore(path, migrations_dir=old) as s:
        # rows as a version-8 voxgate wrote them (today's store writes columns
        # later migrations added, so it cannot write into this schema itself)
        for sql, params in (
            ("INSERT INTO accounts (id, email, plan_id, created_at) VALUES (?, ?, ?, ?)",
             ("acct_v8", "ada@example.com", "starter", T0)),
            ("INSERT INTO projects (id, account_id, name, created_at) VALUES (?, ?, ?, ?)",
             ("proj_v8", "acct_v8", "p", T0)),
            ("INSERT INTO api_keys (id, project_id, prefix, key_hash, created_at)"
             " VALUES (?, ?, ?, ?, ?)", ("key_v8", "proj_v8", key[:16], hash_secret(key), T0)),
            ("INSERT INTO sessions (id, account_id, project_id, transport, model, status,"
             " started_at, ended_at, period, billable, reason, rule, duration_ms)"
             " VALUES (?, ?, ?, 'websocket', 'm', 'completed', ?, ?, ?, 1, 'billable', 'r', 60000)",
             ("sess_done", "acct_v8", "proj_v8", T0, T0 + 60, period)),
            ("INSERT INTO monthly_usage (account_id, period, sessions, billable_sessions)"
             " VALUES (?, ?, 1, 1)", ("acct_v8", period)),
            # as the version-8 store opened it: no instance, no lease
            ("INSERT INTO sessions (id, account_id, project_id, transport, model, status,"
             " started_at, period) VALUES (?, ?, ?, 'websocket', 'm', 'active', ?, ?)",
             ("sess_live", "acct_v8", "proj_v8", T0 + 5, period)),
        ):
            await s.db.execute(sql, params)
        assert (await s.applied_migrations())[-1] == (8, "jobs")
    async with SQLiteStore(path) as s:
        latest = load_migrations(MIGRATIONS_DIR)[-1]
        assert (await s.applied_migrations())[-1] == (latest.version, latest.name)
        assert (await s.find_api_key(key))[2].id == "acct_v8"
        assert (await s.get_session("sess_done")).reason == "billable"
        assert (await s.get_usage("acct_v8", period)).billable_sessions == 1
        assert (await s.register_instance("new", "host", 1, T0 + 10))[1] == []
        assert (await s.get_session("sess_live")).status == "active"
        rows = await s.db.execute_fetchall("SELECT instance_id, lease_id FROM sessions")
        assert {tuple(r) for r in rows} == {(None, None)}


async def test_postgresql_schema_is_at_the_sqlite_version(any_store):
    """Both databases end at the same schema version (migrations come in pairs)."""
    sqlite_latest = load_migrations(MIGRATIONS_DIR)[-1].version
    assert (await any_store.applied_migrations())[-1][0] == sqlite_latest


async def test_later_migration_file_is_applied(tmp_path: Path):
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    shutil.copy(MIGRATIONS_DIR / "0001_core.sql", migrations)
    path = tmp_path / "v.db"
    async with SQLiteStore(path, migrations_dir=migrations) as s:
        assert await s.applied_migrations() == [(1, "core")]
    (migrations / "0002_billing.sql").write_text(
        "-- billing; tables\n"
        "CREATE TABLE invoices (id TEXT PRIMARY KEY, note TEXT DEFAULT 'x;y');\n"
        "INSERT INTO invoices (id) VALUES ('in_1');\n"
    )
    (migrations / "README.txt").write_text("not a migration")
    async with SQLiteStore(path, migrations_dir=migrations) as s:
        assert await s.applied_migrations() == [(1, "core"), (2, "billing")]
        rows = await s.db.execute_fetchall("SELECT id, note FROM invoices")
        assert [tuple(r) for r in rows] == [("in_1", "x;y")]


async def test_failed_migration_rolls_back_and_is_not_recorded(tmp_path: Path):
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    shutil.copy(MIGRATIONS_DIR / "0001_core.sql", migrations)
    (migrations / "0002_broken.sql").write_text(
        "CREATE TABLE half (id TEXT);\nCREATE TABLE accounts (id TEXT);\n")
    s = SQLiteStore(tmp_path / "v.db", migrations_dir=migrations)
    with pytest.raises(MigrationError, match=r"^migration 0002 \(0002_broken\.sql\) failed, "
                                             r"nothing of it was applied: .*already exists"):
        await s.open()
    con = sqlite3.connect(tmp_path / "v.db")
    try:
        versions = [r[0] for r in con.execute("SELECT version FROM schema_migrations")]
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        con.close()
    assert versions == [1]
    assert "half" not in tables


async def test_pragmas(tmp_path: Path):
    async with SQLiteStore(tmp_path / "voxgate.db") as store:
        assert (await store.db.execute_fetchall("PRAGMA journal_mode"))[0][0] == "wal"
        assert (await store.db.execute_fetchall("PRAGMA foreign_keys"))[0][0] == 1
        assert (await store.db.execute_fetchall("PRAGMA synchronous"))[0][0] == 1  # NORMAL


async def test_ping(store):
    await store.ping()
    await store.close()
    with pytest.raises(RuntimeError, match="not open"):
        await store.ping()
    await store.open()


async def test_transaction_rolls_back_on_error(store: SQLStore):
    with pytest.raises(RuntimeError):
        async with store.transaction() as db:
            await db.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")
            raise RuntimeError("boom")
    assert await store.get_meta("k") is None
    async with store.transaction() as db:
        await db.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")
    assert await store.get_meta("k") == "v"


# ---------------------------------------------------------------- accounts, projects, keys


async def test_accounts(store: SQLStore):
    a = await store.create_account("ada@example.com", "free", name="Ada")
    b = await store.create_account("bob@example.com", "starter")
    assert await store.get_account(a.id) == a
    assert await store.get_account_by_email("bob@example.com") == b
    assert await store.get_account("acct_nope") is None
    assert [x.id for x in await store.list_accounts()] == [a.id, b.id]
    updated = await store.update_account(a.id, plan_id="pro", status="past_due",
                                         past_due_since=T0, stripe_customer_id="cus_1")
    assert (updated.plan_id, updated.status, updated.past_due_since,
            updated.stripe_customer_id) == ("pro", "past_due", T0, "cus_1")
    assert await store.get_account(a.id) == updated
    with pytest.raises(KeyError):
        await store.update_account("acct_nope", plan_id="pro")
    with pytest.raises(TypeError):
        await store.update_account(a.id, created_at=0)


async def test_projects_and_delete_revokes_keys(store: SQLStore, project):
    other = await store.create_project(project.account_id, "second")
    assert await store.get_project(project.id) == project
    assert [p.id for p in await store.list_projects(project.account_id)] == [project.id, other.id]
    key, plaintext = await store.create_api_key(other.id, "ci")
    await store.delete_project(other.id)
    assert await store.get_project(other.id) is None
    assert [p.id for p in await store.list_projects(project.account_id)] == [project.id]
    found = await store.find_api_key(plaintext)
    assert found is not None and found[0].revoked_at is not None


async def test_api_key_lookup_and_no_plaintext_on_disk(store: SQLStore, project):
    key, plaintext = await store.create_api_key(project.id, "server")
    assert plaintext.startswith("vg_live_")
    assert key.prefix == plaintext[:12]
    found = await store.find_api_key(plaintext)
    assert found is not None
    fkey, fproject, faccount = found
    assert (fkey.id, fproject.id, faccount.id) == (key.id, project.id, project.account_id)
    assert fkey.active and fkey.last_used_at is not None
    assert await store.find_api_key(plaintext + "x") is None
    assert [k.id for k in await store.list_api_keys(project.id)] == [key.id]

    await store.revoke_api_key(key.id)
    revoked = await store.find_api_key(plaintext)
    assert revoked is not None and not revoked[0].active

    ek, ek_plain = await store.create_ephemeral_key(project.id, {"voice": "marin"}, T0 + 60)
    if store.dialect.name == "postgresql":  # every row of the key tables, as PostgreSQL has them
        rows = await store.db.execute_fetchall(
            "SELECT (SELECT string_agg(t::text, ' ') FROM api_keys t)"
            " || (SELECT string_agg(t::text, ' ') FROM ephemeral_keys t)")
        blob = rows[0][0].encode()
        await store.close()
    else:
        await store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        await store.close()
        blob = b"".join(p.read_bytes() for p in store.dialect.path.parent.iterdir() if p.is_file())
    assert key.key_hash.encode() in blob  # the check below can fail: the file is readable
    assert plaintext.encode() not in blob
    assert plaintext[12:].encode() not in blob
    assert ek_plain.encode() not in blob
    await store.open()


async def test_last_used_written_at_most_once_a_minute(store: SQLStore, project):
    key, plaintext = await store.create_api_key(project.id)
    first = (await store.find_api_key(plaintext))[0].last_used_at
    second = (await store.find_api_key(plaintext))[0].last_used_at
    assert first is not None and second == first
    row = await store.db.execute_fetchall(
        "SELECT last_used_at FROM api_keys WHERE id = ?", (key.id,))
    assert row[0][0] == first


async def test_ephemeral_key_round_trip(store: SQLStore, project):
    api_key, _ = await store.create_api_key(project.id)
    session = {"type": "realtime", "audio": {"output": {"voice": "marin"}}, "n": [1, 2.5]}
    ek, plaintext = await store.create_ephemeral_key(project.id, session, T0 + 600, api_key.id)
    assert plaintext.startswith("ek_")
    found = await store.find_ephemeral_key(plaintext)
    assert found is not None
    fek, fproject, faccount = found
    assert fek == ek
    assert fek.session == session and fek.api_key_id == api_key.id
    assert (fproject.id, faccount.id) == (project.id, project.account_id)
    assert fek.expired(T0 + 600) and not fek.expired(T0 + 599)
    assert await store.find_ephemeral_key("ek_unknown") is None


# ---------------------------------------------------------------- sessions and usage


async def test_open_complete_usage_exact(store: SQLStore, project):
    r1 = make_record(project, duration_ms=90_000, audio_in_ms=1_500, audio_out_ms=2_500,
                     bytes_in=1_000, bytes_out=24, connected=True, connect_ms=120.0,
                     event_counts={"response.done": 2})
    await store.open_session(r1)
    active = await store.get_session(r1.id)
    assert active.status == "active" and active.period == period_of(T0) == "2025-10"
    assert active.billable is None

    usage = await store.complete_session(ended(r1), BILLABLE)
    assert (usage.period, usage.sessions, usage.billable_sessions) == ("2025-10", 1, 1)
    assert usage.minutes_used == 1.5
    assert usage.audio_seconds == 4.0
    assert usage.bytes == 1_024

    r2 = make_record(project, T0 + 10, duration_ms=900, audio_in_ms=500, bytes_in=6)
    await store.open_session(r2)
    usage = await store.complete_session(ended(r2, 1), TOO_SHORT)
    assert (usage.sessions, usage.billable_sessions) == (2, 1)
    assert usage.minutes_used == 1.5  # not billable: no minutes
    assert usage.audio_seconds == 4.5
    assert usage.bytes == 1_030
    assert await store.get_usage(project.account_id, "2025-10") == usage

    done = await store.get_session(r1.id)
    assert done.status == "completed" and done.ended_at == T0 + 60
    assert (done.billable, done.reason, done.rule) == (True, Reason.BILLABLE, BILLABLE.rule)
    assert done.settlement == "included"
    assert done.measurements == r1.measurements
    assert (await store.get_session(r2.id)).settlement == "none"


async def test_completion_is_idempotent(store: SQLStore, project):
    r = make_record(project, duration_ms=120_000, bytes_in=10)
    await store.open_session(r)
    first = await store.complete_session(ended(r), BILLABLE, settle=True)
    r.measurements.duration_ms = 999_999
    again = await store.complete_session(r, TOO_SHORT)
    assert again == first
    assert (first.sessions, first.billable_sessions, first.minutes_used) == (1, 1, 2.0)
    stored = await store.get_session(r.id)
    assert stored.reason == Reason.BILLABLE and stored.settlement == "pending"
    assert stored.measurements.duration_ms == 120_000
    assert len(await store.due_outbox(T0 + 1e6)) == 1


async def test_concurrent_completions_exact(store: SQLStore, project):
    records = [make_record(project, T0 + i, duration_ms=30_000, audio_in_ms=250, bytes_out=3)
               for i in range(50)]
    await asyncio.gather(*(store.open_session(r) for r in records))
    # each session completed twice, concurrently: still counted once
    results = await asyncio.gather(*(
        store.complete_session(ended(r), BILLABLE if i % 2 else TOO_SHORT, settle=i % 5 == 0)
        for i, r in enumerate(records + records)
    ))
    usage = await store.get_usage(project.account_id, "2025-10")
    assert usage.sessions == 50
    assert usage.billable_sessions == 25
    assert usage.minutes_used == 12.5
    assert usage.audio_seconds == 12.5
    assert usage.bytes == 150
    # the 50 first completions each saw a distinct count; repeats saw one of them
    assert {u.sessions for u in results} == set(range(1, 51))
    assert len(await store.due_outbox(T0 + 1e6)) == 10


async def test_complete_without_open_inserts(store: SQLStore, project):
    r = make_record(project, duration_ms=60_000)
    usage = await store.complete_session(ended(r), BILLABLE)
    assert usage.sessions == 1
    assert (await store.get_session(r.id)).status == "completed"


async def test_usage_by_period(store: SQLStore, project):
    october = make_record(project, T0, duration_ms=60_000)
    november = make_record(project, T0 + 40 * 86400, duration_ms=120_000)
    for r in (october, november):
        await store.open_session(r)
        await store.complete_session(ended(r), BILLABLE)
    listed = await store.list_usage(project.account_id)
    assert [(u.period, u.minutes_used) for u in listed] == [("2025-11", 2.0), ("2025-10", 1.0)]
    empty = await store.get_usage(project.account_id, "2020-01")
    assert (empty.sessions, empty.minutes_used) == (0, 0.0)


async def test_list_paginate_filter(store: SQLStore, project):
    other_project = await store.create_project(project.account_id, "other")
    stranger = await store.create_account("eve@example.com", "free")
    stranger_project = await store.create_project(stranger.id, "x")
    await store.open_session(make_record(stranger_project, T0 + 5))

    records = []
    for i in range(7):
        proj = other_project if i == 3 else project
        r = make_record(proj, T0 + (i // 2))  # pairs share started_at: ties broken by id
        await store.open_session(r)
        records.append(r)
    for r in records[:4]:
        await store.complete_session(ended(r), BILLABLE if r is not records[1] else TOO_SHORT)

    expected = sorted(records, key=lambda r: (r.started_at, r.id), reverse=True)
    page1 = await store.list_sessions(project.account_id, limit=3)
    page2 = await store.list_sessions(project.account_id, limit=3, after=page1[-1].id)
    page3 = await store.list_sessions(project.account_id, limit=3, after=page2[-1].id)
    assert [r.id for r in page1 + page2 + page3] == [r.id for r in expected]
    assert len(page3) == 1
    assert await store.list_sessions(project.account_id, after=page3[-1].id) == []
    assert await store.list_sessions(project.account_id, after="sess_unknown") == []
    assert await store.count_sessions(project.account_id) == 7

    def ids(rows):
        return {r.id for r in rows}

    cases = [
        (SessionFilter(billable=True), {records[0].id, records[2].id, records[3].id}),
        (SessionFilter(billable=False), ids(records) - {records[0].id, records[2].id,
                                                       records[3].id}),
        (SessionFilter(reason=Reason.TOO_SHORT), {records[1].id}),
        (SessionFilter(status="active"), ids(records[4:])),
        (SessionFilter(project_id=other_project.id), {records[3].id}),
        (SessionFilter(since=T0 + 1, until=T0 + 3), ids(records[2:6])),
        (SessionFilter(billable=True, project_id=project.id), {records[0].id, records[2].id}),
    ]
    for f, want in cases:
        assert ids(await store.list_sessions(project.account_id, limit=100, filters=f)) == want, f
        assert await store.count_sessions(project.account_id, f) == len(want), f

    # cursor and filter together
    billable = await store.list_sessions(project.account_id, limit=1,
                                         filters=SessionFilter(billable=True))
    rest = await store.list_sessions(project.account_id, after=billable[0].id,
                                     filters=SessionFilter(billable=True))
    billable_ids = {records[0].id, records[2].id, records[3].id}
    assert [r.id for r in billable + rest] == [r.id for r in expected if r.id in billable_ids]


async def test_abandon_active_sessions(store: SQLStore, project):
    done = make_record(project, duration_ms=60_000)
    await store.open_session(done)
    await store.complete_session(ended(done), BILLABLE)
    stale = [make_record(project, T0 + i, audio_in_ms=1000) for i in range(3)]
    for r in stale:
        await store.open_session(r)

    # a billable verdict is still recorded and counted as not billable
    assert await store.abandon_active_sessions(Verdict(True, Reason.INTERRUPTED, "stop"),
                                               T0 + 500) == 3
    assert await store.abandon_active_sessions(INTERRUPTED, T0 + 600) == 0
    for r in stale:
        s = await store.get_session(r.id)
        assert (s.status, s.billable, s.reason, s.ended_at) == (
            "completed", False, Reason.INTERRUPTED, T0 + 500)
        assert s.settlement == "none"
    usage = await store.get_usage(project.account_id, "2025-10")
    assert (usage.sessions, usage.billable_sessions, usage.minutes_used) == (4, 1, 1.0)
    assert usage.audio_seconds == 3.0
    assert (await store.get_session(done.id)).reason == Reason.BILLABLE


# ---------------------------------------------------------------- outbox and meta


async def test_outbox_due_retry_settle(store: SQLStore, project):
    a = make_record(project, T0, duration_ms=60_000)
    b = make_record(project, T0 + 10, duration_ms=60_000)
    for r in (a, b):
        await store.open_session(r)
        await store.complete_session(ended(r), BILLABLE, settle=True)
    assert (await store.get_session(a.id)).settlement == "pending"

    assert await store.due_outbox(T0 + 59) == []
    due = await store.due_outbox(T0 + 100)
    assert [i.session_id for i in due] == [a.id, b.id]
    assert (due[0].account_id, due[0].period, due[0].created_at, due[0].attempts) == (
        project.account_id, "2025-10", T0 + 60, 0)
    assert [i.session_id for i in await store.due_outbox(T0 + 100, limit=1)] == [a.id]

    await store.retry_outbox(a.id, next_attempt_at=T0 + 200, error="stripe: 503")
    due = await store.due_outbox(T0 + 100)
    assert [i.session_id for i in due] == [b.id]
    later = await store.due_outbox(T0 + 200)
    retried = next(i for i in later if i.session_id == a.id)
    assert (retried.attempts, retried.next_attempt_at, retried.last_error) == (
        1, T0 + 200, "stripe: 503")

    await store.settle_outbox(b.id, settlement="charged", ref="mev_b")
    assert [i.session_id for i in await store.due_outbox(T0 + 1e6)] == [a.id]
    settled = await store.get_session(b.id)
    assert (settled.settlement, settled.settlement_ref) == ("charged", "mev_b")


async def test_meta(store: SQLStore):
    assert await store.get_meta("cursor") is None
    await store.set_meta("cursor", "1")
    await store.set_meta("cursor", "2")
    assert await store.get_meta("cursor") == "2"


async def test_data_survives_reopen(tmp_path: Path):
    path = tmp_path / "v.db"
    async with SQLiteStore(path) as s:
        account = await s.create_account("ada@example.com", "free")
        project = await s.create_project(account.id, "p")
        r = make_record(project, duration_ms=60_000)
        await s.open_session(r)
        await s.complete_session(ended(r), BILLABLE)
    async with SQLiteStore(path) as s:
        assert (await s.get_usage(account.id, "2025-10")).sessions == 1
        assert (await s.get_session(r.id)).status == "completed"


async def test_key_lookups_cached_but_changes_seen_at_once(store: SQLStore, project):
    key, plaintext = await store.create_api_key(project.id)
    found = await store.find_api_key(plaintext)
    assert found[0].active and found[2].plan_id == "starter"
    found[2].plan_id = "mutated by a caller"  # callers get copies
    assert (await store.find_api_key(plaintext))[2].plan_id == "starter"
    await store.update_account(project.account_id, plan_id="growth")
    assert (await store.find_api_key(plaintext))[2].plan_id == "growth"
    await store.revoke_api_key(key.id)
    assert not (await store.find_api_key(plaintext))[0].active


async def test_settle_from_decided_inside_the_transaction(store: SQLStore, project):
    """A plan with 3 included sessions and an overage price: of 10 billable
    sessions completed at once, exactly the 7 beyond the included go to the
    outbox, whatever order the completions run in; a non-billable one never."""
    records = [make_record(project, T0 + i, duration_ms=30_000) for i in range(11)]
    await asyncio.gather(*(store.open_session(r) for r in records))
    await asyncio.gather(*(
        store.complete_session(ended(r), TOO_SHORT if i == 10 else BILLABLE, settle_from=3)
        for i, r in enumerate(records)))
    settled = [(await store.get_session(r.id)).settlement for r in records]
    assert sorted(settled[:10]) == ["included"] * 3 + ["pending"] * 7
    assert settled[10] == "none"
    assert len(await store.due_outbox(T0 + 10_000, limit=100)) == 7


async def test_concurrent_ephemeral_keys(store: SQLStore, project):
    minted = await asyncio.gather(*(
        store.create_ephemeral_key(project.id, {"n": i}, T0 + 600) for i in range(100)))
    for i, (key, plaintext) in enumerate(minted):
        found = await store.find_ephemeral_key(plaintext)
        assert found is not None and found[0].id == key.id and found[0].session == {"n": i}
    rows = await store.db.execute_fetchall("SELECT COUNT(*) FROM ephemeral_keys")
    assert rows[0][0] == 100


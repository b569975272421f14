"""The data layer that scales (issue 19, item 4), against real databases:
SQLite files in tmp_path and a real PostgreSQL (127.0.0.1:5432, a schema or
a database of its own per test).

- Session completion follows the same rules on both stores (SQLite's Python
  statements, PostgreSQL's one-round-trip ``voxgate_complete_session``):
  included sessions, packs in expiry order, overage into the outbox, the
  provisional upgrade rule, retried completions counted once.
- 200 concurrent completions of one account through two pools (two
  "processes") number the billable sessions exactly, without a lost update
  or a double count.
- A row lock or the cluster-wide advisory lock held elsewhere blocks
  neither heartbeats (their own lane) nor other accounts' completions.
- A transaction cancelled while waiting for BEGIN leaves nothing held.
- A served voxgate process rides out a 20 s lock on ``monthly_usage``: live
  sessions carry on, heartbeats land, every finalization lands after it.
"""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import time

import aiohttp
import orjson
import psycopg
import pytest

from tests.cluster.test_two_processes import fresh_pg  # noqa: F401 - fixture
from tests.conftest import PG_URL, SLOW, TEST_CATALOG, drop_store, open_store, same_database
from tests.served import new_key, serve, settings_env
from voxgate.models import Measurements, Reason, SessionRecord, Verdict, new_id
from voxgate.proxy.ws_relay import SESSION_ID_HEADER
from voxgate.store.base import period_of
from voxgate.store.dialects.postgresql import WRITE_LOCK_KEY
from voxgate.store.sql import PostgresStore

BILLABLE = Verdict(True, Reason.BILLABLE, "connected and long enough")
NOT_BILLABLE = Verdict(False, Reason.TOO_SHORT, "short")
LOST = Verdict(False, Reason.INTERRUPTED, "instance lost")
T0 = 1_760_000_000.0  # 2025-10-09 UTC
DAY = 86400.0
WAIT_S = 30.0 * SLOW  # bound of every wait (never a timing assertion)


def record(account_id: str, project_id: str, started_at: float = T0, *,
           duration_ms: float = 60_000, audio_ms: float = 1000, nbytes: int = 100,
           ) -> SessionRecord:
    """A finished session: ``audio_ms`` each way, ``nbytes`` each way."""
    return SessionRecord(
        id=new_id("sess"), account_id=account_id, project_id=project_id,
        transport="websocket", started_at=started_at, model="gpt-realtime",
        ended_at=started_at + 60,
        measurements=Measurements(connected=True, duration_ms=duration_ms,
                                  audio_in_ms=audio_ms, audio_out_ms=audio_ms,
                                  bytes_in=nbytes, bytes_out=nbytes))


def remeasured(rec: SessionRecord, **kw) -> SessionRecord:
    """``rec`` with other measurements (the same session's final record)."""
    fresh = record(rec.account_id, rec.project_id, rec.started_at, **kw)
    fresh.id = rec.id
    return fresh


async def until(check, what: str, timeout_s: float = WAIT_S):
    """Poll ``await check()`` until truthy (bounded); returns its value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def rows(store, sql: str, params: tuple = ()) -> list[tuple]:
    return [tuple(r) for r in await store.db.execute_fetchall(sql, params)]


# ---------------------------------------------------------------- parity


async def test_completion_rules_are_the_same_on_both_stores(any_store):
    """One scenario, asserted with the same numbers on SQLite (Python path)
    and PostgreSQL (the PL/pgSQL function): 2 included sessions, then packs
    first to expire first, then overage into the outbox; a not-billable
    session; a retried completion counted once; the provisional rule."""
    store = any_store
    account = await store.create_account("ada@example.com", "starter")
    project = await store.create_project(account.id, "p")
    late, _ = await store.grant_pack(account.id, catalog_pack="p", sessions=2, price_cents=0,
                                     source="operator", ref="late", purchased_at=T0 - 10)
    early, _ = await store.grant_pack(account.id, catalog_pack="p", sessions=1, price_cents=0,
                                      source="operator", ref="early", purchased_at=T0 - DAY)

    async def complete(rec, verdict=BILLABLE, provisional=False):
        return await store.complete_session(rec, verdict, settle_from=2, pack_from=2,
                                            provisional=provisional)

    s = [record(account.id, project.id, T0 + i) for i in range(6)]
    numbers = [(await complete(r)).billable_sessions for r in s]
    assert numbers == [1, 2, 3, 4, 5, 6]
    n1 = record(account.id, project.id, T0 + 10)
    await complete(n1, NOT_BILLABLE)
    before = await store.get_usage(account.id, period_of(T0))
    assert await complete(s[2]) == before  # a retried completion: nothing counted again

    # provisional not billable (a sweeper, from a checkpoint), then the owner's
    # final billable record: upgraded and settled as a fresh billable one
    p1 = record(account.id, project.id, T0 + 20, audio_ms=500)
    await complete(p1, LOST, provisional=True)
    after_p1 = await complete(remeasured(p1, duration_ms=120_000, audio_ms=2500, nbytes=300))
    assert (after_p1.sessions, after_p1.billable_sessions) == (8, 7)
    # provisional billable, then a final not-billable record: verdict kept,
    # measurements replaced (their difference added)
    p2 = record(account.id, project.id, T0 + 30)
    await complete(p2, BILLABLE, provisional=True)
    await complete(remeasured(p2, duration_ms=90_000, audio_ms=1500), NOT_BILLABLE)
    # provisional twice: the second changes nothing; final then provisional: nothing
    p3 = record(account.id, project.id, T0 + 40)
    await complete(p3, LOST, provisional=True)
    await complete(remeasured(p3, audio_ms=9000), BILLABLE, provisional=True)
    p4 = record(account.id, project.id, T0 + 50)
    await complete(p4, NOT_BILLABLE)
    await complete(remeasured(p4, audio_ms=9000), BILLABLE, provisional=True)
    await complete(remeasured(p1, audio_ms=9000), NOT_BILLABLE)  # final twice: once

    usage = await store.get_usage(account.id, period_of(T0))
    assert (usage.sessions, usage.billable_sessions, usage.bytes) == (11, 8, 2600)
    assert usage.minutes_used == pytest.approx(6 + 2 + 1.5)
    assert usage.audio_seconds == pytest.approx(7 * 2 + 5 + 3 + 2 + 2)
    got = {r[0]: r[1:] for r in await rows(
        store, "SELECT id, billable, settlement, provisional, reason FROM sessions")}
    expected = {s[0].id: (1, "included"), s[1].id: (1, "included"), s[2].id: (1, "pack"),
                s[3].id: (1, "pack"), s[4].id: (1, "pack"), s[5].id: (1, "pending"),
                n1.id: (0, "none"), p1.id: (1, "pending"), p2.id: (1, "pending"),
                p3.id: (0, "none"), p4.id: (0, "none")}
    assert {k: (int(v[0]), v[1]) for k, v in got.items()} == expected
    assert {k: int(v[2]) for k, v in got.items()} == {**{k: 0 for k in expected}, p3.id: 1}
    assert got[p1.id][3] == Reason.BILLABLE and got[p2.id][3] == Reason.BILLABLE
    assert {r[0] for r in await rows(store, "SELECT session_id FROM settlement_outbox")} == {
        s[5].id, p1.id, p2.id}
    assert sorted(await rows(store, "SELECT session_id, account_pack_id FROM pack_sessions")) \
        == sorted([(s[2].id, early.id), (s[3].id, late.id), (s[4].id, late.id)])
    assert {p.id: p.sessions_used for p in await store.list_packs(account.id)} == {
        early.id: 1, late.id: 2}
    m = (await store.get_session(p2.id)).measurements
    assert (m.duration_ms, m.audio_in_ms) == (90_000, 1500)


async def test_explicit_settle_and_no_usage_row(any_store):
    """``settle=True`` settles whatever the counts; a retried completion of
    a session whose period has no usage row returns zeros."""
    store = any_store
    account = await store.create_account("ada@example.com", "payg")
    project = await store.create_project(account.id, "p")
    rec = record(account.id, project.id)
    usage = await store.complete_session(rec, BILLABLE, settle=True)
    assert (usage.sessions, usage.billable_sessions) == (1, 1)
    assert (await store.get_session(rec.id)).settlement == "pending"
    await store.db.execute("DELETE FROM monthly_usage")
    again = await store.complete_session(rec, BILLABLE, settle=True)
    assert (again.sessions, again.billable_sessions) == (0, 0)


# ---------------------------------------------------------------- PostgreSQL: concurrency


@pytest.fixture
async def pg_pair(tmp_path):
    """Two PostgreSQL stores (two pools, as two processes) on one schema."""
    a = await open_store("postgresql", tmp_path)
    b = same_database(a)
    await b.open()
    yield a, b
    await b.close()
    await drop_store(a)


async def test_200_concurrent_completions_through_two_pools_count_exactly(pg_pair):
    """One account, 50 included sessions, packs of 20 and 40 sessions,
    overage after: 200 billable completions at once, half through each
    store, then every one retried. Exactly 200 numbered 1…200, 50 included,
    20 + 40 from the packs (never past their size), 90 in the outbox; the
    retries change nothing."""
    a, b = pg_pair
    account = await a.create_account("ada@example.com", "starter")
    project = await a.create_project(account.id, "p")
    first, _ = await a.grant_pack(account.id, catalog_pack="p", sessions=20, price_cents=0,
                                  source="operator", ref="first", purchased_at=T0 - DAY)
    second, _ = await a.grant_pack(account.id, catalog_pack="p", sessions=40, price_cents=0,
                                   source="operator", ref="second", purchased_at=T0 - 10)
    recs = [record(account.id, project.id, T0 + i * 0.001) for i in range(200)]
    for i, rec in enumerate(recs):
        await (a if i % 2 else b).open_session(rec, lease_id=f"lease-{i}")

    async def complete(i: int, rec: SessionRecord):
        return await (a if i % 2 else b).complete_session(
            rec, BILLABLE, settle_from=50, pack_from=50)

    usages = await asyncio.gather(*(complete(i, r) for i, r in enumerate(recs)))
    assert sorted(u.billable_sessions for u in usages) == list(range(1, 201))
    retried = await asyncio.gather(*(complete(i + 1, r) for i, r in enumerate(recs)))
    assert {(u.sessions, u.billable_sessions) for u in retried} == {(200, 200)}

    usage = await b.get_usage(account.id, period_of(T0))
    assert (usage.sessions, usage.billable_sessions) == (200, 200)
    assert usage.minutes_used == pytest.approx(200.0)
    by = dict(await rows(a, "SELECT settlement, COUNT(*) FROM sessions GROUP BY settlement"))
    assert by == {"included": 50, "pack": 60, "pending": 90}
    assert (await rows(a, "SELECT COUNT(*) FROM settlement_outbox"))[0][0] == 90
    assert {p.id: p.sessions_used for p in await a.list_packs(account.id)} == {
        first.id: 20, second.id: 40}
    assert dict(await rows(a, "SELECT account_pack_id, COUNT(*) FROM pack_sessions"
                              " GROUP BY account_pack_id")) == {first.id: 20, second.id: 40}
    assert (await rows(a, "SELECT COUNT(*) FROM sessions s JOIN settlement_outbox o"
                          " ON o.session_id = s.id WHERE s.settlement <> 'pending'"))[0][0] == 0


async def _locker() -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(PG_URL, autocommit=True)


async def test_a_held_row_lock_blocks_neither_heartbeats_nor_other_accounts(pg_pair):
    """Another connection holds one session's row lock and the cluster-wide
    advisory lock: heartbeats (their own lane) and another account's
    admission and completion go through; the locked session's completion
    lands once the lock is released."""
    store, _ = pg_pair
    epoch, _ = await store.register_instance("node-a", "host", 1, T0)
    ada = await store.create_account("ada@example.com", "starter")
    bob = await store.create_account("bob@example.com", "starter")
    ada_p = await store.create_project(ada.id, "p")
    bob_p = await store.create_project(bob.id, "p")
    held = record(ada.id, ada_p.id)
    await store.open_session(held)
    async with await _locker() as locker:
        await locker.execute(f'SET search_path TO "{store.dialect.schema}"')
        await locker.execute("BEGIN")
        await locker.execute("SELECT id FROM sessions WHERE id = %s FOR UPDATE", (held.id,))
        await locker.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
        blocked = asyncio.create_task(store.complete_session(held, BILLABLE, settle_from=0))
        with store.lane("heartbeat"):
            assert await asyncio.wait_for(store.heartbeat("node-a", epoch, T0 + 1), WAIT_S)
        other = record(bob.id, bob_p.id)
        await asyncio.wait_for(store.open_session(other), WAIT_S)
        usage = await asyncio.wait_for(store.complete_session(other, BILLABLE, settle_from=0),
                                       WAIT_S)
        assert usage.billable_sessions == 1
        same_account = record(ada.id, ada_p.id)  # its own row: not behind the held one
        usage = await asyncio.wait_for(store.complete_session(same_account, BILLABLE), WAIT_S)
        assert usage.billable_sessions == 1
        assert not blocked.done()
        await locker.execute("COMMIT")
    usage = await asyncio.wait_for(blocked, WAIT_S)
    assert usage.billable_sessions == 2
    assert (await store.get_session(held.id)).settlement == "pending"


async def test_cancelled_while_waiting_for_begin_leaves_nothing_held_postgresql(pg_pair):
    """A rooms transaction cancelled while its BEGIN waits for the advisory
    lock: once the lock is free its connection ends up idle, holding no
    lock, and the next transaction runs."""
    store, _ = pg_pair
    with store.lane("background"):
        [(pid,)] = await rows(store, "SELECT pg_backend_pid()")  # the idle one, reused next
    async with await _locker() as locker:
        await locker.execute("BEGIN")
        await locker.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))

        async def write() -> None:
            async with store.transaction() as db:
                await db.execute("INSERT INTO meta (key, value) VALUES ('x', 'cancelled')")

        task = asyncio.create_task(write())

        async def waiting() -> bool:
            cur = await locker.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
                (pid,))
            return await cur.fetchone() is not None

        await until(waiting, "the transaction to wait for the advisory lock")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await locker.execute("COMMIT")

        async def released() -> bool:
            cur = await locker.execute(
                "SELECT a.state, (SELECT COUNT(*) FROM pg_locks l WHERE l.pid = a.pid"
                " AND l.locktype = 'advisory') FROM pg_stat_activity a WHERE a.pid = %s",
                (pid,))
            return await cur.fetchone() == ("idle", 0)

        await until(released, "the cancelled transaction to be rolled back")
    assert await store.get_meta("x") is None
    async with store.transaction() as db:
        await db.execute("INSERT INTO meta (key, value) VALUES ('x', 'written')")
    assert await store.get_meta("x") == "written"


async def test_cancelled_while_waiting_for_begin_leaves_nothing_held_sqlite(tmp_path):
    """The same on SQLite: BEGIN IMMEDIATE waits for another writer; the
    cancelled transaction is rolled back as soon as it begins."""
    store = await open_store("sqlite", tmp_path)
    other = sqlite3.connect(store.dialect.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")

        async def write() -> None:
            async with store.transaction() as db:
                await db.execute("INSERT INTO meta (key, value) VALUES ('x', 'cancelled')")

        task = asyncio.create_task(write())
        await asyncio.sleep(0.2)  # let it reach BEGIN (it waits up to the busy timeout)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        other.execute("ROLLBACK")

        async def idle() -> bool:
            return not await store.db.run(lambda conn: conn.in_transaction)

        await until(idle, "the store's connection to leave the transaction")
        assert await store.get_meta("x") is None
        async with store.transaction() as db:
            await db.execute("INSERT INTO meta (key, value) VALUES ('x', 'written')")
        assert await store.get_meta("x") == "written"
    finally:
        other.close()
        await store.close()


async def test_lanes_and_timeouts_are_set_per_connection(pg_pair):
    """Each lane's connections carry their own lock and statement timeouts;
    a statement past the session lane's statement_timeout is a 503."""
    from voxgate.errors import ServiceUnavailable, dependency_error
    from voxgate.store.connection import LaneLimits

    store = PostgresStore(PG_URL, schema=pg_pair[0].dialect.schema, lanes={
        "session": LaneLimits(2, 0.5, 1.0), "heartbeat": LaneLimits(1, 0.25, 0.75)})
    await store.open()
    try:
        assert await rows(store, "SELECT current_setting('statement_timeout')") == [("1s",)]
        with store.lane("heartbeat"):
            assert await rows(store, "SELECT current_setting('lock_timeout')") == [("250ms",)]
        with store.lane("background"):
            assert await rows(store, "SELECT current_setting('statement_timeout')") == [("1min",)]
        with pytest.raises(ServiceUnavailable) as failed:
            await rows(store, "SELECT pg_sleep(3)")
        assert isinstance(failed.value.__cause__, psycopg.errors.QueryCanceled)
        assert dependency_error(failed.value) is failed.value
        assert await rows(store, "SELECT 1") == [(1,)]
        assert store.db.sizes() == {"session": 1, "heartbeat": 1, "background": 1}
    finally:
        await store.close()


# ---------------------------------------------------------------- a served process, stalled


CATALOG = TEST_CATALOG + """
[plans.stall]
name = "Stall"
sessions_included = 100000
concurrency = 20
requests_per_minute = 100000
projects = 1
"""
# 100 ms of PCM16 24 kHz silence
APPEND = orjson.dumps({"type": "input_audio_buffer.append",
                       "audio": base64.b64encode(bytes(4800)).decode()}).decode()


async def _echo(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Send one append and read until its echo (``response.output_audio.delta``)."""
    await ws.send_str(APPEND)
    while True:
        msg = await asyncio.wait_for(ws.receive(), WAIT_S)
        assert msg.type is aiohttp.WSMsgType.TEXT, (msg.type, msg.data)
        event = orjson.loads(msg.data)
        assert event["type"] != "error", event
        if event["type"] == "response.output_audio.delta":
            return


async def test_a_20_second_lock_on_monthly_usage_is_ridden_out(
        tmp_path, voice_url, fresh_pg):  # noqa: F811
    """`voxgate serve` on PostgreSQL with 4 live sessions; another
    connection holds ACCESS EXCLUSIVE on monthly_usage for 20 s. Meanwhile
    the sessions keep relaying, the instance's heartbeat keeps landing, and
    two sessions close (their finalization waits, retried); after the lock
    every session's record is completed and counted."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    url = fresh_pg()
    env = settings_env(tmp_path / "data", voice_url, catalog, database_url=url,
                       heartbeat_interval_s="1", heartbeat_ttl_s="5", drain_timeout_s="1",
                       policy__min_audio_s="0", instance_id="stall-a")
    account_id, _, key = await new_key(env, "stall")
    served = await asyncio.to_thread(serve, env, tmp_path / "serve.log")
    try:
        async with aiohttp.ClientSession() as http, await psycopg.AsyncConnection.connect(
                url, autocommit=True) as locker:
            socks, ids = [], []
            for _ in range(4):
                ws = await http.ws_connect(served.ws_url + "?model=gpt-realtime&voxgate_fault=echo",
                                           headers={"Authorization": f"Bearer {key}"})
                ids.append(ws._response.headers[SESSION_ID_HEADER])
                socks.append(ws)
                await _echo(ws)

            async def beat() -> float:
                cur = await locker.execute("SELECT heartbeat_at FROM instances WHERE id = %s",
                                           ("stall-a",))
                return float((await cur.fetchone())[0])

            await locker.execute("BEGIN")
            await locker.execute("LOCK TABLE monthly_usage IN ACCESS EXCLUSIVE MODE")
            stalled_at, beats = time.monotonic(), {await beat()}
            closed_in_stall = socks[:2]
            for ws in closed_in_stall:
                await _echo(ws)
                await asyncio.wait_for(ws.close(), WAIT_S)  # answered at once
                assert ws.close_code == 1000
            while time.monotonic() - stalled_at < 20:
                for ws in socks[2:]:
                    await _echo(ws)  # the live ones carry on
                beats.add(await beat())
                await asyncio.sleep(0.5)
            assert len(beats) >= 5  # about one a second, never stuck behind the lock
            cur = await locker.execute(
                "SELECT COUNT(*) FROM sessions WHERE status = 'completed'")
            assert (await cur.fetchone())[0] == 0  # still waiting for the usage row
            await locker.execute("COMMIT")
            for ws in socks[2:]:
                await _echo(ws)
                await asyncio.wait_for(ws.close(), WAIT_S)

            async def all_completed():
                cur = await locker.execute(
                    "SELECT COUNT(*) FROM sessions WHERE status = 'completed'")
                return (await cur.fetchone())[0] == 4

            await until(all_completed, "every finalization to land after the stall")
            cur = await locker.execute("SELECT sessions FROM monthly_usage WHERE account_id = %s",
                                       (account_id,))
            assert (await cur.fetchone())[0] == 4
            cur = await locker.execute("SELECT COUNT(*) FROM instances WHERE id = 'stall-a'")
            assert (await cur.fetchone())[0] == 1  # never swept
        assert "Traceback" not in served.stderr()
    finally:
        served.stop()


async def test_serve_refuses_a_second_instance_with_in_process_admission(
        tmp_path, voice_url, fresh_pg):  # noqa: F811
    """Two `voxgate serve` on one PostgreSQL database without admission_url:
    the second stops at start with one line naming admission_url."""
    import subprocess
    import sys

    from tests.conftest import ROOT, free_port

    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    env = settings_env(tmp_path / "data", voice_url, catalog, database_url=fresh_pg(),
                       instance_id="first")
    await new_key(env, "stall")
    first = await asyncio.to_thread(serve, env, tmp_path / "first.log")
    try:
        second = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "voxgate", "serve", "--port",
                             str(free_port())],
            cwd=str(ROOT), env={**env, "VOXGATE_INSTANCE_ID": "second"},
            capture_output=True, text=True, timeout=60 * SLOW)
        assert second.returncode == 2
        lines = [line for line in second.stderr.splitlines() if line.startswith("voxgate:")]
        assert len(lines) == 1 and "admission_url" in lines[0] and "first" in lines[0], \
            second.stderr[-2000:]
        assert "voxgate listening" not in second.stdout
    finally:
        first.stop()


async def test_group_commit_isolates_a_failing_statement(pg_pair):
    """Concurrent session opens and completions go in group commits; one
    that fails on its own (an unknown account) fails alone, the others of
    its group are stored."""
    store, _ = pg_pair
    account = await store.create_account("ada@example.com", "starter")
    project = await store.create_project(account.id, "p")
    good = [record(account.id, project.id, T0 + i) for i in range(40)]
    bad = record("acct_missing", project.id)
    opened = await asyncio.gather(*(store.open_session(r) for r in [*good[:20], bad, *good[20:]]),
                                  return_exceptions=True)
    failed = [r for r in opened if r is not None]
    assert len(failed) == 1 and isinstance(failed[0], psycopg.errors.ForeignKeyViolation)
    assert store.dialect.group.groups == 0  # its group failed: each ran alone
    usages = await asyncio.gather(*(store.complete_session(r, BILLABLE) for r in good))
    assert store.dialect.group.groups >= 1 and store.dialect.group.grouped > store.dialect.group.groups
    assert sorted(u.billable_sessions for u in usages) == list(range(1, 41))
    assert await rows(store, "SELECT status, COUNT(*) FROM sessions GROUP BY status") == [
        ("completed", 40)]


async def test_a_blocked_completion_does_not_fail_the_others_of_its_group(pg_pair):
    """A completion waiting for a session row another connection holds
    goes in one group with 20 others: it alone fails (its lock_timeout, a
    503 the gateway retries); the others are stored; once the row is free
    it completes."""
    from voxgate.errors import ServiceUnavailable
    from voxgate.store.connection import LaneLimits

    store = PostgresStore(PG_URL, schema=pg_pair[0].dialect.schema,
                          lanes={"session": LaneLimits(4, 0.5, 10.0)})
    await store.open()
    try:
        account = await store.create_account("ada@example.com", "starter")
        project = await store.create_project(account.id, "p")
        held, *others = [record(account.id, project.id, T0 + i) for i in range(21)]
        await store.open_session(held)
        async with await _locker() as locker:
            await locker.execute(f'SET search_path TO "{store.dialect.schema}"')
            await locker.execute("BEGIN")
            await locker.execute("SELECT id FROM sessions WHERE id = %s FOR UPDATE", (held.id,))
            results = await asyncio.gather(
                *(store.complete_session(r, BILLABLE) for r in (held, *others)),
                return_exceptions=True)
            assert isinstance(results[0], ServiceUnavailable)
            assert isinstance(results[0].__cause__, psycopg.errors.LockNotAvailable)
            assert sorted(u.billable_sessions for u in results[1:]) == list(range(1, 21))
            await locker.execute("COMMIT")
        assert (await store.complete_session(held, BILLABLE)).billable_sessions == 21
    finally:
        await store.close()

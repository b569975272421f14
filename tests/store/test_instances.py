"""Instance ownership, epochs, checkpoints and recovery against real SQLite
files, PostgreSQL schemas and the Redis on 127.0.0.1:6379: a process
starting never touches the sessions of a live instance; a dead instance's
sessions are completed by the ``instance_sweep`` job from their last
checkpoint (never from zeros) and their leases left to expire; a heartbeat
of a declared-dead epoch is refused and resurrects nothing; a gateway told
so fences its sessions and registers anew; a restart under the same
``instance_id`` frees its previous run's leases; settlement claims."""

from __future__ import annotations

import asyncio
import inspect
import math
import time
import uuid

import aiohttp
import orjson
import pytest
import pytest_asyncio

from tests.conftest import SLOW, same_database
from tests.test_ws_relay import recv_until, sdk, session_id_of
from voxgate.admission.base import InProcessAdmission
from voxgate.admission.redis import RedisAdmission
from voxgate.billing.db import BillingDB
from voxgate.billing.notify import Notifier
from voxgate.config import load_settings
from voxgate.jobs import JobContext, sweep_expired_instances, verdict_policy
from voxgate.metering.meter import SessionMeter
from voxgate.models import Measurements, Principal, Reason, SessionRecord, Verdict, load_catalog, new_id
from voxgate.proxy.gateway import FENCE_REASON, Gateway
from voxgate.proxy.recovery import LOST_CLOSE_REASON, complete_orphans, release_orphans
from voxgate.proxy.ws_relay import SESSION_ID_HEADER
from voxgate.store.sql import SQLiteStore, SQLStore

REDIS_URL = "redis://127.0.0.1:6379/15"
STOPPED = Verdict(False, Reason.INTERRUPTED, "stopped")
T0 = 1_760_000_000.0


def talked(audio_s: float) -> Measurements:
    """Measurements of a live session that exchanged ``audio_s`` s of audio."""
    return Measurements(connected=True, connect_ms=300.0, duration_ms=audio_s * 1000 + 1000,
                        audio_in_ms=audio_s * 1000 / 2, audio_out_ms=audio_s * 1000 / 2,
                        bytes_in=1000, bytes_out=2000, events_in=10, events_out=20)


@pytest_asyncio.fixture
async def admission():
    prefix = f"voxgate-test-{uuid.uuid4().hex[:8]}:"
    a = RedisAdmission(REDIS_URL, lease_ttl_s=90, prefix=prefix)
    try:
        await a.redis.ping()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc} (make test starts it)")
    yield a
    keys = [k async for k in a.redis.scan_iter(match=prefix + "*")]
    if keys:
        await a.redis.delete(*keys)
    await a.close()


@pytest_asyncio.fixture
async def stores(any_store):
    """Two stores ("processes") on one database: SQLite, then PostgreSQL."""
    other = same_database(any_store)
    await other.open()
    yield any_store, other
    await other.close()


async def open_leased(store: SQLStore, admission, project,
                      started_at: float = T0) -> SessionRecord:
    """A session admitted (a lease taken) and opened under the store's instance."""
    record = SessionRecord(id=new_id("sess"), account_id=project.account_id,
                           project_id=project.id, transport="websocket", started_at=started_at,
                           model="gpt-realtime", measurements=Measurements())
    lease_id = uuid.uuid4().hex  # a live lease as RedisAdmission keeps it (expiry score, s)
    await admission.redis.zadd(admission._leases_key(project.account_id),
                               {lease_id: time.time() + 90})
    await store.open_session(record, lease_id=lease_id)
    return record


def job_context(store: SQLStore, admission, now: float, ttl_s: float = 30.0) -> JobContext:
    settings = load_settings(None, heartbeat_ttl_s=ttl_s)
    return JobContext(store, settings, lambda: now, Notifier(settings, BillingDB(store)),
                      load_catalog(), admission)


async def provisional_of(store, session_id: str) -> int:
    row = await store._one("SELECT provisional FROM sessions WHERE id = ?", (session_id,))
    return int(row[0])


async def test_expired_instance_is_swept_from_its_checkpoints(stores, admission):
    """a stops beating at T0 with two live sessions, one checkpointed with
    6 s of audio, one never checkpointed: the sweep completes the first
    billable from its checkpoint and the second from the row as opened
    (not connected), both closed by the server for ``instance_lost``; the
    leases are left to expire (a paused a may still be relaying), and a's
    epoch is dead: its heartbeat is refused and re-creates nothing."""
    a, b = stores
    account = await a.create_account("ada@example.com", "starter")
    project = await a.create_project(account.id, "p")
    epoch_a, orphans = await a.register_instance("host-a:1", "host-a", 1, T0)
    assert orphans == [] and epoch_a > 0
    epoch_b, _ = await b.register_instance("host-b:2", "host-b", 2, T0)
    talking = await open_leased(a, admission, project)
    silent = await open_leased(a, admission, project)
    other = await b.create_project(account.id, "q")
    live = await open_leased(b, admission, other)
    assert await a.checkpoint_sessions("host-a:1", [(talking.id, talked(6.0))], T0 + 10) == 1
    assert await admission.in_flight(account.id) == 3

    assert await b.heartbeat("host-b:2", epoch_b, T0 + 40)  # a stopped beating at T0
    # within the TTL nothing is swept
    assert await sweep_expired_instances(job_context(b, admission, T0 + 25)) == (
        "0 expired instance(s), 0 session(s) completed")
    assert (await b.get_session(talking.id)).status == "active"

    detail = await sweep_expired_instances(job_context(b, admission, T0 + 45))
    assert detail == "1 expired instance(s), 2 session(s) completed"
    swept = await b.get_session(talking.id)
    assert (swept.status, swept.billable, swept.reason) == ("completed", True, "billable")
    m = swept.measurements
    assert (m.audio_in_ms, m.audio_out_ms, m.duration_ms) == (3000, 3000, 7000)
    assert (m.closed_by, m.close_reason) == ("server", LOST_CLOSE_REASON)
    assert "host-a:1 lost" in swept.rule and "last checkpoint" in swept.rule
    assert swept.ended_at == T0 + 10  # ended at its checkpoint
    lost = await b.get_session(silent.id)
    assert (lost.status, lost.billable, lost.reason) == ("completed", False, "not_connected")
    assert lost.measurements.close_reason == LOST_CLOSE_REASON
    if "provisional" in inspect.signature(b.complete_session).parameters:
        assert await provisional_of(b, talking.id) == 1
    assert (await b.get_session(live.id)).status == "active"  # the live instance's: untouched
    assert [i.id for i in await b.list_instances()] == ["host-b:2"]
    assert await admission.in_flight(account.id) == 3  # not freed: they expire by their TTL
    usage = await b.get_usage(account.id, swept.period)
    assert (usage.sessions, usage.billable_sessions) == (2, 1)
    assert usage.audio_seconds == 6.0
    # a comes back: its epoch's heartbeat is refused and does not resurrect it
    assert not await a.heartbeat("host-a:1", epoch_a, T0 + 46)
    assert [i.id for i in await b.list_instances()] == ["host-b:2"]
    # a second sweep finds nothing: each session completed once
    assert await sweep_expired_instances(job_context(b, admission, T0 + 50)) == (
        "0 expired instance(s), 0 session(s) completed")


async def test_instance_back_before_the_sweep_keeps_its_sessions(stores, admission):
    a, b = stores
    account = await a.create_account("ada@example.com", "starter")
    project = await a.create_project(account.id, "p")
    epoch, _ = await a.register_instance("host-a:1", "host-a", 1, T0)
    record = await open_leased(a, admission, project)
    [expired] = await b.expired_instances(T0 + 1)
    assert expired.epoch == epoch
    assert await a.heartbeat("host-a:1", epoch, T0 + 2)  # it beats between the read and the sweep
    assert await b.sweep_instance(expired.id, expired.epoch, T0 + 3,
                                  heartbeat_before=T0 + 1) == []
    assert (await b.get_session(record.id)).status == "active"
    assert await admission.in_flight(account.id) == 1


async def test_epochs_a_dead_epoch_never_comes_back(stores):
    """Each registration gets a new, larger epoch; a heartbeat counts only
    for the row of its own epoch: after a sweep it is refused (the row is
    not re-created), and after the id registers anew the old epoch is
    still refused while the new one beats."""
    a, b = stores
    first, _ = await a.register_instance("unit-a", "host-a", 1, T0)
    assert await a.heartbeat("unit-a", first, T0 + 1)
    assert not await a.heartbeat("unit-a", first + 1, T0 + 1)  # not its epoch
    assert await b.sweep_instance("unit-a", first + 1, T0 + 60, heartbeat_before=T0 + 30) == []
    assert [i.id for i in await b.list_instances()] == ["unit-a"]  # another epoch's sweep: no
    assert await b.sweep_instance("unit-a", first, T0 + 60, heartbeat_before=T0 + 30) == []
    assert await b.list_instances() == []
    assert not await a.heartbeat("unit-a", first, T0 + 61)
    assert await b.list_instances() == []  # not resurrected
    second, _ = await a.register_instance("unit-a", "host-a", 1, T0 + 62)
    assert second > first
    assert not await a.heartbeat("unit-a", first, T0 + 63)
    assert await a.heartbeat("unit-a", second, T0 + 63)
    [instance] = await b.list_instances()
    assert (instance.epoch, instance.heartbeat_at) == (second, T0 + 63)
    # the same clock reading again still gives a larger epoch
    third, _ = await a.register_instance("unit-a", "host-a", 1, T0 + 62)
    assert third == second + 1


async def test_checkpoints_write_live_sessions_in_one_call(stores):
    """A checkpoint writes each live session's measurements, the columns
    the API reads and ``checkpoint_at``; it never touches a completed
    session nor another instance's."""
    a, b = stores
    account = await a.create_account("ada@example.com", "starter")
    project = await a.create_project(account.id, "p")
    await a.register_instance("host-a:1", "host-a", 1, T0)
    await b.register_instance("host-b:2", "host-b", 2, T0)

    def opened(n: int) -> SessionRecord:
        return SessionRecord(id=new_id("sess"), account_id=account.id, project_id=project.id,
                             transport="websocket", started_at=T0 + n, model="m")

    mine = [opened(n) for n in range(30)]
    for record in mine:
        await a.open_session(record)
    theirs = opened(99)
    await b.open_session(theirs)
    done = mine.pop()
    done.ended_at, done.measurements = T0 + 50, talked(1.0)
    await a.complete_session(done, Verdict(False, Reason.TOO_SHORT, "short"))

    sent = [(r.id, talked(n + 6.0)) for n, r in enumerate(mine)]
    sent += [(done.id, talked(60.0)), (theirs.id, talked(60.0))]
    assert await a.checkpoint_sessions("host-a:1", sent, T0 + 20) == len(mine)
    for n, record in enumerate(mine):
        stored = await b.get_session(record.id)
        assert stored.status == "active"
        assert stored.measurements.audio_in_ms == (n + 6.0) * 500
        assert stored.measurements.connected
    row = await b._one("SELECT audio_in_ms, audio_out_ms, duration_ms, bytes_in, bytes_out,"
                       " checkpoint_at FROM sessions WHERE id = ?", (mine[0].id,))
    assert tuple(row) == (3000, 3000, 7000, 1000, 2000, T0 + 20)
    assert (await b.get_session(done.id)).measurements.audio_in_ms == 500  # completed: kept
    assert (await b.get_session(theirs.id)).measurements.audio_in_ms == 0  # b's: untouched
    assert await a.checkpoint_sessions("host-a:1", [], T0 + 30) == 0


async def test_sessions_a_sweep_left_active_are_completed_next_time(stores, admission):
    """The sweeper died between deleting a dead instance's row and
    completing its sessions: the next sweep finds them (no instance row,
    last checkpoint older than the TTL) and completes them from their
    checkpoints; a session opened under a live instance is never one."""
    a, b = stores
    account = await a.create_account("ada@example.com", "starter")
    project = await a.create_project(account.id, "p")
    epoch, _ = await a.register_instance("host-a:1", "host-a", 1, T0)
    record = await open_leased(a, admission, project)
    await a.checkpoint_sessions("host-a:1", [(record.id, talked(8.0))], T0 + 5)
    [orphan] = await b.sweep_instance("host-a:1", epoch, T0 + 45, heartbeat_before=T0 + 15)
    assert (orphan.session_id, orphan.checkpoint_at) == (record.id, T0 + 5)
    assert orphan.record.measurements.audio_in_ms == 4000 and orphan.lease_id
    # ... and died here
    assert await b.orphaned_sessions(T0 + 5) == []  # its checkpoint is not older than that
    assert [o.session_id for o in await b.orphaned_sessions(T0 + 15)] == [record.id]
    assert await sweep_expired_instances(job_context(b, admission, T0 + 50)) == (
        "0 expired instance(s), 1 session(s) completed")
    stored = await b.get_session(record.id)
    assert (stored.status, stored.billable, stored.measurements.audio_in_ms) == (
        "completed", True, 4000)
    assert await b.orphaned_sessions(T0 + 100) == []


async def test_restart_with_the_same_identity_frees_its_old_leases(tmp_path, admission):
    path = tmp_path / "voxgate.db"
    async with SQLiteStore(path) as first:
        account = await first.create_account("ada@example.com", "starter")
        project = await first.create_project(account.id, "p")
        await first.register_instance("unit-a", "host-a", 1, T0)
        old = await open_leased(first, admission, project)
        await first.checkpoint_sessions("unit-a", [(old.id, talked(2.0))], T0 + 3)
    # killed: no clean stop; the same unit comes back with a new pid
    async with SQLiteStore(path) as again:
        _, orphans = await again.register_instance("unit-a", "host-a", 2, T0 + 5)
        assert [o.session_id for o in orphans] == [old.id] and orphans[0].lease_id
        assert (await again.get_session(old.id)).status == "active"  # the caller completes it
        await release_orphans(admission, orphans)
        assert await admission.in_flight(account.id) == 0  # a concurrency-1 account may start
        settings = load_settings(None)
        [verdict] = await complete_orphans(again, load_catalog(), verdict_policy(settings),
                                           orphans, T0 + 5, "unit-a restarted")
        record = await again.get_session(old.id)
        assert (record.status, record.reason, record.billable) == ("completed", "too_short", False)
        assert record.measurements.audio_in_ms == 1000 and verdict.reason == "too_short"
        [instance] = await again.list_instances()
        assert (instance.id, instance.pid, instance.heartbeat_at) == ("unit-a", 2, T0 + 5)


def test_meter_snapshot_leaves_the_session_running():
    meter = SessionMeter(1000.0)
    snap = meter.snapshot(4000.0)
    assert snap.duration_ms == 3000.0 and snap is not meter.measurements()
    snap.event_counts["x"] = 1
    assert meter.measurements().event_counts == {} and not meter.ended
    meter.closed("client", 1000, None, 5000.0)
    assert meter.snapshot(9000.0).duration_ms == 4000.0  # ended: its final duration


async def test_a_second_gateway_start_leaves_live_sessions_alone(make_server, tmp_path):
    """A real session live on server A; a second gateway starts on the same
    database: the session stays active and A records its own verdict."""
    data_dir = tmp_path / "shared"
    server = await make_server(data_dir=str(data_dir))
    async with sdk(server).realtime.connect(model="gpt-realtime") as conn:
        sid = session_id_of(conn)
        await recv_until(conn, "session.created")
        settings = load_settings(None, data_dir=str(data_dir), instance_id="second")
        store = SQLiteStore(settings.sqlite_path)
        await store.open()
        second = Gateway(settings, store, InProcessAdmission(), load_catalog())
        await second.start()
        try:
            record = await store.get_session(sid)
            assert record.status == "active"
            instances = {i.id for i in await store.list_instances()}
            assert instances == {server.gateway.instance_id, "second"}
        finally:
            await second.stop()
            await store.close()
    record = await server.session(sid)
    assert record.reason != "interrupted" and record.measurements.closed_by == "client"
    assert {i.id for i in await server.store.list_instances()} == {server.gateway.instance_id}


async def test_declared_dead_gateway_fences_and_registers_anew(make_server):
    """A live session on a server whose instance row a sweeper deleted
    (declared dead): at its next heartbeat the gateway fences the session
    (close 1011, recorded ``closed_by`` server, ``lease_expired``), its
    record keeps the audio checkpointed and streamed, and the instance
    registers under a new epoch and admits new sessions."""
    server = await make_server(plan="roomy", heartbeat_interval_s=0.2, heartbeat_ttl_s=1.0)
    gateway = server.gateway
    epoch = gateway.epoch
    auth = {"Authorization": f"Bearer {server.key}"}
    chunk = "A" * 12800  # 200 ms of PCM16 24 kHz (9 600 bytes), base64
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.ws_url + "?model=gpt-realtime", headers=auth)
        sid = ws._response.headers[SESSION_ID_HEADER]
        for _ in range(5):
            await ws.send_str(orjson.dumps({"type": "input_audio_buffer.append",
                                            "audio": chunk}).decode())
        deadline = time.monotonic() + 5 * SLOW
        while (await server.store.get_session(sid)).measurements.audio_in_ms < 1000:
            assert time.monotonic() < deadline, "never checkpointed"
            await asyncio.sleep(0.05)
        active = gateway.active[sid]
        assert active.valid_until < math.inf  # bounded by the heartbeat
        # a sweeper declares the instance dead
        await server.store._write("DELETE FROM instances WHERE id = ?", (gateway.instance_id,))
        events, close = [], None
        async with asyncio.timeout(5 * SLOW):
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    events.append(orjson.loads(msg.data))
                else:
                    break
        close = ws.close_code
        assert close == 1011, (close, events)
        record = await server.session(sid)
        m = record.measurements
        assert (m.closed_by, m.close_code, m.close_reason) == ("server", 1011, FENCE_REASON)
        assert m.audio_in_ms == 1000
        deadline = time.monotonic() + 5 * SLOW
        while gateway.epoch == epoch or gateway._reregistering:
            assert time.monotonic() < deadline, "never registered anew"
            await asyncio.sleep(0.05)
        [instance] = await server.store.list_instances()
        assert (instance.id, instance.epoch) == (gateway.instance_id, gateway.epoch)
        again = await http.ws_connect(server.ws_url + "?model=gpt-realtime", headers=auth)
        assert orjson.loads((await again.receive()).data)["type"] == "session.created"
        await again.close()
        await ws.close()


async def test_watchdog_fences_expired_and_finishes_closed_sessions(make_server):
    """The gateway's watchdog fences a session past ``valid_until`` (its
    transport closed once with 1011) and finishes one whose sockets have
    been closed for more than 2 s that nobody finished."""
    server = await make_server(plan="roomy")
    gateway = server.gateway
    api_key, project, account = await server.store.find_api_key(server.key)
    principal = Principal(account=account, project=project, api_key=api_key)
    expired = await gateway.admit(principal, "websocket", "m")
    closes: list[tuple[int, str]] = []

    async def close(code: int, reason: str) -> None:
        closes.append((code, reason))

    expired.close = close
    expired.valid_until = time.monotonic() - 1
    gone = await gateway.admit(principal, "websocket", "m")
    gone.transport_open = lambda: False
    kept = await gateway.admit(principal, "websocket", "m")
    kept.transport_open = lambda: True
    record = await server.session(expired.record.id)
    assert (record.measurements.closed_by, record.measurements.close_reason) == (
        "server", FENCE_REASON)
    assert closes == [(1011, "session lease expired")]
    await gateway.fence(expired)  # idempotent
    assert closes == [(1011, "session lease expired")]
    deadline = time.monotonic() + 10 * SLOW
    while (await server.store.get_session(gone.record.id)).status == "active":
        assert time.monotonic() < deadline, "never finished"
        await asyncio.sleep(0.1)
    record = await server.session(gone.record.id)
    assert record.measurements.close_reason == "transport closed"
    assert (await server.store.get_session(kept.record.id)).status == "active"
    await gateway.finish(kept)


async def test_settlement_claims_go_to_one_claimer_and_expire(stores):
    a, b = stores
    account = await a.create_account("ada@example.com", "payg")
    project = await a.create_project(account.id, "p")
    for i in range(20):
        record = SessionRecord(id=new_id("sess"), account_id=account.id, project_id=project.id,
                               transport="websocket", started_at=T0 + i, model="m",
                               ended_at=T0 + i + 60, measurements=Measurements(duration_ms=60000))
        await a.complete_session(record, Verdict(True, Reason.BILLABLE, "ok"), settle=True)
    now = T0 + 1000
    claims = await asyncio.gather(*(s.claim_outbox(now, now + 300, limit=7)
                                    for s in (a, b, a, b)))
    ids = [item.session_id for claim in claims for item in claim]
    assert len(ids) == len(set(ids)) == 20  # every item once, none twice
    assert await a.claim_outbox(now + 299, now + 600) == []  # all leased
    # the claimers die: after the lease every item is due again
    again = await b.claim_outbox(now + 300, now + 600)
    assert sorted(i.session_id for i in again) == sorted(ids)


def test_heartbeat_ttl_must_outlive_two_beats():
    from voxgate.errors import ConfigError

    with pytest.raises(ConfigError, match="more than twice heartbeat_interval_s"):
        load_settings(None, heartbeat_ttl_s=20, heartbeat_interval_s=10)
    assert load_settings(None, heartbeat_ttl_s=2, heartbeat_interval_s=0.5).heartbeat_ttl_s == 2
    with pytest.raises(ConfigError):  # checkpoints at least every 10 s
        load_settings(None, heartbeat_ttl_s=60, heartbeat_interval_s=15)

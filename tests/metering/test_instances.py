"""Instance ownership and recovery against real SQLite files and the Redis
on 127.0.0.1:6379: a process starting never touches the sessions of a live
instance; a dead instance's sessions are completed interrupted by the
``instance_sweep`` job with their leases freed at once; a restart under the
same ``instance_id`` frees its previous run's leases; settlement claims."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import pytest_asyncio

from tests.conftest import same_database
from tests.test_ws_relay import recv_until, sdk, session_id_of
from voxgate.billing.db import BillingDB
from voxgate.billing.notify import Notifier
from voxgate.config import load_settings
from voxgate.jobs import JobContext, sweep_expired_instances
from voxgate.metering.admission import InProcessAdmission
from voxgate.metering.redis_admission import RedisAdmission
from voxgate.metering.sqlite_store import SQLiteStore
from voxgate.models import Measurements, Reason, SessionRecord, Verdict, load_catalog, new_id
from voxgate.proxy.gateway import Gateway

REDIS_URL = "redis://127.0.0.1:6379/15"
STOPPED = Verdict(False, Reason.INTERRUPTED, "stopped")
T0 = 1_760_000_000.0


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


async def open_leased(store: SQLiteStore, admission, project,
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


def job_context(store: SQLiteStore, admission, now: float, ttl_s: float = 30.0) -> JobContext:
    settings = load_settings(None, heartbeat_ttl_s=ttl_s)
    return JobContext(store, settings, lambda: now, Notifier(settings, BillingDB(store)),
                      load_catalog(), admission)


async def test_expired_instance_is_swept_and_its_leases_freed(stores, admission):
    a, b = stores
    account = await a.create_account("ada@example.com", "starter")
    project = await a.create_project(account.id, "p")
    assert await a.register_instance("host-a:1", "host-a", 1, T0, STOPPED) == []
    assert await b.register_instance("host-b:2", "host-b", 2, T0, STOPPED) == []
    dead = await open_leased(a, admission, project)
    other = await b.create_project(account.id, "q")
    live = await open_leased(b, admission, other)
    assert await admission.in_flight(account.id) == 2

    await b.heartbeat("host-b:2", T0 + 40)  # a stopped beating at T0
    # within the TTL nothing is swept
    assert await sweep_expired_instances(job_context(b, admission, T0 + 25)) == (
        "0 expired instance(s), 0 session(s) completed")
    assert (await b.get_session(dead.id)).status == "active"

    detail = await sweep_expired_instances(job_context(b, admission, T0 + 45))
    assert detail == "1 expired instance(s), 1 session(s) completed"
    swept = await b.get_session(dead.id)
    assert (swept.status, swept.billable, swept.reason) == ("completed", False, "interrupted")
    assert (await b.get_session(live.id)).status == "active"  # the live instance's: untouched
    assert [i.id for i in await b.list_instances()] == ["host-b:2"]
    assert await admission.in_flight(account.id) == 1  # freed now, not after the 90 s TTL
    usage = await b.get_usage(account.id, swept.period)
    assert (usage.sessions, usage.billable_sessions) == (1, 0)
    # a second sweep finds nothing: each session completed once
    assert await sweep_expired_instances(job_context(b, admission, T0 + 50)) == (
        "0 expired instance(s), 0 session(s) completed")


async def test_instance_back_before_the_sweep_keeps_its_sessions(stores, admission):
    a, b = stores
    account = await a.create_account("ada@example.com", "starter")
    project = await a.create_project(account.id, "p")
    await a.register_instance("host-a:1", "host-a", 1, T0, STOPPED)
    record = await open_leased(a, admission, project)
    [expired] = await b.expired_instances(T0 + 1)
    await a.heartbeat("host-a:1", T0 + 2)  # it beats between the read and the sweep
    assert await b.sweep_instance(expired.id, STOPPED, T0 + 3, heartbeat_before=T0 + 1) == []
    assert (await b.get_session(record.id)).status == "active"
    assert await admission.in_flight(account.id) == 1


async def test_restart_with_the_same_identity_frees_its_old_leases(tmp_path, admission):
    path = tmp_path / "voxgate.db"
    async with SQLiteStore(path) as first:
        account = await first.create_account("ada@example.com", "starter")
        project = await first.create_project(account.id, "p")
        await first.register_instance("unit-a", "host-a", 1, T0, STOPPED)
        old = await open_leased(first, admission, project)
    # killed: no clean stop; the same unit comes back with a new pid
    async with SQLiteStore(path) as again:
        orphans = await again.register_instance("unit-a", "host-a", 2, T0 + 5, STOPPED)
        assert [o.session_id for o in orphans] == [old.id] and orphans[0].lease_id
        from voxgate.metering.store import release_orphans

        await release_orphans(admission, orphans)
        assert await admission.in_flight(account.id) == 0  # a concurrency-1 account may start
        record = await again.get_session(old.id)
        assert (record.status, record.reason) == ("completed", "interrupted")
        [instance] = await again.list_instances()
        assert (instance.id, instance.pid, instance.heartbeat_at) == ("unit-a", 2, T0 + 5)


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

"""RedisAdmission against the Redis server on 127.0.0.1:6379 (started by
.ci/run when down). Two instances stand for two voxgate processes."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import pytest_asyncio

from voxgate.errors import ConcurrencyLimited, QuotaExceeded, RateLimited
from voxgate.metering.redis_admission import RedisAdmission
from voxgate.models import Plan

URL = "redis://127.0.0.1:6379/15"
PLAN = Plan(id="p", name="P", sessions_included=3, concurrency=2, requests_per_minute=3)


@pytest_asyncio.fixture
async def pair():
    """Two admissions ("processes") sharing one fresh key prefix."""
    prefix = f"voxgate-test-{uuid.uuid4().hex[:8]}:"
    a = RedisAdmission(URL, lease_ttl_s=30, prefix=prefix)
    b = RedisAdmission(URL, lease_ttl_s=30, prefix=prefix)
    try:
        await a.redis.ping()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Redis is not reachable at {URL}: {exc} (make test / .ci/run starts it)")
    yield a, b
    keys = [k async for k in a.redis.scan_iter(match=prefix + "*")]
    if keys:
        await a.redis.delete(*keys)
    await a.close()
    await b.close()


async def test_concurrency_is_shared_between_processes(pair):
    a, b = pair
    first = await a.acquire("acct", "s1", PLAN, 0)
    await b.acquire("acct", "s2", PLAN, 0)
    with pytest.raises(ConcurrencyLimited, match="allows 2 simultaneous sessions"):
        await a.acquire("acct", "s3", PLAN, 0)
    assert await b.in_flight("acct") == 2
    await a.release(first)
    await a.release(first)  # idempotent
    assert await b.in_flight("acct") == 1
    await b.acquire("acct", "s4", PLAN, 0)
    assert await a.in_flight("other-account") == 0


async def test_quota_reserves_leases_of_every_process(pair):
    a, b = pair
    await a.acquire("acct", "s1", PLAN, billable_used=1)
    with pytest.raises(QuotaExceeded):  # 2 billable + 1 in flight elsewhere = 3 included
        await b.acquire("acct", "s2", PLAN, billable_used=2)
    with pytest.raises(QuotaExceeded):
        await b.check_quota("acct", PLAN, 2)
    await b.check_quota("acct", PLAN, 1)
    payg = Plan(id="payg", name="PAYG", sessions_included=0, overage_cents=10)
    await b.acquire("acct", "s3", payg, billable_used=10_000)  # no cap with overage


async def test_lease_of_a_dead_process_expires(pair):
    a, b = pair
    short = RedisAdmission(URL, lease_ttl_s=0.3, prefix=a.prefix)
    try:
        await short.acquire("acct", "s1", PLAN, 0)
        renewed = await short.acquire("acct", "s2", PLAN, 0)
        await asyncio.sleep(0.2)
        await short.renew(renewed)  # the live process keeps its lease
        await asyncio.sleep(0.2)    # the other one was never renewed: its "process died"
        assert await b.in_flight("acct") == 1
        await b.acquire("acct", "s3", PLAN, 0)
    finally:
        await short.close()


async def test_rate_limit_is_shared(pair):
    a, b = pair
    await a.check_rate("key", PLAN)
    await b.check_rate("key", PLAN)
    await a.check_rate("key", PLAN)
    with pytest.raises(RateLimited) as exc:
        await b.check_rate("key", PLAN)
    assert 19 < exc.value.retry_after_s <= 20.5  # 3 per minute: one token every 20 s
    await b.check_rate("another-key", PLAN)


async def test_peek_reads_the_shared_bucket_without_counting(pair):
    a, b = pair
    assert await a.peek_rate("key", PLAN) == (3, 3, 0.0)  # a key never seen: full
    state = await a.check_rate("key", PLAN)
    for _ in range(3):  # peeking counts nothing
        peeked = await b.peek_rate("key", PLAN)
        assert (peeked.limit, peeked.remaining) == (3, 2)
        assert state.reset_s - 1 < peeked.reset_s <= state.reset_s  # refilling meanwhile
    assert (await a.check_rate("key", PLAN)).remaining == 1
    assert await a.redis.hkeys(f"{a.prefix}rate:key") == ["tokens", "ts"]


async def test_relay_sessions_with_redis_admission(make_server):
    """A server on Redis admission: the concurrency limit and its release
    work through the whole relay."""
    from tests.test_ws_relay import recv_until, refusal, sdk, session_id_of

    server = await make_server(admission_url=URL)
    client = sdk(server)
    c1 = await client.realtime.connect(model="gpt-realtime").enter()
    c2 = await client.realtime.connect(model="gpt-realtime").enter()
    await recv_until(c1, "session.created")
    await recv_until(c2, "session.created")
    status, body = await refusal(server, server.key)
    assert status == 429 and body["error"]["code"] == "concurrency_limit_exceeded"
    await c1.close()
    await server.session(session_id_of(c1))
    assert await server.gateway.admission.in_flight(server.account_id) == 1
    await c2.close()
    await server.session(session_id_of(c2))
    assert await server.gateway.admission.in_flight(server.account_id) == 0

"""RedisAdmission against the Redis server on 127.0.0.1:6379 (started by
.ci/run when down). Two instances stand for two voxgate processes."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import pytest_asyncio

from voxgate.admission.base import Lease
from voxgate.admission.redis import RedisAdmission
from voxgate.errors import ConcurrencyLimited, QuotaExceeded, RateLimited
from voxgate.metering.rules import Counters
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


P = "2026-01"


def billable(n: int, calls: list | None = None):
    """A seed: the store's billable sessions of the period (``calls`` counts reads)."""
    async def seed() -> int:
        if calls is not None:
            calls.append(n)
        return n
    return seed


async def test_concurrency_is_shared_between_processes(pair):
    a, b = pair
    first = await a.acquire("acct", "s1", PLAN, P, billable(0))
    await b.acquire("acct", "s2", PLAN, P, billable(0))
    with pytest.raises(ConcurrencyLimited, match="allows 2 simultaneous sessions"):
        await a.acquire("acct", "s3", PLAN, P, billable(0))
    assert await b.in_flight("acct") == 2
    await a.release(first)
    await a.release(first)  # idempotent
    assert await b.in_flight("acct") == 1
    await b.acquire("acct", "s4", PLAN, P, billable(0))
    assert await a.in_flight("other-account") == 0


async def test_quota_reserves_leases_of_every_process(pair):
    a, b = pair
    capped = Plan(id="c", name="P", sessions_included=3)
    reads: list[int] = []
    await a.acquire("acct", "s1", capped, P, billable(1, reads))
    await b.acquire("acct", "s2", capped, P, billable(1, reads))
    with pytest.raises(QuotaExceeded, match=r"\(1 billable, 2 in progress, 3 included\)"):
        await b.acquire("acct", "s3", capped, P, billable(1, reads))
    assert reads == [1]  # seeded from the database once, then held in Redis
    assert await b.usage("acct", P, billable(99)) == Counters(1, 2)
    payg = Plan(id="payg", name="PAYG", sessions_included=0, overage_cents=10)
    await b.acquire("acct2", "s4", payg, P, billable(10_000))  # no cap with an overage price


async def test_completion_turns_the_reservation_into_a_billable_session(pair):
    a, b = pair
    one = Plan(id="one", name="One", sessions_included=2, concurrency=1)
    lease = await a.acquire("acct", "s1", one, P, billable(0))
    await a.complete(lease, billable=True)
    await a.complete(lease, billable=True)  # idempotent: counted once
    assert await b.usage("acct", P, billable(0)) == Counters(1, 0)
    lease = await b.acquire("acct", "s2", one, P, billable(0))
    await b.complete(lease, billable=False)  # freed, nothing counted
    lease = await b.acquire("acct", "s3", one, P, billable(0))
    await b.complete(lease, billable=True)
    with pytest.raises(QuotaExceeded, match=r"\(2 billable, 0 in progress"):
        await a.acquire("acct", "s4", one, P, billable(0))
    await a.acquire("acct", "s5", one, "2026-02", billable(0))  # a new period


async def test_a_seed_read_while_sessions_complete_misses_none(pair):
    a, b = pair
    lease = await a.acquire("acct", "s1", PLAN, P, billable(0))
    counters = [f"{a.prefix}used:acct:{P}"]
    await a.redis.delete(*counters)  # e.g. Redis lost the counter

    async def seed_racing_a_completion() -> int:
        await b.complete(lease, billable=True)  # recorded after the database was read
        return 0

    assert await a.usage("acct", P, seed_racing_a_completion) == Counters(1, 0)


async def test_reconcile_resets_to_the_database_unless_a_completion_ran(pair):
    a, b = pair
    lease = await a.acquire("acct", "s1", PLAN, P, billable(2))
    await a.complete(lease, billable=False)

    async def completion_during_read() -> int:
        other = await b.acquire("acct", "s2", PLAN, P, billable(0))
        await b.complete(other, billable=True)
        return 0

    assert not await a.reconcile("acct", P, completion_during_read)
    assert (await a.usage("acct", P, billable(0))).billable_used == 3
    assert await a.reconcile("acct", P, billable(1))  # e.g. a session credited back
    assert await b.usage("acct", P, billable(0)) == Counters(1, 0)


async def test_reconcile_converges_while_leases_are_live(pair):
    """A busy account (leases always in flight) whose count went one too
    high (a completion retried across a Redis restart) is brought back to
    the database's count: live leases are a separate figure."""
    a, b = pair
    roomy = Plan(id="r", name="R", sessions_included=10, concurrency=5)
    live = [await a.acquire("acct", f"s{i}", roomy, P, billable(4)) for i in range(2)]
    await a.redis.incr(f"{a.prefix}used:acct:{P}")  # the overcount: 5 where the store says 4
    assert await b.usage("acct", P, billable(0)) == Counters(5, 2)
    assert await b.reconcile("acct", P, billable(4))
    assert await a.usage("acct", P, billable(0)) == Counters(4, 2)
    # and a billable completion of a live lease after the reconcile counts on top
    await a.complete(live[0], billable=True)
    assert await b.usage("acct", P, billable(0)) == Counters(5, 1)


async def test_a_retried_completion_counts_once(pair):
    """The same completion retried (its reply lost, or by another process)
    counts the billable session once; a release first does not stop a later
    billable completion (a fenced instance's final record), once."""
    a, b = pair
    first = await a.acquire("acct", "s1", PLAN, P, billable(0))
    await a.complete(first, billable=True)
    retried = Lease(first.id, "acct", "s1", 0.0, period=P)  # the retry's own copy
    await b.complete(retried, billable=True)
    await b.complete(retried, billable=True)
    await b.release(Lease(first.id, "acct", "s1", 0.0, period=P))
    assert await a.usage("acct", P, billable(0)) == Counters(1, 0)

    swept = await a.acquire("acct", "s2", PLAN, P, billable(0))
    await b.release(Lease(swept.id, "acct", "s2", 0.0))  # the sweeper frees it (no period)
    await a.complete(swept, billable=True)  # its holder's final record: billable
    await a.complete(swept, billable=True)
    await b.complete(Lease(swept.id, "acct", "s2", 0.0, period=P), billable=True)
    assert await b.usage("acct", P, billable(0)) == Counters(2, 0)
    assert await a.redis.get(f"{a.prefix}done:{swept.id}") == "1"
    assert 0 < await a.redis.ttl(f"{a.prefix}done:{swept.id}") <= a.done_ttl_s


async def test_a_completion_after_the_lease_expired_counts_once(pair):
    a, b = pair
    short = RedisAdmission(URL, lease_ttl_s=0.2, prefix=a.prefix)
    try:
        lease = await short.acquire("acct", "s1", PLAN, P, billable(0))
        await asyncio.sleep(0.3)
        assert await b.in_flight("acct") == 0  # expired: its slot is free
        await short.complete(lease, billable=True)
        await short.complete(lease, billable=True)
        await b.complete(Lease(lease.id, "acct", "s1", 0.0, period=P), billable=True)
        assert await b.usage("acct", P, billable(0)) == Counters(1, 0)
    finally:
        await short.close()


async def test_renew_many_renews_restores_or_loses(pair):
    """One call over leases of several accounts: live ones renewed; missing
    ones (here: Redis lost the account's leases) restored while the plan's
    concurrency has room, the rest lost; released ones lost."""
    a, b = pair
    two = Plan(id="two", name="Two", concurrency=2)
    x1 = await a.acquire("x", "s1", two, P, billable(0))
    x2 = await a.acquire("x", "s2", two, P, billable(0))
    y1 = await a.acquire("y", "s3", two, P, billable(0))
    unbounded = await a.acquire("z", "s4", Plan(id="u", name="U"), P, billable(0))
    assert x1.max_in_flight == 2 and unbounded.max_in_flight is None
    assert await a.renew_many([], 0.0) == {}
    before = x1.expires_at
    assert await a.renew_many([x1, y1], 0.0) == {x1.id: "renewed", y1.id: "renewed"}
    assert x1.expires_at >= before

    await a.redis.delete(a._leases_key("x"), a._leases_key("y"), a._leases_key("z"))  # a flush
    taken = await b.acquire("x", "s5", two, P, billable(0))  # another process's new session
    assert await a.renew_many([x1, x2, y1, unbounded], 0.0) == {
        x1.id: "restored", x2.id: "lost", y1.id: "restored", unbounded.id: "restored"}
    assert (await a.in_flight("x"), await a.in_flight("y"), await a.in_flight("z")) == (2, 1, 1)
    assert await a.renew(x1) == "renewed"

    await b.release(taken)
    await a.release(y1)
    assert await a.renew_many([x2, y1], 0.0) == {x2.id: "restored", y1.id: "lost"}
    assert await a.release_instance(a.instance_id) == 3  # x1, x2, the unbounded one
    assert await a.renew_many([x1, x2, unbounded], 0.0) == {
        x1.id: "lost", x2.id: "lost", unbounded.id: "lost"}  # freed by the sweep: not put back
    assert (await a.in_flight("x"), await a.in_flight("z")) == (0, 0)


async def test_rate_limit_figures_agree_with_the_separate_calls(pair):
    a, b = pair
    reads: list[int] = []
    await a.acquire("acct", "s1", PLAN, P, billable(1, reads))
    await a.check_rate("key", PLAN)
    rate, usage = await b.rate_limit_figures("key", PLAN, "acct", P, billable(99, reads))
    peeked = await b.peek_rate("key", PLAN)
    assert usage == await b.usage("acct", P, billable(99)) == Counters(1, 1)
    assert (rate.limit, rate.remaining) == (peeked.limit, peeked.remaining) == (3, 2)
    assert peeked.reset_s - 1 < rate.reset_s <= peeked.reset_s + 1
    assert reads == [1]  # held in Redis: no database read
    # a key and a period never seen: full budget, the period seeded once
    rate, usage = await b.rate_limit_figures("new-key", PLAN, "acct", "2026-02",
                                             billable(7, reads))
    assert rate == (3, 3, 0.0) and usage == Counters(7, 1) and reads == [1, 7]
    assert await a.redis.hkeys(f"{a.prefix}rate:new-key") == []  # nothing written


async def test_redis_errors_become_service_unavailable():
    """Every method raises ServiceUnavailable (from the redis exception) when
    Redis cannot be reached; the edge recognizes it as a dependency error."""
    import redis.exceptions

    from tests.conftest import free_port
    from voxgate.errors import ServiceUnavailable, dependency_error

    down = RedisAdmission(f"redis://127.0.0.1:{free_port()}/0", pool_timeout_s=1)
    lease = Lease("l1", "acct", "s1", 0.0, period=P)
    calls = [down.check_rate("k", PLAN), down.peek_rate("k", PLAN),
             down.usage("acct", P, billable(0)), down.acquire("acct", "s", PLAN, P, billable(0)),
             down.rate_limit_figures("k", PLAN, "acct", P, billable(0)),
             down.renew_many([lease]), down.renew(lease), down.complete(lease, True),
             down.release(lease), down.reconcile("acct", P, billable(0)),
             down.release_instance("i"), down.in_flight("acct")]
    try:
        for call in calls:
            with pytest.raises(ServiceUnavailable, match=r"^admission \(Redis\) is unavailable") as err:
                await call
            assert isinstance(err.value.__cause__, redis.exceptions.ConnectionError)
            assert dependency_error(err.value) is err.value
    finally:
        await down.close()


async def test_release_instance_frees_a_dead_instance_at_once(pair):
    a, b = pair
    dead = RedisAdmission(URL, lease_ttl_s=30, prefix=a.prefix, instance_id="dead-1")
    try:
        await dead.acquire("acct", "s1", PLAN, P, billable(0))
        await dead.acquire("acct2", "s2", PLAN, P, billable(0))
        kept = await b.acquire("acct", "s3", PLAN, P, billable(0))
        assert kept.instance_id == b.instance_id != "dead-1"
        assert await a.release_instance("dead-1") == 2
        assert (await a.in_flight("acct"), await a.in_flight("acct2")) == (1, 0)
        assert await a.release_instance("dead-1") == 0
    finally:
        await dead.close()


async def test_churn_across_processes_admits_exactly_the_quota(pair):
    """40 clients on two "processes" cycle sessions that all end billable
    against 30 remaining: exactly 30 admitted, the rest refused for quota."""
    a, b = pair
    plan = Plan(id="cap", name="Cap", sessions_included=40)
    admitted, refused = [], []

    async def client(adm: RedisAdmission, n: int) -> None:
        for i in range(5):
            try:
                lease = await adm.acquire("acct", f"s{n}-{i}", plan, P, billable(10))
            except QuotaExceeded:
                refused.append(n)
                continue
            admitted.append(n)
            await asyncio.sleep(0.001 * (n % 3))
            await adm.complete(lease, billable=True)

    await asyncio.gather(*(client(a if n % 2 else b, n) for n in range(40)))
    assert len(admitted) == 30 and len(refused) == 170
    assert await a.usage("acct", P, billable(0)) == Counters(40, 0)


async def test_lease_of_a_dead_process_expires(pair):
    a, b = pair
    short = RedisAdmission(URL, lease_ttl_s=0.3, prefix=a.prefix)
    try:
        await short.acquire("acct", "s1", PLAN, P, billable(0))
        renewed = await short.acquire("acct", "s2", PLAN, P, billable(0))
        await asyncio.sleep(0.2)
        await short.renew(renewed)  # the live process keeps its lease
        await asyncio.sleep(0.2)    # the other one was never renewed: its "process died"
        assert await b.in_flight("acct") == 1
        await b.acquire("acct", "s3", PLAN, P, billable(0))
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


async def test_a_cancelled_caller_never_keeps_running(pair):
    """300 tasks reading the rate_limits.updated figures in a loop (as a
    relay does after each response.done), each cancelled at a random point:
    every one ends cancelled. redis-py 8.2 swallows some of these
    cancellations (the task would loop on for good); admission raises them."""
    import random

    a, _ = pair

    async def relay() -> None:
        while True:
            await a.rate_limit_figures("key", PLAN, "acct", P, billable(0))

    tasks = [asyncio.create_task(relay()) for _ in range(300)]
    await asyncio.sleep(0.05)
    for task in tasks:
        await asyncio.sleep(random.random() / 1000)
        task.cancel()
    done, running = await asyncio.wait(tasks, timeout=10)
    assert not running, f"{len(running)} of 300 cancelled tasks still running"
    assert all(task.cancelled() for task in done)


@pytest.mark.parametrize("kind", ["redis", "in-process"])
async def test_admit_and_check_mint_are_check_rate_then_acquire_or_usage(pair, kind):
    """``admit`` counts the request and takes the lease in one step, giving the
    counters the first ``rate_limits.updated`` shows; ``check_mint`` counts the
    request and reads the counters. Refused by the rate limit: no lease taken;
    refused by concurrency: the request counted, no lease; both in Redis and
    in process, with the same figures."""
    from voxgate.admission.base import InProcessAdmission

    a = pair[0] if kind == "redis" else InProcessAdmission(lease_ttl_s=30)
    rate, lease, usage = await a.admit("key", "acct", "s1", PLAN, P, billable(1), 0.0)
    assert (rate.limit, rate.remaining) == (3, 2)
    assert usage == Counters(1, 1) and lease.max_in_flight == 2
    assert await a.in_flight("acct") == 1
    rate, usage = await a.check_mint("key", PLAN, "acct", P, billable(1), 0.1)
    assert rate.remaining == 1 and usage == Counters(1, 1)
    rate, second, usage = await a.admit("key", "acct", "s2", PLAN, P, billable(1), 0.2)
    assert rate.remaining == 0 and usage == Counters(1, 2)
    with pytest.raises(RateLimited):  # no token left: nothing taken
        await a.admit("key", "acct", "s3", PLAN, P, billable(1), 0.3)
    with pytest.raises(RateLimited):
        await a.check_mint("key", PLAN, "acct", P, billable(1), 0.3)
    assert await a.in_flight("acct") == 2
    with pytest.raises(ConcurrencyLimited):  # another key's budget, the account's concurrency
        await a.admit("other", "acct", "s4", PLAN, P, billable(1), 0.4)
    assert (await a.peek_rate("other", PLAN, 0.4)).remaining == 2  # the refused request counted
    await a.complete(lease, billable=True)
    await a.release(second)
    _, usage = await a.rate_limit_figures("other", PLAN, "acct", P, billable(1), 0.5)
    assert usage == Counters(2, 0)

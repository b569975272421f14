"""InProcessAdmission keeps the Admission contract RedisAdmission keeps
(tests/admission/test_redis_admission.py): completions counted once per
lease, reconcile converging while leases are live, renew_many, the
rate_limits.updated figures; and its maps stay bounded over a month of
churn. Time is passed in (monotonic seconds)."""

from __future__ import annotations

from voxgate.admission.base import BUCKET_IDLE_S, InProcessAdmission
from voxgate.metering.rate import RateLimitState
from voxgate.metering.rules import Counters
from voxgate.models import Plan

PLAN = Plan(id="p", name="P", sessions_included=10, concurrency=2, requests_per_minute=3)
P = "2026-01"


def billable(n: int, calls: list | None = None):
    """A seed: the store's billable sessions of the period (``calls`` counts reads)."""
    async def seed() -> int:
        if calls is not None:
            calls.append(n)
        return n
    return seed


async def test_a_completion_counts_once_even_after_its_lease_expired():
    adm = InProcessAdmission(lease_ttl_s=10)
    lease = await adm.acquire("acct", "s1", PLAN, P, billable(0), now=0.0)
    await adm.complete(lease, billable=True)
    await adm.complete(lease, billable=True)
    await adm.release(lease)
    assert await adm.usage("acct", P, billable(0), now=1.0) == Counters(1, 0)

    late = await adm.acquire("acct", "s2", PLAN, P, billable(0), now=1.0)
    assert await adm.usage("acct", P, billable(0), now=20.0) == Counters(1, 0)  # expired
    await adm.complete(late, billable=True)  # its session ended billable all the same
    await adm.complete(late, billable=True)
    assert await adm.usage("acct", P, billable(0), now=20.0) == Counters(2, 0)

    upgraded = await adm.acquire("acct", "s3", PLAN, P, billable(0), now=20.0)
    await adm.release(upgraded)  # freed first (e.g. by a sweep) ...
    await adm.complete(upgraded, billable=True)  # ... then its final record: billable, once
    await adm.complete(upgraded, billable=True)
    assert await adm.usage("acct", P, billable(0), now=20.0) == Counters(3, 0)


async def test_reconcile_converges_while_leases_are_live():
    adm = InProcessAdmission()
    await adm.acquire("acct", "s1", PLAN, P, billable(5), now=0.0)
    assert await adm.reconcile("acct", P, billable(4), now=1.0)  # a session in flight
    assert await adm.usage("acct", P, billable(0), now=1.0) == Counters(4, 1)

    async def completion_during_read() -> int:
        other = await adm.acquire("acct", "s2", PLAN, P, billable(0), now=1.0)
        await adm.complete(other, billable=True)
        return 0

    assert not await adm.reconcile("acct", P, completion_during_read, now=1.0)
    assert await adm.usage("acct", P, billable(0), now=1.0) == Counters(5, 1)


async def test_renew_many_renews_restores_or_loses():
    adm = InProcessAdmission(lease_ttl_s=10)
    x1 = await adm.acquire("x", "s1", PLAN, P, billable(0), now=0.0)
    x2 = await adm.acquire("x", "s2", PLAN, P, billable(0), now=0.0)
    y1 = await adm.acquire("y", "s3", PLAN, P, billable(0), now=0.0)
    assert x1.max_in_flight == 2
    assert await adm.renew_many([x1, y1], 5.0) == {x1.id: "renewed", y1.id: "renewed"}
    assert x1.expires_at == 15.0
    # the process paused past x2's expiry, and a new session took its slot
    await adm.acquire("x", "s4", PLAN, P, billable(0), now=12.0)
    assert await adm.renew_many([x1, x2, y1], 12.0) == {
        x1.id: "renewed", x2.id: "lost", y1.id: "renewed"}
    await adm.release(y1)
    assert await adm.renew(y1, 12.0) == "lost"
    # a lease that expired with room left is put back
    assert await adm.renew_many([x1], 40.0) == {x1.id: "restored"}
    assert await adm.in_flight("x") == 1 and x1.expires_at == 50.0
    assert await adm.release_instance(adm.instance_id) == 1
    assert await adm.renew_many([x1], 41.0) == {x1.id: "lost"}


async def test_rate_limit_figures_agree_with_the_separate_calls():
    adm = InProcessAdmission()
    reads: list[int] = []
    await adm.acquire("acct", "s1", PLAN, P, billable(2, reads), now=0.0)
    await adm.check_rate("key", PLAN, 0.0)
    figures = await adm.rate_limit_figures("key", PLAN, "acct", P, billable(99, reads), 0.0)
    assert figures == (await adm.peek_rate("key", PLAN, 0.0),
                       await adm.usage("acct", P, billable(99), 0.0))
    assert figures == (RateLimitState(3, 2, 20.0), Counters(2, 1)) and reads == [2]


async def test_maps_stay_bounded_over_a_month_of_churn():
    """A month of keys, accounts and sessions coming and going (compressed:
    one request a second, months passing): buckets of keys idle for two
    minutes, counters of periods before the previous month and lease maps of
    accounts without sessions are gone."""
    adm = InProcessAdmission(lease_ttl_s=10)
    roomy = Plan(id="r", name="R", requests_per_minute=600)
    now = 0.0
    periods = [f"2026-{m:02d}" for m in range(1, 13)]
    for period in periods:
        for i in range(300):
            now += 1.0
            account = f"acct-{period}-{i % 50}"
            await adm.check_rate(f"key-{period}-{i}", roomy, now)
            lease = await adm.acquire(account, f"s{i}", roomy, period, billable(0), now)
            await adm.complete(lease, billable=i % 2 == 0)
            await adm.rate_limit_figures(f"key-{period}-{i}", roomy, account, period,
                                         billable(0), now)
    assert len(adm._buckets) <= BUCKET_IDLE_S + 1
    assert {period for _, period in adm._periods} == {"2026-11", "2026-12"}
    assert len(adm._periods) == 100 and adm._leases == {}
    assert await adm.usage("acct-2026-12-0", "2026-12", billable(0), now) == Counters(6, 0)  # i = 0, 50, … 250

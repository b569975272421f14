"""Redis restarted (a redis-server of the test's own, no persistence) under
two admission instances ("processes") with live sessions: while it is down
every call raises ServiceUnavailable; once it is back the period count is
seeded again from the database (nothing counted twice), the live sessions'
leases are put back only while the plan's concurrency has room, and every
completion after the restart counts once however often it is retried. And
the calls a live session makes often are one script call each (counted by
the server's INFO commandstats)."""

from __future__ import annotations

import pytest

from tests.served import redis_server  # noqa: F401
from voxgate.admission.base import Lease
from voxgate.admission.redis import RedisAdmission
from voxgate.errors import ServiceUnavailable
from voxgate.metering.rules import Counters
from voxgate.models import Plan

PLAN = Plan(id="two", name="Two", sessions_included=10, concurrency=2)
P = "2026-03"


class Database:
    """The store's billable count of the account's period: a completion is
    recorded here first, then in admission (as Gateway.finish does)."""

    def __init__(self, billable: int) -> None:
        self.billable = billable

    async def seed(self) -> int:
        return self.billable

    async def finish(self, admission: RedisAdmission, lease: Lease) -> None:
        self.billable += 1
        await admission.complete(lease, billable=True)


async def test_admission_is_consistent_after_a_redis_restart(redis_server):  # noqa: F811
    a = RedisAdmission(redis_server.url, lease_ttl_s=30, pool_timeout_s=2, instance_id="a")
    b = RedisAdmission(redis_server.url, lease_ttl_s=30, pool_timeout_s=2, instance_id="b")
    db = Database(billable=3)
    try:
        done = await a.acquire("acct", "s0", PLAN, P, db.seed)
        await db.finish(a, done)
        live = [await a.acquire("acct", f"s{i}", PLAN, P, db.seed) for i in (1, 2)]
        assert await b.usage("acct", P, db.seed) == Counters(4, 2)

        redis_server.stop()
        for call in (b.acquire("acct", "s3", PLAN, P, db.seed), a.renew_many(live),
                     b.rate_limit_figures("key", PLAN, "acct", P, db.seed)):
            with pytest.raises(ServiceUnavailable):
                await call
        redis_server.start()  # empty: no leases, counters, buckets or loaded scripts

        # another process admits a session first: one of the two slots
        newer = await b.acquire("acct", "s3", PLAN, P, db.seed)
        assert await b.usage("acct", P, db.seed) == Counters(4, 1)  # seeded again: s0 once
        # the live sessions' leases: one put back, the other lost (its session is fenced)
        assert await a.renew_many(live) == {live[0].id: "restored", live[1].id: "lost"}
        assert await b.in_flight("acct") == 2
        assert await a.renew_many(live[:1]) == {live[0].id: "renewed"}

        # the fenced session is recorded billable; its completion counts once
        await db.finish(a, live[1])
        await a.complete(live[1], billable=True)
        await b.complete(Lease(live[1].id, "acct", "s2", 0.0, period=P), billable=True)
        assert await b.usage("acct", P, db.seed) == Counters(5, 2)
        await db.finish(a, live[0])
        await db.finish(b, newer)
        await b.complete(newer, billable=True)
        assert await a.usage("acct", P, db.seed) == Counters(db.billable, 0) == Counters(7, 0)

        # a completion from before the restart retried now (its reply was lost
        # in the restart) counts again: the next reconcile takes it back
        await b.complete(Lease(done.id, "acct", "s0", 0.0, period=P), billable=True)
        assert (await a.usage("acct", P, db.seed)).billable_used == 8
        again = await a.acquire("acct", "s4", PLAN, P, db.seed)  # while a session is live
        assert await a.reconcile("acct", P, db.seed)
        assert await b.usage("acct", P, db.seed) == Counters(7, 1)
        await a.release(again)
    finally:
        await a.close()
        await b.close()


async def test_figures_and_renewals_take_one_round_trip(redis_server):  # noqa: F811
    """rate_limits.updated's figures (after every session.created and
    response.done) and the renewal of all of a process's leases: one script
    call (round trip) each, whatever the number of leases and accounts."""
    adm = RedisAdmission(redis_server.url, lease_ttl_s=30)
    db = Database(billable=0)
    try:
        leases = [await adm.acquire(f"acct-{i % 7}", f"s{i}", PLAN, P, db.seed) for i in range(12)]
        await adm.rate_limit_figures("key", PLAN, "acct-0", P, db.seed)  # scripts loaded
        await adm.renew_many(leases[:1])

        async def commands() -> dict[str, int]:
            """Calls per command since the reset, scripts' own included (INFO
            and the reset left out)."""
            stats = await adm.redis.info("commandstats")
            return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()
                    if k not in ("cmdstat_info", "cmdstat_config|resetstat")}

        await adm.redis.config_resetstat()
        rate, usage = await adm.rate_limit_figures("key", PLAN, "acct-0", P, db.seed)
        assert usage == Counters(0, 2) and rate.remaining == PLAN.requests_per_minute
        # one EVALSHA; the rest are its script's own calls
        assert await commands() == {"evalsha": 1, "time": 1, "zremrangebyscore": 1, "zcard": 1,
                                    "get": 1, "hmget": 1}
        await adm.redis.config_resetstat()
        outcomes = await adm.renew_many(leases)
        assert set(outcomes.values()) == {"renewed"} and len(outcomes) == 12
        calls = await commands()
        assert calls["evalsha"] == 1 and calls["zscore"] == 12
        assert set(calls) <= {"evalsha", "time", "zremrangebyscore", "zscore", "zadd", "pexpire",
                              "sadd"}
    finally:
        await adm.close()

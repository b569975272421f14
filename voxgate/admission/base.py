"""Admission: may this request or session start? Monthly session quota,
concurrency per plan and requests per minute per API key.

The decision is one pure function (``voxgate.metering.rules.decide_admission``);
``voxgate.metering.rate.TokenBucket`` is the pure rate limiter. ``Admission``
is the interface the proxy calls, ``InProcessAdmission`` the single-process
implementation, ``voxgate.admission.redis.RedisAdmission`` the one shared by
several processes and hosts (``voxgate.admission.open_admission`` builds the
one the settings name).

Each admission holds, per account and period, the counters a quota needs:
``billable_used`` (billable sessions completed this period) and the leases
in flight (sessions admitted and not finished, reserved against the quota).
Reserving a session checks both against the plan and takes the lease in one
atomic step; finishing it (``complete``) turns the reservation into a
billable session or frees it, also in one step. So a burst, or sessions
ending while others start in other processes, can never overshoot a
hard-capped plan.

The database stays the source of truth: a period's ``billable_used`` is
seeded from it (``Seed``, the store's billable count) the first time it is
needed, and ``reconcile`` resets it to the database's count, sessions in
flight or not. Each billable completion bumps the period's sequence number; a
seed read while completions ran adds them (it may count one twice, never
miss one: the store writes a verdict before ``complete`` is called), and
``reconcile`` gives up when one ran. ``complete`` counts a billable session
once per lease, however often it is retried. Concurrency: sessions in flight
per account, held by leases that are released on every exit path and expire
(``lease_ttl_s``) if never renewed, e.g. when the holder died; every lease
names the instance that holds it, so ``release_instance`` frees a dead
instance's leases at once. ``renew_many`` renews a process's leases and puts
back a missing one (expired, or Redis restarted) only while the account's
concurrency has room, so that a restart never lets an account exceed it.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from voxgate.metering.rate import RateLimitState, TokenBucket
from voxgate.metering.rules import ACTIVE_STATUS, Ask, Counters, Refuse, decide_admission, rate_limited
from voxgate.models.plans import Plan

__all__ = [
    "Lease",
    "Admission",
    "InProcessAdmission",
    "Seed",
    "new_instance_id",
    "RENEWED",
    "RESTORED",
    "LOST",
]

Seed = Callable[[], Awaitable[int]]
"""Reads the database's billable sessions of one account and period."""

ACTIVE = ACTIVE_STATUS

# Outcomes of renewing a lease (``Admission.renew_many``)
RENEWED = "renewed"    # it was live: it expires lease_ttl_s from now
RESTORED = "restored"  # it was missing (expired, Redis restarted) and was put back
LOST = "lost"          # missing and the account had no room, or released: fence the session

BUCKET_IDLE_S = 120.0  # an in-process bucket idle this long is full again: dropped


def new_instance_id() -> str:
    """An instance id for a process that was given none."""
    return uuid.uuid4().hex[:12]


@dataclass(slots=True)
class Lease:
    """A concurrency slot (and a reservation against the quota) held by one
    session until completed, released or expired.

    Attributes:
        expires_at: when it expires unless renewed: monotonic seconds
            (in-process) or Redis time (Redis).
        released: completed or released through this object (a later
            ``renew_many`` finds it lost).
        period: the usage period (``"YYYY-MM"``) whose quota it reserves.
        instance_id: the admission instance (voxgate process) holding it.
        max_in_flight: the plan's concurrency when it was acquired (None =
            unbounded): ``renew_many`` puts a missing lease back only below it.
        billed: a billable completion of it was recorded (a retry counts
            nothing more).
    """

    id: str
    account_id: str
    session_id: str
    expires_at: float
    released: bool = False
    period: str = ""
    instance_id: str = ""
    max_in_flight: int | None = None
    billed: bool = False


class Admission(Protocol):
    """The admission interface. ``now`` is monotonic seconds."""

    instance_id: str
    lease_ttl_s: float

    async def check_rate(self, rate_key: str, plan: Plan, now: float) -> RateLimitState:
        """Count one request for ``rate_key``; the budget left after it.
        Raises ``RateLimited``."""

    async def peek_rate(self, rate_key: str, plan: Plan, now: float) -> RateLimitState:
        """The budget left for ``rate_key`` now, counting nothing (a key
        never seen has its full budget)."""

    async def usage(self, account_id: str, period: str, seed: Seed, now: float) -> Counters:
        """The account's counters: billable sessions of ``period`` (seeded
        from ``seed`` when not held yet) and sessions in flight."""

    async def acquire(self, account_id: str, session_id: str, plan: Plan, period: str,
                      seed: Seed, now: float, *, account_status: str = ACTIVE) -> Lease:
        """``decide`` a session and, when admitted, reserve it (a lease on
        the quota of ``period`` and a concurrency slot) in one atomic step.
        Raises the refusal: ``PermissionDenied``, ``ConcurrencyLimited``,
        ``QuotaExceeded``."""

    async def admit(self, rate_key: str, account_id: str, session_id: str, plan: Plan,
                    period: str, seed: Seed, now: float, *,
                    account_status: str = ACTIVE) -> tuple[RateLimitState, Lease, Counters]:
        """``check_rate`` then ``acquire`` in one step (one Redis round trip):
        the budget left, the lease and the account's counters with it (in
        flight counting it), which the first ``rate_limits.updated`` shows.
        Raises ``RateLimited`` (no lease taken) or ``acquire``'s refusal."""

    async def check_mint(self, rate_key: str, plan: Plan, account_id: str, period: str,
                         seed: Seed, now: float) -> tuple[RateLimitState, Counters]:
        """``check_rate`` then ``usage`` in one step (one Redis round trip),
        for minting an ephemeral key. Raises ``RateLimited``."""

    async def rate_limit_figures(self, rate_key: str, plan: Plan, account_id: str, period: str,
                                 seed: Seed, now: float) -> tuple[RateLimitState, Counters]:
        """``peek_rate`` and ``usage`` together, as ``rate_limits.updated``
        shows them: one Redis round trip (in-process: from memory, ``seed``
        read only when the period is not held yet)."""

    async def renew(self, lease: Lease, now: float) -> str:
        """``renew_many`` of one lease: ``RENEWED``, ``RESTORED`` or ``LOST``."""

    async def renew_many(self, leases: list[Lease], now: float) -> dict[str, str]:
        """Renew every lease (one round trip): lease id → ``RENEWED``;
        ``RESTORED`` when it was missing (expired, Redis restarted or
        flushed) and put back because the account's live leases were below
        ``lease.max_in_flight`` (or it is unbounded); ``LOST`` when missing
        without room, or released. The caller fences sessions whose lease is
        lost."""

    async def complete(self, lease: Lease, billable: bool) -> None:
        """The session ended: free its slot and, when ``billable``, count it
        in its period's ``billable_used`` (after the store recorded it).
        Idempotent per lease: a billable session counts once however often it
        is completed, and counts also when its lease already expired or was
        lost; a non-billable completion or release first does not stop a
        later billable one from counting."""

    async def release(self, lease: Lease) -> None:
        """Free the slot and the reservation, counting nothing. Idempotent."""

    async def reconcile(self, account_id: str, period: str, seed: Seed, now: float) -> bool:
        """Reset the period's ``billable_used`` to the database's count
        (``seed``) unless a billable session completed while it was read
        (sessions in flight do not matter); whether it did."""

    async def release_instance(self, instance_id: str) -> int:
        """Free every lease held by ``instance_id`` (a dead process); how many."""

    async def in_flight(self, account_id: str) -> int:
        """Sessions holding a live lease for the account."""

    async def close(self) -> None:
        """Release connections (nothing for the in-process implementation)."""


@dataclass(slots=True)
class _Period:
    """One account's counters in one period: ``used`` None until seeded."""

    used: int | None = None
    seq: int = 0


@dataclass
class InProcessAdmission:
    """Admission for one voxgate process. Every check-and-reserve runs
    without an ``await`` between the check and the reservation, so it is
    atomic on the event loop.

    Memory stays flat however many keys, accounts and months go by: a bucket
    idle for ``BUCKET_IDLE_S`` (full again by then) is dropped, period
    counters older than the previous month are dropped when a new month is
    first seen, and an account without leases holds no lease map. A lease is
    idempotent through its ``Lease`` object (the one ``acquire`` returned,
    which the process keeps until it completes it).

    Args:
        lease_ttl_s: a lease not renewed for this long is freed.
        instance_id: the id its leases carry.
    """

    lease_ttl_s: float = 90.0
    instance_id: str = field(default_factory=new_instance_id)
    _leases: dict[str, dict[str, Lease]] = field(default_factory=dict)
    _periods: dict[tuple[str, str], _Period] = field(default_factory=dict)
    # least recently taken first, so idle buckets are dropped from the front
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)
    _latest_period: str = ""

    async def check_rate(self, rate_key: str, plan: Plan, now: float) -> RateLimitState:
        bucket = self._buckets.pop(rate_key, None)
        if bucket is None:
            bucket = TokenBucket.full(plan.requests_per_minute, now)
        self._buckets[rate_key] = bucket  # to the back: the most recently taken
        wait = bucket.take(now, plan.requests_per_minute)
        self._drop_idle_buckets(now)
        if wait:
            raise rate_limited(plan, wait)
        return bucket.state(plan.requests_per_minute)

    async def peek_rate(self, rate_key: str, plan: Plan, now: float) -> RateLimitState:
        bucket = self._buckets.get(rate_key)
        limit = plan.requests_per_minute
        if bucket is None:
            return RateLimitState(limit, limit, 0.0)
        return bucket.peek(now, limit)

    async def usage(self, account_id: str, period: str, seed: Seed, now: float) -> Counters:
        counters = await self._seeded(account_id, period, seed)
        return Counters(counters.used or 0, len(self._live(account_id, now)))

    async def rate_limit_figures(self, rate_key: str, plan: Plan, account_id: str, period: str,
                                 seed: Seed, now: float) -> tuple[RateLimitState, Counters]:
        counters = await self._seeded(account_id, period, seed)
        return (await self.peek_rate(rate_key, plan, now),
                Counters(counters.used or 0, len(self._live(account_id, now))))

    async def acquire(self, account_id: str, session_id: str, plan: Plan, period: str,
                      seed: Seed, now: float, *, account_status: str = ACTIVE) -> Lease:
        counters = await self._seeded(account_id, period, seed)
        # from here to the insert: no await, so no other admission interleaves
        leases = self._live(account_id, now)
        decision = decide_admission(Ask.SESSION, plan, account_status,
                          Counters(counters.used or 0, len(leases)))
        if isinstance(decision, Refuse):
            raise decision.error
        lease = Lease(uuid.uuid4().hex, account_id, session_id, now + self.lease_ttl_s,
                      period=period, instance_id=self.instance_id,
                      max_in_flight=decision.bounds.max_in_flight)
        self._leases.setdefault(account_id, leases)[lease.id] = lease
        return lease

    async def admit(self, rate_key: str, account_id: str, session_id: str, plan: Plan,
                    period: str, seed: Seed, now: float, *,
                    account_status: str = ACTIVE) -> tuple[RateLimitState, Lease, Counters]:
        state = await self.check_rate(rate_key, plan, now)
        lease = await self.acquire(account_id, session_id, plan, period, seed, now,
                                   account_status=account_status)
        counters = self._periods[(account_id, period)]
        return state, lease, Counters(counters.used or 0, len(self._live(account_id, now)))

    async def check_mint(self, rate_key: str, plan: Plan, account_id: str, period: str,
                         seed: Seed, now: float) -> tuple[RateLimitState, Counters]:
        state = await self.check_rate(rate_key, plan, now)
        return state, await self.usage(account_id, period, seed, now)

    async def renew(self, lease: Lease, now: float) -> str:
        return (await self.renew_many([lease], now))[lease.id]

    async def renew_many(self, leases: list[Lease], now: float) -> dict[str, str]:
        out: dict[str, str] = {}
        for lease in leases:
            if lease.released:
                out[lease.id] = LOST
                continue
            live = self._live(lease.account_id, now)
            if lease.id in live:
                out[lease.id] = RENEWED
            elif lease.max_in_flight is None or len(live) < lease.max_in_flight:
                out[lease.id] = RESTORED  # expired while this process was paused
                self._leases.setdefault(lease.account_id, live)[lease.id] = lease
            else:
                out[lease.id] = LOST
                continue
            lease.expires_at = live[lease.id].expires_at = now + self.lease_ttl_s
        return out

    async def complete(self, lease: Lease, billable: bool) -> None:
        if lease.released and (lease.billed or not billable):
            return
        lease.released = True
        leases = self._leases.get(lease.account_id)
        if leases is not None:
            leases.pop(lease.id, None)
            if not leases:
                del self._leases[lease.account_id]
        if billable:
            lease.billed = True
            if lease.period:
                counters = self._period(lease.account_id, lease.period)
                counters.seq += 1
                if counters.used is not None:
                    counters.used += 1

    async def release(self, lease: Lease) -> None:
        await self.complete(lease, billable=False)

    async def reconcile(self, account_id: str, period: str, seed: Seed, now: float) -> bool:
        # the sequence number alone guards it: see RedisAdmission.reconcile
        counters = self._period(account_id, period)
        seq = counters.seq
        value = await seed()
        if counters.seq != seq:
            return False
        counters.used = value
        return True

    async def release_instance(self, instance_id: str) -> int:
        held = [lease for leases in self._leases.values() for lease in leases.values()
                if lease.instance_id == instance_id]
        for lease in held:
            await self.release(lease)
        return len(held)

    async def in_flight(self, account_id: str) -> int:
        return len(self._leases.get(account_id, ()))

    async def close(self) -> None:
        return None

    async def _seeded(self, account_id: str, period: str, seed: Seed) -> _Period:
        """The period's counters, ``used`` read from ``seed`` the first time
        (plus the billable completions that ran meanwhile)."""
        counters = self._period(account_id, period)
        if counters.used is None:
            seq = counters.seq
            value = await seed()
            if counters.used is None:
                counters.used = value + (counters.seq - seq)
        return counters

    def _period(self, account_id: str, period: str) -> _Period:
        """The counters of ``(account_id, period)``, made when missing; the
        first time a later period than any before is seen (a new month),
        those of periods before the previous month are dropped."""
        if period > self._latest_period:
            self._latest_period = period
            keep = _previous_period(period)
            for key in [key for key in self._periods if key[1] < keep]:
                del self._periods[key]
        counters = self._periods.get((account_id, period))
        if counters is None:
            counters = self._periods[(account_id, period)] = _Period()
        return counters

    def _live(self, account_id: str, now: float) -> dict[str, Lease]:
        """The account's unexpired leases (expired ones dropped); a new empty
        map, not stored, for an account without leases."""
        leases = self._leases.get(account_id)
        if leases is None:
            return {}
        expired = [k for k, lease in leases.items() if lease.expires_at <= now]
        for k in expired:
            del leases[k]  # not marked released: its completion still counts
        if not leases:
            del self._leases[account_id]
        return leases

    def _drop_idle_buckets(self, now: float) -> None:
        """Drop buckets not taken from for ``BUCKET_IDLE_S`` (they are full
        again, as a new one would be), oldest first."""
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            if now - bucket.updated_s < BUCKET_IDLE_S:
                return
            del self._buckets[key]


def _previous_period(period: str) -> str:
    """``"2026-01"`` → ``"2025-12"``; ``""`` for a period that is not
    ``YYYY-MM`` (nothing sorts before it, so nothing is dropped)."""
    if len(period) != 7 or period[4] != "-" or not (period[:4] + period[5:]).isdigit():
        return ""
    year, month = int(period[:4]), int(period[5:])
    return f"{year - 1}-12" if month == 1 else f"{year}-{month - 1:02d}"

"""Admission: may this request or session start? Monthly session quota,
concurrency per plan and requests per minute per API key.

The decision is one pure function (``voxgate.metering.decide.decide``);
``TokenBucket`` is the pure rate limiter. ``Admission`` is the interface the
proxy calls, ``InProcessAdmission`` the single-process implementation,
``voxgate.metering.redis_admission.RedisAdmission`` the one shared by
several processes and hosts.

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
needed, and ``reconcile`` resets it to the database's count when nothing is
in flight. Each billable completion bumps the period's sequence number; a
seed read while completions ran adds them (it may count one twice, never
miss one: the store writes a verdict before ``complete`` is called), and
``reconcile`` gives up when one ran. Concurrency: sessions in flight per
account, held by leases that are released on every exit path and expire
(``lease_ttl_s``) if never renewed, e.g. when the holder died; every lease
names the instance that holds it, so ``release_instance`` frees a dead
instance's leases at once.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from voxgate.metering.decide import Ask, Refuse, Usage, decide, rate_limited
from voxgate.models.plans import Plan

__all__ = [
    "Lease",
    "RateLimitState",
    "Admission",
    "InProcessAdmission",
    "TokenBucket",
    "Seed",
    "check_quota",
    "check_concurrency",
    "plan_rate_limits",
    "new_instance_id",
]

Seed = Callable[[], Awaitable[int]]
"""Reads the database's billable sessions of one account and period."""

ACTIVE = "active"


def new_instance_id() -> str:
    """An instance id for a process that was given none."""
    return uuid.uuid4().hex[:12]


def check_quota(plan: Plan, billable_used: int, in_flight: int) -> None:
    """Raise ``QuotaExceeded`` when a hard-capped plan has no session left:
    ``billable_used + in_flight ≥ sessions_included`` (``decide``)."""
    decision = decide(Ask.MINT, plan, ACTIVE, Usage(billable_used, in_flight))
    if isinstance(decision, Refuse):
        raise decision.error


def check_concurrency(plan: Plan, in_flight: int) -> None:
    """Raise ``ConcurrencyLimited`` when ``in_flight`` sessions already fill
    the plan's concurrency (``decide``, quota left out)."""
    decision = decide(Ask.SESSION, plan, ACTIVE, Usage(0, in_flight))
    if isinstance(decision, Refuse) and decision.error.code == "concurrency_limit_exceeded":
        raise decision.error


def _next_period_s(now_s: float) -> float:
    """Seconds from Unix time ``now_s`` to the start of the next usage
    period (the next calendar month, UTC)."""
    t = datetime.datetime.fromtimestamp(now_s, datetime.UTC)
    year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
    return datetime.datetime(year, month, 1, tzinfo=datetime.UTC).timestamp() - now_s


def plan_rate_limits(plan: Plan, rate: RateLimitState, billable_used: int, in_flight: int,
                     now_s: float) -> list[dict[str, Any]]:
    """The customer's own limits, as the entries of a GA ``rate_limits.updated``
    event (https://platform.openai.com/docs/api-reference/realtime-server-events/rate_limits/updated:
    ``name``, ``limit``, ``remaining``, ``reset_seconds``).

    The GA models (``openai`` and both Agents SDKs) accept only ``requests``
    and ``tokens`` as ``name`` and refuse the event otherwise, so:

    - ``name: "requests"``: the API key's requests per minute (``limit``),
      whole requests left now and seconds until the budget is full again;
    - no ``name``, ``voxgate_name: "sessions"``: the plan's included sessions
      this period (only when it has a number): ``remaining`` =
      included − billable so far − in progress (this one included),
      ``reset_seconds`` until the next period (calendar month, UTC);
    - no ``name``, ``voxgate_name: "concurrency"``: simultaneous sessions
      (only when the plan limits them): ``remaining`` = limit − in progress.

    ``now_s`` is Unix time (seconds).
    """
    limits: list[dict[str, Any]] = [{"name": "requests", "limit": rate.limit, "remaining": rate.remaining,
                                     "reset_seconds": round(rate.reset_s, 3)}]
    if plan.sessions_included is not None:
        limits.append({"voxgate_name": "sessions", "limit": plan.sessions_included,
                       "remaining": max(0, plan.sessions_included - billable_used - in_flight),
                       "reset_seconds": round(_next_period_s(now_s), 3)})
    if plan.concurrency is not None:
        limits.append({"voxgate_name": "concurrency", "limit": plan.concurrency,
                       "remaining": max(0, plan.concurrency - in_flight)})
    return limits


class RateLimitState(NamedTuple):
    """A key's request budget right after one request was counted, as the
    ``x-ratelimit-*-requests`` response headers carry it (OpenAI's rate-limit
    headers, https://platform.openai.com/docs/guides/rate-limits).

    Attributes:
        limit: requests per minute of the plan.
        remaining: whole requests that could be made now (0 when refused).
        reset_s: seconds until the bucket is full again.
    """

    limit: int
    remaining: int
    reset_s: float


@dataclass(slots=True)
class TokenBucket:
    """Requests-per-minute limiter: a bucket of ``capacity`` tokens refilled
    at ``capacity / 60`` tokens per second. Time is passed in (seconds)."""

    capacity: float
    tokens: float
    updated_s: float

    @classmethod
    def full(cls, per_minute: int, now_s: float) -> TokenBucket:
        return cls(float(per_minute), float(per_minute), now_s)

    def take(self, now_s: float, per_minute: int) -> float:
        """Take one token. Returns 0.0 when allowed, else the seconds until
        one is available (nothing taken)."""
        rate = per_minute / 60.0
        self.capacity = float(per_minute)
        elapsed = max(0.0, now_s - self.updated_s)
        self.tokens = min(self.capacity, self.tokens + elapsed * rate)
        self.updated_s = now_s
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate if rate > 0 else 60.0

    def peek(self, now_s: float, per_minute: int) -> RateLimitState:
        """The budget left at ``now_s``, refill included; nothing taken or
        changed."""
        rate = per_minute / 60.0
        elapsed = max(0.0, now_s - self.updated_s)
        tokens = min(float(per_minute), self.tokens + elapsed * rate)
        reset = (per_minute - tokens) / rate if rate > 0 else 60.0
        return RateLimitState(per_minute, max(0, int(tokens)), max(0.0, reset))

    def state(self, per_minute: int) -> RateLimitState:
        """The budget left as of the last ``take``."""
        rate = per_minute / 60.0
        reset = (self.capacity - self.tokens) / rate if rate > 0 else 60.0
        return RateLimitState(per_minute, max(0, int(self.tokens)), max(0.0, reset))


@dataclass(slots=True)
class Lease:
    """A concurrency slot (and a reservation against the quota) held by one
    session until completed, released or expired.

    Attributes:
        expires_at: when it expires unless renewed: monotonic seconds
            (in-process) or Redis time (Redis).
        period: the usage period (``"YYYY-MM"``) whose quota it reserves.
        instance_id: the admission instance (voxgate process) holding it.
    """

    id: str
    account_id: str
    session_id: str
    expires_at: float
    released: bool = False
    period: str = ""
    instance_id: str = ""


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

    async def usage(self, account_id: str, period: str, seed: Seed, now: float) -> Usage:
        """The account's counters: billable sessions of ``period`` (seeded
        from ``seed`` when not held yet) and sessions in flight."""

    async def acquire(self, account_id: str, session_id: str, plan: Plan, period: str,
                      seed: Seed, now: float, *, account_status: str = ACTIVE) -> Lease:
        """``decide`` a session and, when admitted, reserve it (a lease on
        the quota of ``period`` and a concurrency slot) in one atomic step.
        Raises the refusal: ``PermissionDenied``, ``ConcurrencyLimited``,
        ``QuotaExceeded``."""

    async def renew(self, lease: Lease, now: float) -> None: ...

    async def complete(self, lease: Lease, billable: bool) -> None:
        """The session ended: free its slot and, when ``billable``, count it
        in its period's ``billable_used`` (after the store recorded it).
        Idempotent."""

    async def release(self, lease: Lease) -> None:
        """Free the slot and the reservation, counting nothing. Idempotent."""

    async def reconcile(self, account_id: str, period: str, seed: Seed, now: float) -> bool:
        """Reset the period's ``billable_used`` to the database's count
        (``seed``) if no session of the account is in flight and none
        completed while it was read; whether it did."""

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

    Args:
        lease_ttl_s: a lease not renewed for this long is freed.
        instance_id: the id its leases carry.
    """

    lease_ttl_s: float = 90.0
    instance_id: str = field(default_factory=new_instance_id)
    _leases: dict[str, dict[str, Lease]] = field(default_factory=dict)
    _periods: dict[tuple[str, str], _Period] = field(default_factory=dict)
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)

    async def check_rate(self, rate_key: str, plan: Plan, now: float) -> RateLimitState:
        bucket = self._buckets.get(rate_key)
        if bucket is None:
            bucket = self._buckets[rate_key] = TokenBucket.full(plan.requests_per_minute, now)
        wait = bucket.take(now, plan.requests_per_minute)
        if wait:
            raise rate_limited(plan, wait)
        return bucket.state(plan.requests_per_minute)

    async def peek_rate(self, rate_key: str, plan: Plan, now: float) -> RateLimitState:
        bucket = self._buckets.get(rate_key)
        limit = plan.requests_per_minute
        if bucket is None:
            return RateLimitState(limit, limit, 0.0)
        return bucket.peek(now, limit)

    async def usage(self, account_id: str, period: str, seed: Seed, now: float) -> Usage:
        counters = await self._seeded(account_id, period, seed)
        return Usage(counters.used or 0, len(self._live(account_id, now)))

    async def acquire(self, account_id: str, session_id: str, plan: Plan, period: str,
                      seed: Seed, now: float, *, account_status: str = ACTIVE) -> Lease:
        counters = await self._seeded(account_id, period, seed)
        # from here to the insert: no await, so no other admission interleaves
        leases = self._live(account_id, now)
        decision = decide(Ask.SESSION, plan, account_status,
                          Usage(counters.used or 0, len(leases)))
        if isinstance(decision, Refuse):
            raise decision.error
        lease = Lease(uuid.uuid4().hex, account_id, session_id, now + self.lease_ttl_s,
                      period=period, instance_id=self.instance_id)
        leases[lease.id] = lease
        return lease

    async def renew(self, lease: Lease, now: float) -> None:
        if not lease.released:
            lease.expires_at = now + self.lease_ttl_s

    async def complete(self, lease: Lease, billable: bool) -> None:
        if lease.released:
            return
        lease.released = True
        leases = self._leases.get(lease.account_id)
        if leases is not None:
            leases.pop(lease.id, None)
            if not leases:
                del self._leases[lease.account_id]
        if billable:
            counters = self._periods.setdefault((lease.account_id, lease.period), _Period())
            counters.seq += 1
            if counters.used is not None:
                counters.used += 1

    async def release(self, lease: Lease) -> None:
        await self.complete(lease, billable=False)

    async def reconcile(self, account_id: str, period: str, seed: Seed, now: float) -> bool:
        counters = self._periods.setdefault((account_id, period), _Period())
        seq = counters.seq
        value = await seed()
        if counters.seq != seq or self._live(account_id, now):
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
        counters = self._periods.setdefault((account_id, period), _Period())
        if counters.used is None:
            seq = counters.seq
            value = await seed()
            if counters.used is None:
                counters.used = value + (counters.seq - seq)
        return counters

    def _live(self, account_id: str, now: float) -> dict[str, Lease]:
        leases = self._leases.setdefault(account_id, {})
        expired = [k for k, lease in leases.items() if lease.expires_at <= now]
        for k in expired:
            leases.pop(k).released = True
        return leases

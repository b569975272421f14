"""Admission: may this request or session start? Monthly session quota,
concurrency per plan and requests per minute per API key.

The rules are pure (``check_quota``, ``check_concurrency``, ``TokenBucket``);
``Admission`` is the interface the proxy calls, ``InProcessAdmission`` the
single-process implementation. A Redis implementation can follow behind the
same interface (leases as keys with a TTL, buckets as scripts).

Quota: billable sessions this period plus sessions in flight (reserved) must
stay under a hard-capped plan's ``sessions_included``, so a burst cannot
overshoot it. Concurrency: sessions in flight per account, held by leases
that are released on every exit path and expire (``lease_ttl_s``) if never
renewed, e.g. when the holder died.
"""

from __future__ import annotations

import asyncio
import datetime
import uuid
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from voxgate.errors import ConcurrencyLimited, QuotaExceeded, RateLimited
from voxgate.models.plans import Plan

__all__ = [
    "Lease",
    "RateLimitState",
    "Admission",
    "InProcessAdmission",
    "TokenBucket",
    "check_quota",
    "check_concurrency",
    "plan_rate_limits",
]


def check_quota(plan: Plan, billable_used: int, in_flight: int) -> None:
    """Raise ``QuotaExceeded`` when a hard-capped plan has no session left:
    ``billable_used + in_flight ≥ sessions_included``."""
    if plan.hard_cap and billable_used + in_flight >= (plan.sessions_included or 0):
        raise QuotaExceeded(
            f"monthly session quota of the {plan.name} plan is used up "
            f"({billable_used} billable, {in_flight} in progress, "
            f"{plan.sessions_included} included); upgrade to continue"
        )


def check_concurrency(plan: Plan, in_flight: int) -> None:
    """Raise ``ConcurrencyLimited`` when ``in_flight`` sessions already fill
    the plan's concurrency."""
    if plan.concurrency is not None and in_flight >= plan.concurrency:
        raise ConcurrencyLimited(
            f"the {plan.name} plan allows {plan.concurrency} simultaneous "
            f"session{'s' if plan.concurrency != 1 else ''}; end one or upgrade"
        )


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
    """A concurrency slot held by one session until released or expired.

    Attributes:
        expires_at: monotonic seconds; renew before then.
    """

    id: str
    account_id: str
    session_id: str
    expires_at: float
    released: bool = False


class Admission(Protocol):
    """The admission interface. ``now`` is monotonic seconds."""

    async def check_rate(self, rate_key: str, plan: Plan, now: float) -> RateLimitState:
        """Count one request for ``rate_key``; the budget left after it.
        Raises ``RateLimited``."""

    async def peek_rate(self, rate_key: str, plan: Plan, now: float) -> RateLimitState:
        """The budget left for ``rate_key`` now, counting nothing (a key
        never seen has its full budget)."""

    async def check_quota(self, account_id: str, plan: Plan, billable_used: int) -> None:
        """Raise ``QuotaExceeded`` if no session could start now."""

    async def acquire(
        self, account_id: str, session_id: str, plan: Plan, billable_used: int, now: float
    ) -> Lease:
        """Reserve quota and a concurrency slot. Raises ``QuotaExceeded``,
        ``ConcurrencyLimited``."""

    async def renew(self, lease: Lease, now: float) -> None: ...

    async def release(self, lease: Lease) -> None:
        """Free the slot and the reservation. Idempotent."""

    async def in_flight(self, account_id: str) -> int:
        """Sessions holding a live lease for the account."""

    async def close(self) -> None:
        """Release connections (nothing for the in-process implementation)."""


@dataclass
class InProcessAdmission:
    """Admission for one voxgate process.

    Args:
        lease_ttl_s: a lease not renewed for this long is freed.
    """

    lease_ttl_s: float = 90.0
    _leases: dict[str, dict[str, Lease]] = field(default_factory=dict)
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def check_rate(self, rate_key: str, plan: Plan, now: float) -> RateLimitState:
        bucket = self._buckets.get(rate_key)
        if bucket is None:
            bucket = self._buckets[rate_key] = TokenBucket.full(plan.requests_per_minute, now)
        wait = bucket.take(now, plan.requests_per_minute)
        if wait:
            raise RateLimited(
                f"rate limit of {plan.requests_per_minute} requests per minute reached "
                f"for this API key; retry in {wait:.1f} s",
                retry_after_s=wait,
            )
        return bucket.state(plan.requests_per_minute)

    async def peek_rate(self, rate_key: str, plan: Plan, now: float) -> RateLimitState:
        bucket = self._buckets.get(rate_key)
        limit = plan.requests_per_minute
        if bucket is None:
            return RateLimitState(limit, limit, 0.0)
        return bucket.peek(now, limit)

    async def check_quota(self, account_id: str, plan: Plan, billable_used: int) -> None:
        check_quota(plan, billable_used, len(self._leases.get(account_id, ())))

    async def acquire(
        self, account_id: str, session_id: str, plan: Plan, billable_used: int, now: float
    ) -> Lease:
        leases = self._live(account_id, now)
        check_concurrency(plan, len(leases))
        check_quota(plan, billable_used, len(leases))
        lease = Lease(uuid.uuid4().hex, account_id, session_id, now + self.lease_ttl_s)
        leases[lease.id] = lease
        return lease

    async def renew(self, lease: Lease, now: float) -> None:
        if not lease.released:
            lease.expires_at = now + self.lease_ttl_s

    async def release(self, lease: Lease) -> None:
        if lease.released:
            return
        lease.released = True
        leases = self._leases.get(lease.account_id)
        if leases is not None:
            leases.pop(lease.id, None)
            if not leases:
                del self._leases[lease.account_id]

    async def in_flight(self, account_id: str) -> int:
        return len(self._leases.get(account_id, ()))

    async def close(self) -> None:
        return None

    def _live(self, account_id: str, now: float) -> dict[str, Lease]:
        leases = self._leases.setdefault(account_id, {})
        expired = [k for k, lease in leases.items() if lease.expires_at <= now]
        for k in expired:
            leases.pop(k).released = True
        return leases

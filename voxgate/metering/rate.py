"""Request rates and the limits a customer is told: ``TokenBucket``, the
pure requests-per-minute limiter (time passed in, seconds), the budget it
leaves (``RateLimitState``, as the ``x-ratelimit-*-requests`` headers carry
it), ``plan_rate_limits``, the entries of a ``rate_limits.updated``
event, and ``SlidingWindow``, at most N events per key in any window (the
dashboard's and the billing webhook's per-IP limits). No I/O, no clock: ``voxgate.admission`` keeps the buckets (in the
process or in Redis).
"""

from __future__ import annotations

import datetime
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, NamedTuple

from voxgate.models.plans import Plan

__all__ = ["TokenBucket", "RateLimitState", "plan_rate_limits", "SlidingWindow"]


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


class SlidingWindow:
    """At most ``limit`` events per key in any ``window_s`` seconds.

    Memory is bounded: at most ``max_keys`` keys (the least recently used
    key is forgotten first), each with at most ``limit`` timestamps.

    Args:
        limit: events allowed per window (≥ 1).
        window_s: window length, in seconds.
        max_keys: keys remembered at most.

    Raises:
        ValueError: ``limit`` < 1, ``window_s`` ≤ 0 or ``max_keys`` < 1.
    """

    def __init__(self, limit: int, window_s: float, max_keys: int = 10_000) -> None:
        if limit < 1 or window_s <= 0 or max_keys < 1:
            raise ValueError("limit and max_keys must be ≥ 1 and window_s > 0")
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._events)

    def _live(self, key: str, now: float) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        while events and events[0] <= now - self.window_s:
            events.popleft()
        if not events:
            del self._events[key]
            return None
        self._events.move_to_end(key)
        return events

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until ``key`` may have one more event (0.0: it may now)."""
        events = self._live(key, now)
        if events is None or len(events) < self.limit:
            return 0.0
        return max(0.0, events[0] + self.window_s - now)

    def record(self, key: str, now: float) -> int:
        """Count one event of ``key`` at ``now``; returns the events in the
        window, this one included (at most ``limit`` are kept)."""
        events = self._live(key, now)
        if events is None:
            events = self._events[key] = deque(maxlen=self.limit)
            while len(self._events) > self.max_keys:
                self._events.popitem(last=False)
        events.append(now)
        return len(events)

    def hit(self, key: str, now: float) -> float:
        """Count an event unless the window is full: 0.0 when counted, else
        the seconds to wait (nothing counted)."""
        wait = self.retry_after(key, now)
        if wait <= 0:
            self.record(key, now)
        return wait

    def clear(self, key: str) -> None:
        self._events.pop(key, None)

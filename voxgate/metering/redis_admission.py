"""Admission shared by several voxgate processes, in Redis.

The same rules as ``InProcessAdmission`` (``check_quota``,
``check_concurrency``, a requests-per-minute token bucket), held in Redis so
that every process behind a load balancer sees the same leases and buckets.
Each decision is one Lua script (atomic on the server) that reads Redis's own
clock (``TIME``), so processes with skewed clocks still agree.

Keys (``prefix`` defaults to ``voxgate:``):

- ``{prefix}leases:{account_id}`` — sorted set, member = lease id, score =
  expiry (Redis time, seconds). Expired members are dropped before every
  count, so a lease whose process died frees itself after ``lease_ttl_s``.
- ``{prefix}rate:{rate_key}`` — hash ``{tokens, ts}``; expires after two idle
  minutes. ``peek_rate`` reads it (refill included) and writes nothing.

Follows the Redis scripting model (https://redis.io/docs/latest/develop/interact/programmability/eval-intro/).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from redis.asyncio import BlockingConnectionPool, Redis

from voxgate.errors import RateLimited
from voxgate.metering.admission import Lease, RateLimitState, check_concurrency, check_quota
from voxgate.models.plans import Plan

__all__ = ["RedisAdmission"]

# KEYS[1] leases; ARGV lease_id, ttl_s, concurrency (-1 = unlimited),
# cap (-1 = no hard cap, else included sessions), billable_used.
# → {status, in_flight, expires_at}: status 0 admitted, 1 concurrency, 2 quota.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
local concurrency = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
if concurrency >= 0 and n >= concurrency then return {1, n, '0'} end
if cap >= 0 and tonumber(ARGV[5]) + n >= cap then return {2, n, '0'} end
local expires = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], expires, ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 2000))
return {0, n + 1, tostring(expires)}
"""

# KEYS[1] leases; ARGV lease_id, ttl_s → 1 renewed, 0 gone
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 2000))
return 1
"""

# KEYS[1] leases → live lease count
_COUNT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""

# KEYS[1] bucket; ARGV per_minute → {seconds to wait (0 = allowed), tokens left},
# as strings
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local cap = tonumber(ARGV[1])
local rate = cap / 60.0
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or cap
local ts = tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 elseif rate > 0 then wait = (1 - tokens) / rate else wait = 60 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], 120000)
return {tostring(wait), tostring(tokens)}
"""

# KEYS[1] bucket; ARGV per_minute → tokens left now (as a string); read-only
_PEEK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local cap = tonumber(ARGV[1])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or cap
local ts = tonumber(b[2]) or now
return tostring(math.min(cap, tokens + math.max(0, now - ts) * cap / 60.0))
"""


@dataclass
class RedisAdmission:
    """``Admission`` in Redis. ``now`` arguments are ignored: Redis's clock
    decides, so all processes agree.

    Args:
        url: ``redis://host:port/db``.
        lease_ttl_s: a lease not renewed for this long is freed.
        prefix: key prefix (several deployments can share one Redis).
        max_connections: connections the process keeps to Redis at most
            (a ``redis.asyncio.BlockingConnectionPool``: a burst waits for a
            free connection instead of failing).
        pool_timeout_s: how long a command waits for a free connection, and
            for Redis to accept or answer, before it fails.

    Raises (from every method): ``redis.exceptions.ConnectionError`` (also
    when no connection frees within ``pool_timeout_s``) or
    ``redis.exceptions.TimeoutError`` when Redis is unreachable or too slow;
    the proxy answers such requests with a 503 ``service_unavailable``
    (``voxgate.errors.dependency_error``).
    """

    url: str
    lease_ttl_s: float = 90.0
    prefix: str = "voxgate:"
    max_connections: int = 50
    pool_timeout_s: float = 5.0
    _redis: Redis | None = field(default=None, repr=False)

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            pool = BlockingConnectionPool.from_url(
                self.url, decode_responses=True, max_connections=self.max_connections,
                timeout=self.pool_timeout_s, socket_connect_timeout=self.pool_timeout_s,
                socket_timeout=self.pool_timeout_s)
            self._redis = Redis(connection_pool=pool)
            self._acquire = self._redis.register_script(_ACQUIRE)
            self._renew = self._redis.register_script(_RENEW)
            self._count = self._redis.register_script(_COUNT)
            self._take = self._redis.register_script(_TAKE)
            self._peek = self._redis.register_script(_PEEK)
        return self._redis

    def _leases_key(self, account_id: str) -> str:
        return f"{self.prefix}leases:{account_id}"

    async def check_rate(self, rate_key: str, plan: Plan, now: float = 0.0) -> RateLimitState:
        _ = self.redis
        wait_s, tokens_s = await self._take(keys=[f"{self.prefix}rate:{rate_key}"],
                                            args=[plan.requests_per_minute])
        wait, tokens = float(wait_s), float(tokens_s)
        if wait:
            raise RateLimited(
                f"rate limit of {plan.requests_per_minute} requests per minute reached "
                f"for this API key; retry in {wait:.1f} s",
                retry_after_s=wait,
            )
        return _state(plan.requests_per_minute, tokens)

    async def peek_rate(self, rate_key: str, plan: Plan, now: float = 0.0) -> RateLimitState:
        _ = self.redis
        tokens = float(await self._peek(keys=[f"{self.prefix}rate:{rate_key}"],
                                        args=[plan.requests_per_minute]))
        return _state(plan.requests_per_minute, tokens)

    async def check_quota(self, account_id: str, plan: Plan, billable_used: int) -> None:
        check_quota(plan, billable_used, await self.in_flight(account_id))

    async def acquire(
        self, account_id: str, session_id: str, plan: Plan, billable_used: int, now: float = 0.0
    ) -> Lease:
        _ = self.redis
        lease_id = uuid.uuid4().hex
        cap = (plan.sessions_included or 0) if plan.hard_cap else -1
        status, n, expires = await self._acquire(
            keys=[self._leases_key(account_id)],
            args=[lease_id, self.lease_ttl_s,
                  -1 if plan.concurrency is None else plan.concurrency, cap, billable_used],
        )
        if status == 1:
            check_concurrency(plan, int(n))  # raises with the rule's message
        if status == 2:
            check_quota(plan, billable_used, int(n))
        return Lease(lease_id, account_id, session_id, float(expires))

    async def renew(self, lease: Lease, now: float = 0.0) -> None:
        if lease.released:
            return
        _ = self.redis
        await self._renew(keys=[self._leases_key(lease.account_id)],
                          args=[lease.id, self.lease_ttl_s])

    async def release(self, lease: Lease) -> None:
        if lease.released:
            return
        lease.released = True
        await self.redis.zrem(self._leases_key(lease.account_id), lease.id)

    async def in_flight(self, account_id: str) -> int:
        _ = self.redis
        return int(await self._count(keys=[self._leases_key(account_id)]))

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose(close_connection_pool=True)
            self._redis = None


def _state(limit: int, tokens: float) -> RateLimitState:
    reset = (limit - tokens) * 60.0 / limit if limit > 0 else 60.0
    return RateLimitState(limit, max(0, int(tokens)), max(0.0, reset))

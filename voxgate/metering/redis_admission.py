"""Admission shared by several voxgate processes, in Redis.

The same decision as ``InProcessAdmission`` (``voxgate.metering.decide``)
over counters held in Redis, so that every process behind a load balancer
sees the same leases, period counters and buckets. Each check-and-reserve is
one Lua script (atomic on the server): it re-checks the decision's
``Bounds`` against the live counters and takes the lease only if they hold;
when they do not, ``decide`` applied to the counters the script saw gives
the refusal. Scripts read Redis's own clock (``TIME``), so processes with
skewed clocks still agree.

Keys (``prefix`` defaults to ``voxgate:``):

- ``{prefix}leases:{account_id}`` — sorted set, member = lease id, score =
  expiry (Redis time, seconds). Expired members are dropped before every
  count, so a lease whose process died frees itself after ``lease_ttl_s``.
- ``{prefix}used:{account_id}:{period}`` — billable sessions of the period;
  seeded from the database when missing, incremented by each billable
  completion, reset to the database's count by ``reconcile`` (40-day TTL).
- ``{prefix}seq:{account_id}:{period}`` — billable completions of the period
  (sequence number guarding seeds and reconciles).
- ``{prefix}instance:{instance_id}`` — set of ``"{account_id} {lease_id}"``:
  the leases an instance holds, so ``release_instance`` frees a dead
  instance's leases at once.
- ``{prefix}rate:{rate_key}`` — hash ``{tokens, ts}``; expires after two idle
  minutes. ``peek_rate`` reads it (refill included) and writes nothing.

One Redis server (or a primary with replicas), not Redis Cluster: scripts
touch keys of one account and of one instance together.

Follows the Redis scripting model (https://redis.io/docs/latest/develop/interact/programmability/eval-intro/).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from redis.asyncio import BlockingConnectionPool, Redis

from voxgate.metering.admission import ACTIVE, Lease, RateLimitState, Seed, new_instance_id
from voxgate.metering.decide import Ask, Refuse, Usage, decide, rate_limited
from voxgate.models.plans import Plan

__all__ = ["RedisAdmission"]

PERIOD_TTL_S = 40 * 86400  # period counters outlive their month

# Shared head of the scripts reading the counters. KEYS[1] leases, KEYS[2]
# used, KEYS[3] seq; ARGV[1] seed ('' = none), ARGV[2] the seq read with the
# seed's first attempt, ARGV[3] need ('1' = the period's used count is
# needed). Sets now, n (live leases), used (-1 when not needed and not held);
# returns {3, n, -1, seq} when it must be seeded first.
_COUNTERS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
local used = redis.call('GET', KEYS[2])
if used then
  used = tonumber(used)
elseif ARGV[3] ~= '1' then
  used = -1
else
  local seq = tonumber(redis.call('GET', KEYS[3]) or '0')
  if ARGV[1] == '' then return {3, n, -1, tostring(seq)} end
  -- billable completions since the seed's seq was read may be missing from it
  used = tonumber(ARGV[1]) + math.max(0, seq - tonumber(ARGV[2]))
  redis.call('SET', KEYS[2], used, 'EX', PERIOD_TTL_S)
end
""".replace("PERIOD_TTL_S", str(PERIOD_TTL_S))

# KEYS[4] instance set; ARGV[4] lease id, ARGV[5] ttl_s, ARGV[6] max in
# flight (-1 = unbounded), ARGV[7] max sessions (-1 = unbounded), ARGV[8]
# instance member. → {status, n, used, expires}: 0 admitted (n counts it),
# 1 concurrency, 2 quota, 3 seed first.
_ACQUIRE = _COUNTERS + """
local max_in_flight = tonumber(ARGV[6])
local max_sessions = tonumber(ARGV[7])
if max_in_flight >= 0 and n >= max_in_flight then return {1, n, used, '0'} end
if max_sessions >= 0 and used + n >= max_sessions then return {2, n, used, '0'} end
local expires = now + tonumber(ARGV[5])
local ttl_ms = math.ceil(tonumber(ARGV[5]) * 2000)
redis.call('ZADD', KEYS[1], expires, ARGV[4])
redis.call('PEXPIRE', KEYS[1], ttl_ms)
redis.call('SADD', KEYS[4], ARGV[8])
redis.call('PEXPIRE', KEYS[4], ttl_ms)
return {0, n + 1, used, tostring(expires)}
"""

# → {0, n, used, ''} or {3, n, -1, seq}
_USAGE = _COUNTERS + """
return {0, n, used, ''}
"""

# KEYS[1] leases, KEYS[2] instance set; ARGV lease_id, ttl_s → 1 renewed, 0 gone
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local ttl_ms = math.ceil(tonumber(ARGV[2]) * 2000)
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl_ms)
redis.call('PEXPIRE', KEYS[2], ttl_ms)
return 1
"""

# KEYS[1] leases, KEYS[2] used, KEYS[3] seq, KEYS[4] instance set; ARGV
# lease_id, billable ('1'/'0'), instance member → 1 if the lease was live
_COMPLETE = """
local live = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[3])
if ARGV[2] == '1' then
  redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], PERIOD_TTL_S)
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCR', KEYS[2]) end
end
return live
""".replace("PERIOD_TTL_S", str(PERIOD_TTL_S))

# KEYS[1] leases, KEYS[2] used, KEYS[3] seq; ARGV the database's count, the
# seq read before it → 1 reset, 0 left (sessions in flight, or a completion ran)
_RECONCILE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) > 0 then return 0 end
if tonumber(redis.call('GET', KEYS[3]) or '0') ~= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'EX', PERIOD_TTL_S)
return 1
""".replace("PERIOD_TTL_S", str(PERIOD_TTL_S))

# KEYS[1] instance set; ARGV[1] prefix → leases freed
_RELEASE_INSTANCE = """
local members = redis.call('SMEMBERS', KEYS[1])
for _, m in ipairs(members) do
  local sep = string.find(m, ' ', 1, true)
  redis.call('ZREM', ARGV[1] .. 'leases:' .. string.sub(m, 1, sep - 1), string.sub(m, sep + 1))
end
redis.call('DEL', KEYS[1])
return #members
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

SEED_FIRST = 3


@dataclass
class RedisAdmission:
    """``Admission`` in Redis. ``now`` arguments are ignored: Redis's clock
    decides, so all processes agree.

    Args:
        url: ``redis://host:port/db``.
        lease_ttl_s: a lease not renewed for this long is freed.
        prefix: key prefix (several deployments can share one Redis).
        instance_id: the id its leases carry (``Settings.instance_id``).
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
    instance_id: str = field(default_factory=new_instance_id)
    _redis: Redis | None = field(default=None, repr=False)


    @property
    def redis(self) -> Redis:
        if self._redis is None:
            pool = BlockingConnectionPool.from_url(
                self.url, decode_responses=True, max_connections=self.max_connections,
                timeout=self.pool_timeout_s, socket_connect_timeout=self.pool_timeout_s,
                socket_timeout=self.pool_timeout_s)
            self._redis = Redis(connection_pool=pool)
            self._register_scripts(self._redis)
        return self._redis

    def _register_scripts(self, redis: Redis) -> None:
        self._acquire = redis.register_script(_ACQUIRE)
        self._usage = redis.register_script(_USAGE)
        self._renew = redis.register_script(_RENEW)
        self._complete = redis.register_script(_COMPLETE)
        self._reconcile = redis.register_script(_RECONCILE)
        self._release_instance = redis.register_script(_RELEASE_INSTANCE)
        self._count = redis.register_script(_COUNT)
        self._take = redis.register_script(_TAKE)
        self._peek = redis.register_script(_PEEK)

    def _leases_key(self, account_id: str) -> str:
        return f"{self.prefix}leases:{account_id}"

    def _counter_keys(self, account_id: str, period: str) -> list[str]:
        return [self._leases_key(account_id), f"{self.prefix}used:{account_id}:{period}",
                f"{self.prefix}seq:{account_id}:{period}"]

    def _instance_key(self, instance_id: str) -> str:
        return f"{self.prefix}instance:{instance_id}"

    async def check_rate(self, rate_key: str, plan: Plan, now: float = 0.0) -> RateLimitState:
        _ = self.redis
        wait_s, tokens_s = await self._take(keys=[f"{self.prefix}rate:{rate_key}"],
                                            args=[plan.requests_per_minute])
        wait, tokens = float(wait_s), float(tokens_s)
        if wait:
            raise rate_limited(plan, wait)
        return _state(plan.requests_per_minute, tokens)

    async def peek_rate(self, rate_key: str, plan: Plan, now: float = 0.0) -> RateLimitState:
        _ = self.redis
        tokens = float(await self._peek(keys=[f"{self.prefix}rate:{rate_key}"],
                                        args=[plan.requests_per_minute]))
        return _state(plan.requests_per_minute, tokens)

    async def _seeded(self, script, keys: list[str], args: list, need: bool, seed: Seed) -> list:
        """Run a counters script; when the period's count is needed and not
        held, read ``seed`` and run it again with it (at most once more: the
        second run seeds whatever ran meanwhile)."""
        flag = "1" if need else "0"
        result = await script(keys=keys, args=["", "0", flag, *args])
        if result[0] == SEED_FIRST:
            result = await script(keys=keys, args=[await seed(), result[3], flag, *args])
        return result

    async def usage(self, account_id: str, period: str, seed: Seed, now: float = 0.0) -> Usage:
        _ = self.redis
        _, n, used, _ = await self._seeded(self._usage, self._counter_keys(account_id, period),
                                           [], True, seed)
        return Usage(max(0, int(used)), int(n))

    async def acquire(self, account_id: str, session_id: str, plan: Plan, period: str,
                      seed: Seed, now: float = 0.0, *, account_status: str = ACTIVE) -> Lease:
        # what no counter can change (a closed account, a plan allowing nothing) first
        decision = decide(Ask.SESSION, plan, account_status, Usage())
        if isinstance(decision, Refuse):
            raise decision.error
        limits = decision.bounds
        _ = self.redis
        lease_id = uuid.uuid4().hex
        status, n, used, expires = await self._seeded(
            self._acquire,
            [*self._counter_keys(account_id, period), self._instance_key(self.instance_id)],
            [lease_id, self.lease_ttl_s,
             -1 if limits.max_in_flight is None else limits.max_in_flight,
             -1 if limits.max_sessions is None else limits.max_sessions,
             f"{account_id} {lease_id}"],
            limits.max_sessions is not None, seed)
        if status != 0:
            refused = decide(Ask.SESSION, plan, account_status, Usage(max(0, int(used)), int(n)))
            if not isinstance(refused, Refuse):
                raise RuntimeError(f"admission script refused ({status}) what decide admits")
            raise refused.error
        return Lease(lease_id, account_id, session_id, float(expires), period=period,
                     instance_id=self.instance_id)

    async def renew(self, lease: Lease, now: float = 0.0) -> None:
        if lease.released:
            return
        _ = self.redis
        await self._renew(keys=[self._leases_key(lease.account_id),
                                self._instance_key(lease.instance_id or self.instance_id)],
                          args=[lease.id, self.lease_ttl_s])

    async def complete(self, lease: Lease, billable: bool) -> None:
        if lease.released:
            return
        _ = self.redis
        await self._complete(
            keys=[*self._counter_keys(lease.account_id, lease.period or "-"),
                  self._instance_key(lease.instance_id or self.instance_id)],
            args=[lease.id, "1" if billable and lease.period else "0",
                  f"{lease.account_id} {lease.id}"])
        lease.released = True

    async def release(self, lease: Lease) -> None:
        await self.complete(lease, billable=False)

    async def reconcile(self, account_id: str, period: str, seed: Seed, now: float = 0.0) -> bool:
        keys = self._counter_keys(account_id, period)
        seq = await self.redis.get(keys[2]) or "0"
        value = await seed()
        return bool(await self._reconcile(keys=keys, args=[value, seq]))

    async def release_instance(self, instance_id: str) -> int:
        _ = self.redis
        return int(await self._release_instance(keys=[self._instance_key(instance_id)],
                                                args=[self.prefix]))

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

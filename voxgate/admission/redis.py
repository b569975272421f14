"""Admission shared by several voxgate processes, in Redis.

The same decision as ``InProcessAdmission`` (``voxgate.metering.rules``)
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
- ``{prefix}done:{lease_id}`` — ``"1"`` once a billable completion of the
  lease was counted, ``"0"`` once it was completed non-billable or released
  (``done_ttl_s``, one day by default): a retried completion counts nothing
  more, a released lease is not restored by ``renew_many``.
- ``{prefix}instance:{instance_id}`` — set of ``"{account_id} {lease_id}"``:
  the leases an instance holds, so ``release_instance`` frees a dead
  instance's leases at once.
- ``{prefix}rate:{rate_key}`` — hash ``{tokens, ts}``; expires after two idle
  minutes. ``peek_rate`` reads it (refill included) and writes nothing.

After a Redis restart (or flush) every key is gone: the period counters are
seeded again from the database on their next use, the live sessions' leases
are put back by their holders' next ``renew_many`` while the account's
concurrency has room, and the buckets start full. Completions recorded
before the restart are counted once (in the seed); one retried across it (its
reply lost in the restart) counts once more, until the next ``reconcile``.

One Redis server (or a primary with replicas), not Redis Cluster: scripts
touch keys of one account and of one instance together, and ``renew_many``
those of several accounts.

Follows the Redis scripting model (https://redis.io/docs/latest/develop/interact/programmability/eval-intro/).
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.commands.core import AsyncScript

from voxgate.admission.base import (
    ACTIVE,
    LOST,
    RENEWED,
    RESTORED,
    Lease,
    Seed,
    new_instance_id,
)
from voxgate.errors import ServiceUnavailable
from voxgate.metering.rate import RateLimitState
from voxgate.metering.rules import Ask, Counters, Refuse, decide_admission, rate_limited
from voxgate.models.plans import Plan

__all__ = ["RedisAdmission", "UNAVAILABLE"]

PERIOD_TTL_S = 40 * 86400  # period counters outlive their month
RENEW_BATCH = 300  # leases per renew_many script (a bigger list takes several round trips)
UNAVAILABLE = "admission (Redis) is unavailable; retry shortly"

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
# 1 concurrency, 2 quota, 3 seed first. _LEASE is the decision and the lease
# after the counters (EXTRA: values more to return).
_LEASE = """
local max_in_flight = tonumber(ARGV[6])
local max_sessions = tonumber(ARGV[7])
if max_in_flight >= 0 and n >= max_in_flight then return {1, n, used, '0'EXTRA} end
if max_sessions >= 0 and used + n >= max_sessions then return {2, n, used, '0'EXTRA} end
local expires = now + tonumber(ARGV[5])
local ttl_ms = math.ceil(tonumber(ARGV[5]) * 2000)
redis.call('ZADD', KEYS[1], expires, ARGV[4])
redis.call('PEXPIRE', KEYS[1], ttl_ms)
redis.call('SADD', KEYS[4], ARGV[8])
redis.call('PEXPIRE', KEYS[4], ttl_ms)
return {0, n + 1, used, tostring(expires)EXTRA}
"""
_ACQUIRE = _COUNTERS + _LEASE.replace("EXTRA", "")

# Takes one token from the bucket KEYS[k] (per minute ARGV[a]) once the
# counters are seeded: sets wait (s, 0 = allowed) and tokens (left after it).
_TAKE_TOKEN = """
local cap = tonumber(ARGV[RATE_ARG])
local rate = cap / 60.0
local b = redis.call('HMGET', KEYS[RATE_KEY], 'tokens', 'ts')
local tokens = tonumber(b[1]) or cap
local ts = tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 elseif rate > 0 then wait = (1 - tokens) / rate else wait = 60 end
redis.call('HSET', KEYS[RATE_KEY], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[RATE_KEY], 120000)
"""

# A mint's check in one step: the counters, then one request counted.
# KEYS[4] bucket; ARGV[4] per_minute → {0, n, used, wait, tokens} (wait > 0:
# rate limited) or {3, n, -1, seq}.
_CHECK_MINT = _COUNTERS + _TAKE_TOKEN.replace("RATE_KEY", "4").replace("RATE_ARG", "4") + """
return {0, n, used, tostring(wait), tostring(tokens)}
"""

# A session's admission in one step: the counters, one request counted, then
# _ACQUIRE's decision and lease. KEYS[5] bucket; ARGV[9] per_minute →
# {status, n, used, expires, tokens, wait}: status 0 admitted (n counts it),
# 1 concurrency, 2 quota, 3 seed first, 4 rate limited.
_ADMIT = (_COUNTERS + _TAKE_TOKEN.replace("RATE_KEY", "5").replace("RATE_ARG", "9")
          + "if wait > 0 then return {4, n, used, '0', tostring(tokens), tostring(wait)} end\n"
          + _LEASE.replace("EXTRA", ", tostring(tokens), '0'"))

# → {0, n, used, ''} or {3, n, -1, seq}
_USAGE = _COUNTERS + """
return {0, n, used, ''}
"""

# The figures of rate_limits.updated. KEYS[4] bucket; ARGV[4] per_minute →
# {0, n, used, tokens left now (a string)} or {3, n, -1, seq}; writes only a
# missing period count (the seed), never the bucket.
_RATE_FIGURES = _COUNTERS + """
local cap = tonumber(ARGV[4])
local b = redis.call('HMGET', KEYS[4], 'tokens', 'ts')
local tokens = tonumber(b[1]) or cap
local ts = tonumber(b[2]) or now
return {0, n, used, tostring(math.min(cap, tokens + math.max(0, now - ts) * cap / 60.0))}
"""

# Per lease i (from 0): KEYS[3i+1] leases, KEYS[3i+2] instance set, KEYS[3i+3]
# done marker; ARGV[1] ttl_s, ARGV[3i+2] lease id, ARGV[3i+3] max in flight
# (-1 = unbounded), ARGV[3i+4] instance member. → {now, code, code, ...} with
# code 1 renewed, 2 restored (missing, not done, and the account had room),
# 0 lost. In order, so two missing leases of one account see each other.
_RENEW_MANY = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local ttl = tonumber(ARGV[1])
local ttl_ms = math.ceil(ttl * 2000)
local out = {tostring(now)}
for i = 0, #KEYS / 3 - 1 do
  local leases, instance, done = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local id, max_in_flight = ARGV[3 * i + 2], tonumber(ARGV[3 * i + 3])
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  local code = 0
  if redis.call('ZSCORE', leases, id) then
    code = 1
  elseif redis.call('EXISTS', done) == 0
      and (max_in_flight < 0 or redis.call('ZCARD', leases) < max_in_flight) then
    code = 2
  end
  if code > 0 then
    redis.call('ZADD', leases, now + ttl, id)
    redis.call('PEXPIRE', leases, ttl_ms)
    redis.call('SADD', instance, ARGV[3 * i + 4])
    redis.call('PEXPIRE', instance, ttl_ms)
  end
  out[#out + 1] = code
end
return out
"""

# KEYS[1] leases, KEYS[2] used, KEYS[3] seq, KEYS[4] instance set, KEYS[5]
# done marker; ARGV lease_id, billable ('1'/'0'), instance member, done TTL
# (s) → 1 if it counted a billable session. Idempotent per lease id: counts a
# billable session once, whether the lease is live, expired or lost in a
# restart; a non-billable completion or release first ('0') does not stop a
# later billable one (a fenced instance's final record upgrading its session).
_COMPLETE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[3])
local done = redis.call('GET', KEYS[5])
if done == '1' or (done and ARGV[2] ~= '1') then return 0 end
redis.call('SET', KEYS[5], ARGV[2], 'EX', ARGV[4])
if ARGV[2] ~= '1' then return 0 end
redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], PERIOD_TTL_S)
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCR', KEYS[2]) end
return 1
""".replace("PERIOD_TTL_S", str(PERIOD_TTL_S))

# KEYS[1] used, KEYS[2] seq; ARGV the database's count, the seq read before
# it → 1 reset, 0 left (a billable completion ran meanwhile). Live leases do
# not matter (see RedisAdmission.reconcile).
_RECONCILE = """
if tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', PERIOD_TTL_S)
return 1
""".replace("PERIOD_TTL_S", str(PERIOD_TTL_S))

# KEYS[1] instance set; ARGV[1] prefix, ARGV[2] done TTL (s) → leases freed.
# Each freed lease is marked done ('0', unless a completion marked it first),
# so its holder's renew_many finds it lost, not restorable.
_RELEASE_INSTANCE = """
local members = redis.call('SMEMBERS', KEYS[1])
for _, m in ipairs(members) do
  local sep = string.find(m, ' ', 1, true)
  local id = string.sub(m, sep + 1)
  redis.call('ZREM', ARGV[1] .. 'leases:' .. string.sub(m, 1, sep - 1), id)
  redis.call('SET', ARGV[1] .. 'done:' .. id, '0', 'NX', 'EX', ARGV[2])
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
""" + _TAKE_TOKEN.replace("RATE_KEY", "1").replace("RATE_ARG", "1") + """
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
RATE_LIMITED = 4
_CODES = {0: LOST, 1: RENEWED, 2: RESTORED}

# Redis unreachable, too slow, loading its dataset, a read-only replica, out
# of memory, or busy running a (stuck) script: transient, answered with 503.
# NOSCRIPT after a restart never gets here: redis-py's Script loads the
# script again and retries once (redis.commands.core.AsyncScript.__call__).
_DOWN: tuple[type[Exception], ...] = (
    redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ReadOnlyError,
    redis_errors.OutOfMemoryError, redis_errors.TryAgainError, redis_errors.ClusterDownError)

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _translated(method: Callable[_P, Awaitable[_T]]) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """``method`` raising ``ServiceUnavailable`` (from the Redis exception)
    where Redis is down or overloaded; other errors unchanged.

    And a cancellation is never lost in it: redis-py (8.2 at least) sometimes
    swallows the ``CancelledError`` thrown into a command awaiting its reply
    and returns normally, which would leave a cancelled relay task running
    (a session that never ends). A cancellation requested while the method
    ran (``Task.cancelling()`` grew) and not raised is raised here, so the
    caller's ``asyncio.timeout`` or ``task.cancel()`` works as documented.
    """
    @functools.wraps(method)
    async def translated(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        try:
            result = await method(*args, **kwargs)
        except Exception as exc:
            if task is not None and task.cancelling() > cancelling:
                raise asyncio.CancelledError from exc  # swallowed, then something else raised
            if isinstance(exc, _DOWN) or (isinstance(exc, redis_errors.ResponseError)
                                          and str(exc).startswith("BUSY")):  # a stuck script
                raise ServiceUnavailable(UNAVAILABLE) from exc
            raise
        if task is not None and task.cancelling() > cancelling:
            raise asyncio.CancelledError  # the cancellation redis-py swallowed
        return result
    return translated


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
        done_ttl_s: how long a lease's completion is remembered (s), so a
            retried completion counts nothing more and a released lease is
            not restored. About 150 bytes of Redis memory per session
            completed within it (one day: 130 MB at 10 sessions/s); it must
            outlast the completion retries (``lease_ttl_s``) and the longest
            pause of an instance that still completes its sessions after it.

    Raises (from every public method): ``voxgate.errors.ServiceUnavailable``
    (chained from the ``redis.exceptions`` error) when Redis is unreachable
    (also when no connection frees within ``pool_timeout_s``), too slow,
    loading, read-only or out of memory; the proxy answers such requests with
    a 503 ``service_unavailable`` (``voxgate.errors.dependency_error``).
    """

    url: str
    lease_ttl_s: float = 90.0
    prefix: str = "voxgate:"
    max_connections: int = 50
    pool_timeout_s: float = 5.0
    instance_id: str = field(default_factory=new_instance_id)
    done_ttl_s: int = 86400
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
        self._check_mint = redis.register_script(_CHECK_MINT)
        self._admit = redis.register_script(_ADMIT)
        self._usage = redis.register_script(_USAGE)
        self._rate_figures = redis.register_script(_RATE_FIGURES)
        self._renew_many = redis.register_script(_RENEW_MANY)
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

    def _done_key(self, lease_id: str) -> str:
        return f"{self.prefix}done:{lease_id}"

    @_translated
    async def check_rate(self, rate_key: str, plan: Plan, now: float = 0.0) -> RateLimitState:
        _ = self.redis
        wait_s, tokens_s = await self._take(keys=[f"{self.prefix}rate:{rate_key}"],
                                            args=[plan.requests_per_minute])
        wait, tokens = float(wait_s), float(tokens_s)
        if wait:
            raise rate_limited(plan, wait)
        return _state(plan.requests_per_minute, tokens)

    @_translated
    async def peek_rate(self, rate_key: str, plan: Plan, now: float = 0.0) -> RateLimitState:
        _ = self.redis
        tokens = float(await self._peek(keys=[f"{self.prefix}rate:{rate_key}"],
                                        args=[plan.requests_per_minute]))
        return _state(plan.requests_per_minute, tokens)

    async def _seeded(self, script: AsyncScript, keys: list[str], args: list[Any], need: bool,
                      seed: Seed) -> list[Any]:
        """Run a counters script; when the period's count is needed and not
        held, read ``seed`` and run it again with it (at most once more: the
        second run seeds whatever ran meanwhile)."""
        flag = "1" if need else "0"
        result = await script(keys=keys, args=["", "0", flag, *args])
        if result[0] == SEED_FIRST:
            result = await script(keys=keys, args=[await seed(), result[3], flag, *args])
        return list(result)

    @_translated
    async def usage(self, account_id: str, period: str, seed: Seed, now: float = 0.0) -> Counters:
        _ = self.redis
        _, n, used, _ = await self._seeded(self._usage, self._counter_keys(account_id, period),
                                           [], True, seed)
        return Counters(max(0, int(used)), int(n))

    @_translated
    async def rate_limit_figures(self, rate_key: str, plan: Plan, account_id: str, period: str,
                                 seed: Seed, now: float = 0.0) -> tuple[RateLimitState, Counters]:
        """What ``rate_limits.updated`` shows, in one round trip (two the
        first time a period's count is needed, to seed it): ``rate_key``'s
        request budget peeked (``peek_rate``) and the account's billable
        sessions of ``period`` and sessions in flight (``usage``)."""
        _ = self.redis
        keys = [*self._counter_keys(account_id, period), f"{self.prefix}rate:{rate_key}"]
        _, n, used, tokens = await self._seeded(self._rate_figures, keys,
                                                [plan.requests_per_minute], True, seed)
        return _state(plan.requests_per_minute, float(tokens)), Counters(max(0, int(used)), int(n))

    @_translated
    async def acquire(self, account_id: str, session_id: str, plan: Plan, period: str,
                      seed: Seed, now: float = 0.0, *, account_status: str = ACTIVE) -> Lease:
        lease, _, _ = await self._lease(None, account_id, session_id, plan, period, seed,
                                        account_status)
        return lease

    @_translated
    async def admit(self, rate_key: str, account_id: str, session_id: str, plan: Plan,
                    period: str, seed: Seed, now: float = 0.0, *,
                    account_status: str = ACTIVE) -> tuple[RateLimitState, Lease, Counters]:
        """``check_rate`` and ``acquire`` in one script (one round trip): the
        budget left, the lease, and the counters with it (in flight counting
        it). Raises ``RateLimited`` (no lease taken) or ``acquire``'s refusal
        (the request counted)."""
        lease, state, usage = await self._lease(rate_key, account_id, session_id, plan, period,
                                                seed, account_status)
        assert state is not None
        return state, lease, usage

    async def _lease(self, rate_key: str | None, account_id: str, session_id: str, plan: Plan,
                     period: str, seed: Seed, account_status: str
                     ) -> tuple[Lease, RateLimitState | None, Counters]:
        """``_ACQUIRE`` (or ``_ADMIT`` counting a request of ``rate_key``)."""
        # what no counter can change (a closed account, a plan allowing nothing) first
        decision = decide_admission(Ask.SESSION, plan, account_status, Counters())
        if isinstance(decision, Refuse):
            if rate_key is not None:
                await self.check_rate(rate_key, plan)
            raise decision.error
        limits = decision.bounds
        _ = self.redis
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        lease_id = uuid.uuid4().hex
        keys = [*self._counter_keys(account_id, period), self._instance_key(self.instance_id)]
        args: list[Any] = [lease_id, self.lease_ttl_s,
                           -1 if limits.max_in_flight is None else limits.max_in_flight,
                           -1 if limits.max_sessions is None else limits.max_sessions,
                           f"{account_id} {lease_id}"]
        if rate_key is None:
            script = self._acquire
        else:
            script = self._admit
            keys.append(f"{self.prefix}rate:{rate_key}")
            args.append(plan.requests_per_minute)
        result = await self._seeded(script, keys, args, limits.max_sessions is not None, seed)
        status, n, used, expires = result[:4]
        state = None if rate_key is None else _state(plan.requests_per_minute, float(result[4]))
        if status == RATE_LIMITED:
            raise rate_limited(plan, float(result[5]))
        usage = Counters(max(0, int(used)), int(n))
        if status != 0:
            refused = decide_admission(Ask.SESSION, plan, account_status, usage)
            if not isinstance(refused, Refuse):
                raise RuntimeError(f"admission script refused ({status}) what decide admits")
            raise refused.error
        lease = Lease(lease_id, account_id, session_id, float(expires), period=period,
                      instance_id=self.instance_id, max_in_flight=limits.max_in_flight)
        if task is not None and task.cancelling() > cancelling:
            # cancelled while the lease was taken (redis-py swallowed it): give
            # the slot back rather than hold it for the TTL; _translated raises
            try:
                await asyncio.shield(self.release(lease))
            except Exception:  # noqa: BLE001 - then it expires with its TTL
                pass
        return lease, state, usage

    @_translated
    async def check_mint(self, rate_key: str, plan: Plan, account_id: str, period: str,
                         seed: Seed, now: float = 0.0) -> tuple[RateLimitState, Counters]:
        """``check_rate`` and ``usage`` in one script (one round trip): the
        budget left after counting the request, and the account's counters.
        Raises ``RateLimited``."""
        _ = self.redis
        keys = [*self._counter_keys(account_id, period), f"{self.prefix}rate:{rate_key}"]
        _, n, used, wait, tokens = await self._seeded(
            self._check_mint, keys, [plan.requests_per_minute], True, seed)
        if float(wait):
            raise rate_limited(plan, float(wait))
        return _state(plan.requests_per_minute, float(tokens)), Counters(max(0, int(used)), int(n))

    async def renew(self, lease: Lease, now: float = 0.0) -> str:
        """``renew_many`` of one lease; its outcome."""
        return (await self.renew_many([lease], now))[lease.id]

    @_translated
    async def renew_many(self, leases: list[Lease], now: float = 0.0) -> dict[str, str]:
        """Renew ``leases`` for ``lease_ttl_s`` more, in one round trip per
        ``RENEW_BATCH`` leases. Lease id → ``"renewed"``; ``"restored"``
        when it was missing (expired, or Redis restarted or was flushed) and
        was put back because its account's live leases were below
        ``lease.max_in_flight`` (or unbounded); ``"lost"`` when missing and
        no room, or released (here, by ``release_instance``, or completed).
        A renewed or restored lease's ``expires_at`` is updated."""
        out: dict[str, str] = {}
        ask: list[Lease] = []
        for lease in leases:
            if lease.released:
                out[lease.id] = LOST
            else:
                ask.append(lease)
        if not ask:
            return out
        _ = self.redis
        for i in range(0, len(ask), RENEW_BATCH):
            batch = ask[i:i + RENEW_BATCH]
            keys: list[str] = []
            args: list[Any] = [self.lease_ttl_s]
            for lease in batch:
                keys += [self._leases_key(lease.account_id),
                         self._instance_key(lease.instance_id or self.instance_id),
                         self._done_key(lease.id)]
                args += [lease.id, -1 if lease.max_in_flight is None else lease.max_in_flight,
                         f"{lease.account_id} {lease.id}"]
            now_s, *codes = await self._renew_many(keys=keys, args=args)
            for lease, code in zip(batch, codes, strict=True):
                out[lease.id] = _CODES[int(code)]
                if code:
                    lease.expires_at = float(now_s) + self.lease_ttl_s
        return out

    @_translated
    async def complete(self, lease: Lease, billable: bool) -> None:
        """Free the lease and, when ``billable``, count the session in its
        period's ``used`` — once per lease id, even when retried (a reply
        lost, another process), and also when the lease already expired or
        was lost in a Redis restart."""
        if lease.released and (lease.billed or not billable):
            return
        _ = self.redis
        count = billable and bool(lease.period)
        await self._complete(
            keys=[*self._counter_keys(lease.account_id, lease.period or "-"),
                  self._instance_key(lease.instance_id or self.instance_id),
                  self._done_key(lease.id)],
            args=[lease.id, "1" if count else "0", f"{lease.account_id} {lease.id}",
                  self.done_ttl_s])
        lease.released = True
        lease.billed = lease.billed or billable

    async def release(self, lease: Lease) -> None:
        await self.complete(lease, billable=False)

    @_translated
    async def reconcile(self, account_id: str, period: str, seed: Seed, now: float = 0.0) -> bool:
        """Reset the period's ``used`` to the database's count (``seed``)
        unless a billable completion ran between reading the sequence number
        and the reset; whether it did. Sessions in flight do not stop it.

        Why the sequence number is enough: ``used`` counts billable
        completions only; leases in flight are a separate count (the quota
        check adds them: used + n), so a live lease is never part of either
        figure being compared. The store records a verdict before
        ``complete`` runs, so a completion is one of: (a) in the store and
        counted in Redis before ``seq`` is read — in both figures, the reset
        keeps it; (b) counted in Redis after ``seq`` was read and before the
        reset — ``seq`` moved, the reset is skipped (the next one retries);
        (c) counted in Redis after the reset — added to the database's count
        by its own increment, which is right when the store recorded it
        after the seed was read, and one too many when it was recorded
        before (its Redis completion lagging, e.g. retried while Redis was
        unreachable): an overcount by the lagging completions, never an
        undercount, that the next reconcile (the gateway runs one after
        every completion round) takes back. So the count converges as soon
        as one quiet moment — no billable completion of the account between
        reading ``seq`` and the reset — comes, however many leases are
        live."""
        used_key, seq_key = self._counter_keys(account_id, period)[1:]
        seq = await self.redis.get(seq_key) or "0"
        value = await seed()
        return bool(await self._reconcile(keys=[used_key, seq_key], args=[value, seq]))

    @_translated
    async def release_instance(self, instance_id: str) -> int:
        _ = self.redis
        return int(await self._release_instance(keys=[self._instance_key(instance_id)],
                                                args=[self.prefix, self.done_ttl_s]))

    @_translated
    async def in_flight(self, account_id: str) -> int:
        _ = self.redis
        return int(await self._count(keys=[self._leases_key(account_id)]))

    @_translated
    async def close(self) -> None:
        if self._redis is not None:
            redis, self._redis = self._redis, None
            await redis.aclose(close_connection_pool=True)


def _state(limit: int, tokens: float) -> RateLimitState:
    reset = (limit - tokens) * 60.0 / limit if limit > 0 else 60.0
    return RateLimitState(limit, max(0, int(tokens)), max(0.0, reset))

"""The gateway: what every session goes through whatever its transport.

``Gateway.admit`` checks the rate limit, reserves quota and a concurrency
lease, and writes the session row (``status="active"``); ``Gateway.finish``
decides the verdict from the meter's measurements, completes the row and the
monthly usage in one transaction (queueing it for settlement when it must be
paid for), then releases the lease. ``finish`` runs on every exit path,
including cancellation, exactly once per session. When the store or Redis is
unreachable at that moment, the record is written as soon as the store is
back: the session is never lost.

Fencing: a session is relayed only while this instance can prove that no
other instance may have taken its place: ``ActiveSession.valid_until``
(monotonic s) is the earlier of (the last successful lease renewal + the
lease TTL) and (the last successful heartbeat + ``heartbeat_ttl_s``), each
timed before its call was sent, minus ``fence_margin_s``. Past it (after a
pause, a partition, a lost lease or a heartbeat refused because a sweeper
declared this instance dead) the session is fenced (``Gateway.fence``): an
``error`` event, close 1011, recorded ``closed_by`` server, reason
``lease_expired``. A heartbeat refused (``Store.heartbeat`` False) fences
every live session at once and registers the instance anew under a new
epoch. Each heartbeat also checkpoints the live sessions' measurements, so
that a sweeper completes a lost instance's sessions from them
(``voxgate.proxy.recovery.complete_orphans``; docs/database.md, "Instances
and recovery").

Shutdown: ``drain`` stops admitting (``ServiceUnavailable``; ``/readyz``
fails), lets live sessions run for ``drain_timeout_s``, then ``stop`` ends
the rest, each recorded ``closed_by`` server, code 1001, reason ``shutdown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from voxgate import logs
from voxgate.admission.base import Admission, InProcessAdmission, Lease, Seed
from voxgate.caches import BoundedDict
from voxgate.config import Settings
from voxgate.errors import (
    InvalidRequest,
    RateLimited,
    ServiceUnavailable,
    VoxgateError,
    dependency_error,
)
from voxgate.metering import rules
from voxgate.metering.meter import SERVER, SHUTDOWN, SessionMeter
from voxgate.metering.rate import RateLimitState
from voxgate.metering.rules import Counters
from voxgate.metering.verdict import VerdictPolicy, decide_verdict
from voxgate.models import (
    Account,
    Plan,
    PlanCatalog,
    Principal,
    SessionRecord,
    Verdict,
    new_id,
)
from voxgate.models.pricing import session_cost
from voxgate.proxy.provider_keys import ProviderKeys
from voxgate.proxy.recovery import complete_orphans, release_orphans
from voxgate.proxy.spend import SpendLimits
from voxgate.store.base import MonthlyUsage, Orphan, Store, period_of
from voxgate.store.connection import lane
from voxgate.store.plans import account_plan

__all__ = ["Gateway", "ActiveSession", "monotonic_ms", "RATE_LIMIT", "SHUTDOWN_MESSAGE"]

log = logging.getLogger("voxgate.gateway")

# The caller's request budget after the last ``Gateway.check_rate`` in this
# request's context (aiohttp runs each request in its own task), for the
# ``x-ratelimit-*-requests`` response headers (voxgate.proxy.http).
RATE_LIMIT: contextvars.ContextVar[RateLimitState | None] = contextvars.ContextVar(
    "voxgate_rate_limit", default=None)

SessionHook = Callable[["ActiveSession", Verdict, MonthlyUsage], Awaitable[None]]

SHUTDOWN_MESSAGE = "server shutting down"  # the close reason clients get (1001)
FENCE_MESSAGE = "session lease expired"  # the close reason clients get when fenced (1011)
FENCE_REASON = "lease_expired"  # the recorded close reason of a fenced session
TRANSPORT_GRACE_S = 2.0  # a session whose sockets are both closed this long is finished
USAGE_CACHE_MAX = 16_384  # (account, period) usages kept in memory at most
_RETRY_MAX_S = 5.0  # longest wait between two attempts to record a finished session


def monotonic_ms() -> float:
    return time.monotonic() * 1000.0


@dataclass(eq=False)
class ActiveSession:
    """A session between admission and finish.

    Attributes:
        close: set by the transport: a coroutine function ``(code, reason)``
            that ends the session from outside (shutdown, admin, fencing);
            for any code but 1000 it sends an ``error`` event first.
        valid_until: monotonic s; past it this instance must not relay
            another frame of the session (``Gateway.fence`` it): the lease or
            the instance heartbeat is no longer provably valid. ``math.inf``
            while nothing bounds it (in-process admission, gateway not started).
        transport_open: set by the transport: True while either of the
            session's sockets (client or upstream) is open. The gateway
            finishes a session whose sockets are closed for more than
            ``TRANSPORT_GRACE_S`` (2 s) that nobody finished.
        admitted: the key's request budget and the account's counters as
            admission left them (this session in flight), which the first
            ``rate_limits.updated`` (after ``session.created``) shows; taken
            by it.
        lease_valid_until: monotonic s: when the lease was last renewed (timed
            before the call was sent) + the lease TTL; ``math.inf`` for
            in-process admission (no other process can take it).
        provider_key: the project's own provider key (BYOK), decrypted at
            admission, for the upstream connection only; None = the server's.
    """

    record: SessionRecord
    principal: Principal
    plan: Plan
    lease: Lease
    meter: SessionMeter
    close: Callable[[int, str], Awaitable[None]] | None = None
    finishing: asyncio.Task | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    valid_until: float = math.inf
    transport_open: Callable[[], bool] | None = None
    lease_valid_until: float = math.inf
    fencing: asyncio.Task | None = None
    admitted: tuple[RateLimitState, Counters] | None = None
    provider_key: str | None = field(default=None, repr=False)


class Gateway:
    """Admission, records and verdicts for sessions of every transport.

    Args:
    Hooks (the composition root subscribes Metrics, billing alerts and
    notifications; a hook's failure is logged, never raised):

    - ``on_admitted``: ``hook(transport)`` after a session is admitted;
    - ``on_refused``: ``hook(err)`` when admission refuses (any ``VoxgateError``);
    - ``on_completed``: ``await hook(active, verdict, usage)`` after a session
      is completed and stored.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        admission: Admission,
        catalog: PlanCatalog,
    ) -> None:
        self.settings = settings
        self.store = store
        self.admission = admission
        self.catalog = catalog
        self.policy = VerdictPolicy(
            min_audio_ms=settings.policy.min_audio_s * 1000.0,
            max_connect_ms=settings.policy.max_connect_ms,
            min_text_responses=settings.policy.min_text_responses,
            provider_error=settings.policy.provider_error,
        )
        self.prices = settings.pricing.prices()  # the provider price list (voxgate.models.pricing)
        self.active: dict[str, ActiveSession] = {}
        # projects' own provider keys (BYOK), sealed under upstream.provider_key_secret
        secret = settings.upstream.provider_key_secret
        self.provider_keys = ProviderKeys(secret.get_secret_value() if secret else None)
        self.on_admitted: list[Callable[[str], None]] = []
        self.on_refused: list[Callable[[VoxgateError], None]] = []
        self.on_completed: list[SessionHook] = []
        # (account, period) -> usage, in-process admission only; the least recently
        # used out past USAGE_CACHE_MAX (read again from the store when needed)
        self._usage: BoundedDict[tuple[str, str], MonthlyUsage] = BoundedDict(USAGE_CACHE_MAX)
        self.spend = SpendLimits(store)  # accounts' provider cost against their spend limits
        self._cache_usage = isinstance(admission, InProcessAdmission)
        self._renewer: asyncio.Task | None = None
        self.draining = False  # set by drain(): no new sessions, /readyz fails
        self._drain_until = 0.0  # monotonic s: drain() waits for live sessions until then
        self._lease_retries: set[asyncio.Task] = set()  # completions waiting for Redis
        # (account, period) pairs with a completion since the last reconcile
        self._completed: set[tuple[str, str]] = set()
        # this process in the instances table (Settings.instance_id)
        self.instance_id = (settings.instance_id
                            or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}")
        self._heartbeat: asyncio.Task | None = None
        self._watchdog: asyncio.Task | None = None
        self.epoch = 0  # this instance's epoch in the instances table (register_instance)
        # Fencing (module docstring): monotonic s until which the last
        # heartbeat proves this instance alive (inf until it registered);
        # leases bound validity only when another process can take them.
        self.lease_ttl_s = float(getattr(admission, "lease_ttl_s", 90.0))
        self._lease_fences = not isinstance(admission, InProcessAdmission)
        self._beat_valid_until = math.inf
        shortest = min(settings.heartbeat_ttl_s,
                       self.lease_ttl_s if self._lease_fences else math.inf)
        self.fence_margin_s = min(settings.fence_margin_s, shortest / 10)
        self._reregistering = False  # declared dead: admission refused until registered anew
        self._closed_since: dict[str, float] = {}  # session id → monotonic s sockets seen closed
        self._tasks: set[asyncio.Task] = set()  # fences and watchdog finishes in flight
        admission.instance_id = self.instance_id  # its leases name this instance

    async def account_plan(self, account: Account, now: float | None = None) -> Plan:
        """The plan the account's sessions are admitted and charged under at
        ``now`` (Unix s): its enterprise plan when its plan is
        ``enterprise``, else its catalog plan, with the add-on packs live at
        ``now`` added to the included sessions (``voxgate.models.packs``)."""
        plan = await account_plan(self.store, self.catalog, account,
                                  time.time() if now is None else now)
        if plan.id != account.plan_id and account.plan_id not in self.catalog.legacy:
            log.warning("account %s has unknown plan %r (or bad enterprise terms); using the "
                        "default plan", account.id, account.plan_id)
        return plan

    async def check_rate(self, principal: Principal) -> Plan:
        """Count one request against the key's rate limit and record the
        budget left in ``RATE_LIMIT`` (and the caller's account and project
        in the log context). Raises ``RateLimited``."""
        plan = await self._caller_plan(principal)
        async with self._rate_limit(plan):
            RATE_LIMIT.set(await self.admission.check_rate(principal.rate_key, plan,
                                                           time.monotonic()))
        return plan

    async def _caller_plan(self, principal: Principal) -> Plan:
        """The caller's plan (``account_plan``), its account and project bound
        to the log context."""
        logs.bind(account_id=principal.account.id, project_id=principal.project.id)
        return await self.account_plan(principal.account)

    @contextlib.asynccontextmanager
    async def _rate_limit(self, plan: Plan) -> AsyncIterator[None]:
        """Around a call counting a request: when it raises ``RateLimited``,
        ``RATE_LIMIT`` says no request is left and when the budget is full
        again (the wait, plus ``limit - 1`` refills)."""
        try:
            yield
        except RateLimited as err:
            limit = plan.requests_per_minute
            refill_s = 60.0 / limit if limit > 0 else 60.0
            RATE_LIMIT.set(RateLimitState(limit, 0, err.retry_after_s + (limit - 1) * refill_s))
            raise

    async def usage(self, account_id: str, period: str | None = None) -> MonthlyUsage:
        """The account's usage this period (or ``period``). With in-process
        admission (one voxgate process) it is served from memory after the
        first read: every completion goes through ``finish``, which stores the
        usage ``complete_session`` returns. With shared admission other
        processes complete sessions too, so it is read from the store."""
        key = (account_id, period or period_of())
        if not self._cache_usage:
            return await self.store.get_usage(*key)
        usage = self._usage.get(key)
        if usage is None:
            fetched = await self.store.get_usage(*key)
            # a finish that ran meanwhile has the newer figures: keep those
            usage = self._usage.setdefault(key, fetched)
        return usage

    def _seed(self, account_id: str, period: str) -> Seed:
        """Reads the store's billable sessions of the account in ``period``
        (admission's counters start from it)."""
        async def billable() -> int:
            return (await self.store.get_usage(account_id, period)).billable_sessions

        return billable

    async def check_mint(self, principal: Principal) -> Plan:
        """Count the request against the key's rate limit (``check_rate``) and
        decide whether ``principal`` may mint an ephemeral key now
        (``decide``, ``Ask.MINT``: the account open, a session left in the
        quota counting those in flight), in one admission call
        (``Admission.check_mint``: one Redis round trip). Nothing is
        reserved. Returns the caller's plan.

        Raises:
            RateLimited, QuotaExceeded, PermissionDenied.
        """
        plan = await self._caller_plan(principal)
        account = principal.account
        period = period_of()
        async with self._rate_limit(plan):
            state, usage = await self.admission.check_mint(
                principal.rate_key, plan, account.id, period, self._seed(account.id, period),
                time.monotonic())
        RATE_LIMIT.set(state)
        decision = rules.decide_admission(rules.Ask.MINT, plan, account.status, usage)
        if isinstance(decision, rules.Refuse):
            raise decision.error
        return plan

    async def admit(self, principal: Principal, transport: str, model: str) -> ActiveSession:
        """Admit a session: rate limit, quota, concurrency, then the row.

        Raises:
            RateLimited, QuotaExceeded, ConcurrencyLimited; ServiceUnavailable
            (503) while draining, registering anew, or while the instance's
            last heartbeat is too old for a session to be relayed (fencing).
        """
        try:
            if self.draining:
                raise ServiceUnavailable(f"{SHUTDOWN_MESSAGE}; retry on another instance")
            if self._reregistering:
                raise ServiceUnavailable("this instance is registering anew after missing its "
                                         "heartbeat; retry")
            if time.monotonic() >= self._beat_valid_until - self.fence_margin_s:
                # it would be fenced at once: the database has not taken a heartbeat lately
                raise ServiceUnavailable("this instance cannot reach its database; retry")
            active = await self._admit(principal, transport, model)
        except VoxgateError as err:
            self._notify(self.on_refused, err)
            raise
        self._notify(self.on_admitted, transport)
        return active

    async def _admit(self, principal: Principal, transport: str, model: str) -> ActiveSession:
        plan = await self._caller_plan(principal)
        if not plan.allows_model(model):  # the plan's `models` (issue 21, item 4)
            raise InvalidRequest(f"model {model!r} is not allowed for your plan; allowed: "
                                 f"{', '.join(plan.models)}", code="model_not_allowed",
                                 param="model")
        # before a slot is taken: a project key that cannot be used refuses the session
        provider_key = self.provider_keys.key_of(principal.project)
        account = principal.account
        now = time.time()
        period = period_of(now)
        if provider_key is None:  # sessions on the customer's own key cost the operator nothing
            await self.spend.check(account, plan, period)
        session_id = new_id("sess")
        logs.bind(session_id=session_id)
        # the request counted, the decision and the reservation: one atomic
        # step across processes
        sent = time.monotonic()
        async with self._rate_limit(plan):
            rate, lease, usage = await self.admission.admit(
                principal.rate_key, account.id, session_id, plan, period,
                self._seed(account.id, period), sent, account_status=account.status)
        RATE_LIMIT.set(rate)
        record = SessionRecord(
            id=session_id,
            account_id=account.id,
            project_id=principal.project.id,
            transport=transport,
            started_at=now,
            model=model,
            api_key_id=principal.api_key.id if principal.api_key else None,
            ephemeral_key_id=principal.ephemeral.id if principal.ephemeral else None,
            period=period,
            paid_by="customer" if provider_key else None,  # BYOK: the customer pays the provider
        )
        try:
            await self.store.open_session(record, lease_id=lease.id)
        except BaseException:
            await self.admission.release(lease)
            raise
        active = ActiveSession(
            record=record,
            principal=principal,
            plan=plan,
            lease=lease,
            meter=SessionMeter(monotonic_ms()),
            lease_valid_until=sent + self.lease_ttl_s if self._lease_fences else math.inf,
            admitted=(rate, usage),
            provider_key=provider_key,
        )
        self._refresh(active)
        self.active[session_id] = active
        return active

    # -- fencing ---------------------------------------------------------

    def _refresh(self, active: ActiveSession) -> None:
        """Recompute ``active.valid_until`` from its lease and the heartbeat
        (never moves a fenced session's back)."""
        if active.fencing is not None:
            return
        active.valid_until = (min(active.lease_valid_until, self._beat_valid_until)
                              - self.fence_margin_s)

    @staticmethod
    def _notify(hooks: list[Callable[[Any], None]], arg: Any) -> None:
        for hook in hooks:
            try:
                hook(arg)
            except Exception:  # noqa: BLE001 - hooks must not break admission
                log.exception("gateway hook %r failed", hook)

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def fence(self, active: ActiveSession) -> None:
        """End a session this instance may no longer relay (its lease or
        heartbeat not provably valid): record the close (``closed_by``
        server, 1011, ``lease_expired``; the first close counts), close it
        through its transport (an ``error`` event, then close 1011 "session
        lease expired"), then ``finish`` it. Idempotent; relays call it when
        ``time.monotonic() >= active.valid_until`` on a frame, before
        forwarding that frame, then stop relaying."""
        if active.fencing is None:
            active.valid_until = -math.inf  # before the first await: nothing more is relayed
            active.fencing = asyncio.ensure_future(self._fence(active))
        await asyncio.shield(active.fencing)

    async def _fence(self, active: ActiveSession) -> None:
        active.meter.closed(SERVER, 1011, FENCE_REASON, monotonic_ms())
        log.warning("session %s fenced: its lease or this instance's heartbeat is no longer "
                    "valid", active.record.id)
        if active.close is not None:
            try:
                await asyncio.wait_for(active.close(1011, FENCE_MESSAGE), 5)
            except Exception:  # noqa: BLE001 - the finish below records it anyway
                log.exception("closing fenced session %s", active.record.id)
        await self.finish(active)

    async def finish(self, active: ActiveSession) -> Verdict:
        """Decide and record the verdict, then free the lease. Idempotent:
        a second call returns the first call's verdict."""
        if active.finishing is None:
            # Claimed before the first await, so concurrent callers share it;
            # shielded, so cancelling a caller never cancels the bookkeeping.
            active.finishing = asyncio.ensure_future(self._finish(active))
        return await asyncio.shield(active.finishing)

    async def _finish(self, active: ActiveSession) -> Verdict:
        meter = active.meter
        if not meter.ended:
            meter.closed("server", None, "session ended", monotonic_ms())
        measurements = meter.measurements()
        verdict = decide_verdict(measurements, self.policy)
        record = active.record
        record.status = "completed"
        record.ended_at = time.time()
        record.measurements = measurements
        record.billable, record.reason, record.rule = verdict.billable, verdict.reason, verdict.rule
        cost = session_cost(self.prices, record.model, measurements)
        record.provider_cost_usd, record.provider_cost_reason = cost.usd, cost.reason
        plan = active.plan
        included = plan.plan_sessions_included
        settle_from = None if plan.overage_cents is None else (included or 0)
        try:
            usage = await self._until_stored(record.id, lambda: self.store.complete_session(
                record, verdict, settle_from=settle_from, pack_from=included))
            if self._cache_usage:
                self._usage[(record.account_id, record.period)] = usage
        finally:
            # after the store has the verdict: a billable session now counts as used
            await self._complete_lease(active.lease, verdict.billable)
            self._completed.add((record.account_id, record.period))
            self.spend.forget(record.account_id, record.period)
            self.active.pop(record.id, None)
            self._closed_since.pop(record.id, None)
        for hook in self.on_completed:
            try:
                await hook(active, verdict, usage)
            except Exception:  # noqa: BLE001 - hooks must not break sessions
                log.exception("session hook failed for %s", record.id)
        log.info("session %s %s: %s (%s)", record.id, record.transport, verdict.reason, verdict.rule)
        return verdict

    # -- background ------------------------------------------------------

    async def start(self) -> None:
        """Register this process's instance (a new epoch) and start its
        heartbeat (with checkpoints), lease renewal and watchdog. Sessions
        of other instances are left alone (those of dead ones are the
        ``instance_sweep`` job's); those a previous run of the same
        ``instance_id`` left active are completed from their last checkpoint
        now and their leases freed at once (that run is gone for good)."""
        orphans = await self._register()
        await release_orphans(self.admission, orphans)
        try:  # leases of a previous run with no session row yet (died while admitting)
            await self.admission.release_instance(self.instance_id)
        except Exception as exc:  # noqa: BLE001 - they expire after lease_ttl_s anyway
            log.warning("freeing instance %s's old leases: %s: %s", self.instance_id,
                        type(exc).__name__, exc)
        if orphans:
            log.warning("completed %d session(s) left active by a previous run of instance %s",
                        len(orphans), self.instance_id)
        self._heartbeat = asyncio.create_task(self._beat(), name="instance-heartbeat")
        self._renewer = asyncio.create_task(self._renew_leases(), name="lease-renewal")
        self._watchdog = asyncio.create_task(self._watch(), name="session-watchdog")

    async def _register(self) -> list[Orphan]:
        """``Store.register_instance`` under a new epoch; the sessions left
        active under this id that this process is not finishing itself are
        completed from their last checkpoint (``complete_orphans``) and
        returned."""
        sent = time.monotonic()
        epoch, orphans = await self.store.register_instance(
            self.instance_id, socket.gethostname(), os.getpid(), time.time())
        self.epoch = epoch
        self._beat_valid_until = sent + self.settings.heartbeat_ttl_s
        for active in self.active.values():
            self._refresh(active)
        orphans = [o for o in orphans if o.session_id not in self.active]
        await complete_orphans(self.store, self.catalog, self.policy, orphans, time.time(),
                               f"instance {self.instance_id} stopped while the session was active",
                               prices=self.prices)
        return orphans

    async def _beat(self) -> None:
        """Every ``heartbeat_interval_s``: ``_beat_once``."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            try:
                await self._beat_once()
            except Exception:  # noqa: BLE001 - retried at the next beat
                log.exception("instance heartbeat failed")

    async def _beat_once(self) -> None:
        """One heartbeat of this epoch, then one checkpoint of every live
        session's measurements (a separate statement: a lock on session rows
        never delays the heartbeat). A heartbeat refused (a sweeper declared
        this epoch dead) fences every live session and registers anew."""
        if self._reregistering:
            await self._declared_dead()
            return
        ttl = self.settings.heartbeat_ttl_s
        sent, now = time.monotonic(), time.time()
        try:
            with lane("heartbeat"):  # its own connection: never behind session writes
                alive = await asyncio.wait_for(
                    self.store.heartbeat(self.instance_id, self.epoch, now), ttl)
        except Exception as exc:  # noqa: BLE001 - the sessions fence if it stays down
            log.warning("instance heartbeat failed (%s: %s); live sessions are fenced %.1f s "
                        "after the last one", type(exc).__name__, exc, ttl)
            return
        if not alive:
            await self._declared_dead()
            return
        self._beat_valid_until = sent + ttl
        live = [active for active in self.active.values()
                if active.finishing is None and active.fencing is None]
        for active in live:
            self._refresh(active)
        if not live:
            return
        now_ms = monotonic_ms()
        checkpoints = [(active.record.id, active.meter.snapshot(now_ms)) for active in live]
        try:
            with lane("heartbeat"):
                await asyncio.wait_for(
                    self.store.checkpoint_sessions(self.instance_id, checkpoints, now), ttl)
        except Exception as exc:  # noqa: BLE001 - the next beat writes newer ones
            log.warning("checkpoint of %d session(s) failed: %s: %s", len(checkpoints),
                        type(exc).__name__, exc)

    async def _declared_dead(self) -> None:
        """A sweeper declared this instance's epoch dead (its heartbeat was
        late, e.g. the process was paused): fence every live session at once
        (their records, completed from their checkpoints by the sweeper, are
        replaced by the final ones), then register anew under a new epoch to
        serve new sessions (refused with 503 meanwhile)."""
        self._reregistering = True
        self._beat_valid_until = -math.inf
        sessions = list(self.active.values())
        for active in sessions:
            self._refresh(active)
        log.error("instance %s (epoch %d) was declared dead by a sweeper: fencing %d live "
                  "session(s) and registering anew", self.instance_id, self.epoch, len(sessions))
        results = await asyncio.gather(
            *(asyncio.wait_for(self.fence(active), 15) for active in sessions),
            return_exceptions=True)
        for active, result in zip(sessions, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("fencing session %s: %s: %s", active.record.id,
                            type(result).__name__, result)
        await self._register()
        self._reregistering = False
        log.warning("instance %s registered anew (epoch %d)", self.instance_id, self.epoch)

    async def _watch(self) -> None:
        """Several times a second: fence the sessions past ``valid_until``
        (so a resumed instance fences at once, even with no frame to relay),
        and finish those whose sockets are both closed for more than
        ``TRANSPORT_GRACE_S`` that nobody finished."""
        tick = min(0.5, max(0.05, self.fence_margin_s / 2))
        while True:
            await asyncio.sleep(tick)
            try:
                self._watch_once(time.monotonic())
            except Exception:  # noqa: BLE001 - the watchdog must survive
                log.exception("session watchdog failed")

    def _watch_once(self, now: float) -> None:
        for active in list(self.active.values()):
            if active.finishing is not None or active.fencing is not None:
                continue
            sid = active.record.id
            if now >= active.valid_until:
                self._spawn(self.fence(active), f"fence {sid}")
                continue
            if active.transport_open is None or active.transport_open():
                self._closed_since.pop(sid, None)
                continue
            since = self._closed_since.setdefault(sid, now)
            if now - since > TRANSPORT_GRACE_S:
                log.warning("session %s: its sockets are closed and nothing finished it; "
                            "finishing it", sid)
                active.meter.closed(SERVER, None, "transport closed", monotonic_ms())
                self._spawn(self.finish(active), f"finish {sid}")

    async def _until_stored(self, session_id: str, write: Callable[[], Awaitable[MonthlyUsage]]
                            ) -> MonthlyUsage:
        """Run ``write`` until the store takes it: while the database is
        unreachable (``dependency_error``) it is retried with a backoff of up
        to ``_RETRY_MAX_S``; other errors are raised."""
        delay = 0.25
        while True:
            try:
                return await write()
            except Exception as exc:
                if dependency_error(exc) is None:
                    raise
                log.warning("session %s not recorded yet (%s: %s); retrying in %.2f s",
                            session_id, type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
            delay = min(_RETRY_MAX_S, delay * 2)

    async def _complete_lease(self, lease: Lease, billable: bool) -> None:
        """``Admission.complete``; while Redis is unreachable it is retried
        in the background (backoff up to ``_RETRY_MAX_S``, for at most the
        lease TTL, after which the lease has expired by itself), so that a
        session's finish never waits for Redis. The periodic reconcile then
        brings admission's counters back in line with the store."""
        try:
            await self.admission.complete(lease, billable)
        except Exception as exc:
            if dependency_error(exc) is None:
                raise
            log.warning("lease of session %s not completed yet (%s); retrying in the background",
                        lease.session_id, type(exc).__name__)
            task = asyncio.create_task(self._complete_later(lease, billable), name="lease-complete")
            self._lease_retries.add(task)
            task.add_done_callback(self._lease_retries.discard)

    async def _complete_later(self, lease: Lease, billable: bool) -> None:
        deadline = time.monotonic() + getattr(self.admission, "lease_ttl_s", 90.0)
        delay = 0.25
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(_RETRY_MAX_S, delay * 2)
            try:
                await self.admission.complete(lease, billable)
                return
            except Exception as exc:  # noqa: BLE001 - the lease expires with its TTL at worst
                if dependency_error(exc) is None:
                    log.exception("completing the lease of session %s", lease.session_id)
                    return

    async def drain(self, timeout_s: float) -> None:
        """Stop admitting new sessions (``ServiceUnavailable``, ``/readyz``
        503), wait up to ``timeout_s`` (s) for the live ones to end, then
        ``stop`` the rest (at once after ``end_drain``)."""
        self.draining = True
        self._drain_until = time.monotonic() + timeout_s
        if self.active:
            log.info("draining: %d live session(s), up to %.0f s", len(self.active), timeout_s)
        while self.active and time.monotonic() < self._drain_until:
            await asyncio.sleep(min(0.1, max(0.0, self._drain_until - time.monotonic())))
        await self.stop()

    def end_drain(self) -> None:
        """Stop waiting for live sessions (a second SIGTERM or Ctrl-C): the
        drain closes them now."""
        if self.active:
            log.info("drain cut short: closing %d live session(s) now", len(self.active))
        self._drain_until = 0.0

    async def stop(self) -> None:
        """End every active session (an ``error`` event, then close 1001
        "server shutting down"; recorded ``closed_by`` server, code 1001,
        reason ``shutdown``) and wait for their finish."""
        self.draining = True
        if self._renewer is not None:
            self._renewer.cancel()
        sessions = list(self.active.values())
        await asyncio.gather(*(self._shut(active) for active in sessions))  # all at once
        for task in list(self._lease_retries):
            task.cancel()
        await self._unregister()

    async def _shut(self, active: ActiveSession) -> None:
        """One session's part of ``stop``: recorded as ended by the shutdown,
        closed through its transport, then finished (at most 10 s)."""
        active.meter.closed(SERVER, 1001, SHUTDOWN, monotonic_ms())  # the first close counts
        if active.close is not None:
            try:
                await active.close(1001, SHUTDOWN_MESSAGE)
            except Exception:  # noqa: BLE001
                log.exception("closing session %s", active.record.id)
        try:
            await asyncio.wait_for(self.finish(active), 10)
        except Exception:  # noqa: BLE001
            log.exception("finishing session %s", active.record.id)

    async def _unregister(self) -> None:
        """Stop the heartbeat (kept through the drain, so no sweeper takes
        this instance's sessions for dead) and delete this instance's row
        (of its epoch)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._heartbeat is None:
            return
        self._heartbeat.cancel()
        self._heartbeat = None
        try:
            await self.store.unregister_instance(self.instance_id, self.epoch)
        except Exception:  # noqa: BLE001 - its row then expires like a dead one's
            log.exception("unregistering instance %s", self.instance_id)

    async def _renew_leases(self) -> None:
        """Every third of the lease TTL: renew this process's leases
        (``_renew_once``), then reconcile admission's period counters of the
        accounts that completed sessions here with the store
        (``Admission.reconcile``)."""
        while True:
            await asyncio.sleep(self.lease_ttl_s / 3)
            try:
                await self._renew_once()
                now = time.monotonic()
                completed, self._completed = self._completed, set()
                for account_id, period in completed:
                    await self.admission.reconcile(account_id, period,
                                                   self._seed(account_id, period), now)
            except Exception:  # noqa: BLE001 - retried at the next round
                log.exception("lease renewal or admission reconcile failed")

    async def _renew_once(self) -> None:
        """Renew every live session's lease in one call
        (``Admission.renew_many``; one ``renew`` each where the admission
        has no ``renew_many``): a lease renewed or restored is valid for the
        lease TTL from when the call was sent; a lease ``lost`` (gone, and
        the account has no room for it) fences its session."""
        live = [active for active in self.active.values()
                if active.finishing is None and active.fencing is None]
        if not live:
            return
        sent = time.monotonic()
        bound = max(1.0, self.lease_ttl_s / 3)
        renew_many = getattr(self.admission, "renew_many", None)
        outcomes: dict[str, str] = {}
        if renew_many is not None:
            outcomes = await asyncio.wait_for(renew_many([a.lease for a in live], sent), bound)
        else:
            for active in live:
                try:
                    await asyncio.wait_for(self.admission.renew(active.lease, sent), bound)
                except Exception as exc:  # noqa: BLE001 - fenced once its validity passes
                    log.warning("renewing the lease of session %s: %s: %s",
                                active.record.id, type(exc).__name__, exc)
                    continue
                outcomes[active.lease.id] = "renewed"
        for active in live:
            outcome = outcomes.get(active.lease.id)
            if outcome in ("renewed", "restored"):
                if self._lease_fences:
                    active.lease_valid_until = sent + self.lease_ttl_s
                    self._refresh(active)
            elif outcome == "lost" and active.fencing is None:
                log.warning("session %s lost its lease", active.record.id)
                self._spawn(self.fence(active), f"fence {active.record.id}")

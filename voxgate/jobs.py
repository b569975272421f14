"""Scheduled jobs: periodic work that runs once per interval across every
voxgate process sharing a database.

The registry is ``JOBS``, a plain list of ``Job(name, interval_s, run,
description)``; ``run`` is a coroutine function taking a ``JobContext``
(store, settings, clock, mailer, catalog) and returning a short sentence of
what it did (shown on the operator page). To add a job, append a ``Job`` to
``JOBS`` (or call ``register``); ``jobs.intervals_s`` in the settings may
change its interval by name.

Every job is idempotent on its own (its effects are keyed: dedupe keys on
queued email, ``quota_alerts`` rows, a session completed once), and the
scheduler runs it at most once per interval across the cluster: each process
runs a ``Scheduler`` that, for a due job, first wins the claim on its
``job_runs`` row (``JobRunsDB.claim``, one atomic UPDATE; one winner), runs
it, then records the outcome and the next run. A run that dies keeps its
lease until ``jobs.lease_s`` has passed; then any process may take it over.

The jobs:

- ``instance_sweep`` (10 s): instances (processes, ``Store.register_instance``)
  whose heartbeat is older than ``heartbeat_ttl_s`` are dead: the instance
  row (of that epoch) is deleted, so its heartbeats fail from then on, and
  its active sessions are completed provisionally from their last
  checkpoint (``complete_orphans``: verdict by the rules on the checkpointed
  measurements, ``closed_by`` server, close reason ``instance_lost``). Their
  admission leases are not freed: they expire after ``lease_ttl_s``, by
  which time the instance, if only paused, has fenced them by its own clock;
  admission's counters of the accounts concerned are reconciled with the
  store. Live instances' sessions are never touched.
- ``stale_session_sweep`` (10 min): sessions still ``active`` that started
  more than ``jobs.stale_session_s`` ago (default ``relay.max_session_s`` +
  10 min, longer than any live session may last) were left by a process that
  died: completed as not billable (``interrupted``).
- ``usage_limit_check`` (daily): the quota alerts (80/95/100 %) of this
  period that no session completion sent, because no server was running
  then or the process died before its hook ran: the highest missed
  threshold is sent once (``voxgate.billing.notify.catch_up_alerts``).
- ``trial_ending_reminder`` (daily): an email to each account whose Stripe
  subscription is in trial and ends within ``TRIAL_REMINDER_DAYS`` (3) days.
- ``monthly_usage_summary`` (daily; sends once a month): last period's usage
  summary to each paying account (a Stripe subscription on a paid plan).
- ``addon_expiry`` (hourly): add-on packs 30 days after purchase are marked
  expired and noted once in the audit log (they stop counting at their
  expiry whether or not it ran).
- housekeeping (hourly; ``retention`` settings): ``ephemeral_key_purge``
  deletes ephemeral keys ``ephemeral_key_grace_s`` after they expired,
  ``outbox_prune`` deletes emails sent and customer webhooks delivered
  ``outbox_days`` ago, ``stripe_payload_prune`` empties the payload of
  Stripe events processed ``webhook_payload_days`` ago (the event rows stay);
  each in batches of ``batch_size`` rows, one short transaction per batch
  (``HousekeepingDB.prune``).

The decisions (``is_due``, ``next_run_at``, ``trial_reminders_due``,
``summary_recipients``, ``stale_cutoff``, ``job_table``) are pure functions;
email goes through the billing outbox (``voxgate.billing.notify.Notifier``).
Times are Unix seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from voxgate.billing.db import BillingDB
from voxgate.billing.notify import Notifier, TrialEnd, usage_summary
from voxgate.config import Settings
from voxgate.metering.verdict import VerdictPolicy
from voxgate.models import Account, Plan, PlanCatalog, Reason, Verdict
from voxgate.models.figures import period_bounds, previous_period, standing
from voxgate.proxy.recovery import complete_orphans
from voxgate.store.base import Orphan, period_of
from voxgate.store.plans import account_plan, enterprise_plans, subscribed_plan
from voxgate.store.queries.jobs import HousekeepingDB, JobRun, JobRunsDB

__all__ = [
    "Job",
    "JobContext",
    "JobRun",
    "JOBS",
    "register",
    "is_due",
    "next_run_at",
    "interval_of",
    "stale_cutoff",
    "trial_reminders_due",
    "summary_recipients",
    "job_table",
    "JobRunsDB",
    "Scheduler",
    "sweep_stale_sessions",
    "sweep_expired_instances",
    "check_usage_limits",
    "remind_trials_ending",
    "send_monthly_summaries",
    "purge_ephemeral_keys",
    "prune_outbox",
    "prune_stripe_payloads",
    "retention_cutoff",
    "TRIAL_REMINDER_DAYS",
    "SCHEDULER",
    "setup",
]

log = logging.getLogger("voxgate.jobs")

DAY_S = 86400.0
TRIAL_REMINDER_DAYS = 3
STALE_MARGIN_S = 600.0  # beyond relay.max_session_s, before an active session is stale


# ---------------------------------------------------------------- registry

@dataclass(frozen=True, slots=True)
class JobContext:
    """What a job gets: the open store (a ``voxgate.store.sql.SQLStore``), the settings, the
    clock (Unix seconds), the mailer (queues email in the outbox), the plan
    catalog and the admission (to free leases; None = nothing to free)."""

    store: Any
    settings: Settings
    clock: Callable[[], float]
    mailer: Notifier
    catalog: PlanCatalog
    admission: Any = None


@dataclass(frozen=True, slots=True)
class Job:
    """A scheduled job: ``run(ctx)`` every ``interval_s`` seconds, returning
    what it did in a few words."""

    name: str
    interval_s: float
    run: Callable[[JobContext], Awaitable[str]]
    description: str = ""
    overlap_safe: bool = False
    """Two runs at once do no harm (the job claims its rows one by one):
    its claim is held for ``OVERLAP_SAFE_LEASES`` intervals at most rather
    than ``jobs.lease_s``, so a process that dies or is paused while running
    it holds it up for seconds, not minutes."""


# ---------------------------------------------------------------- decisions

def is_due(run: JobRun | None, now: float) -> bool:
    """Whether a job may be claimed at ``now``: never run, or its next run
    has come and no lease is held."""
    if run is None:
        return True
    return run.next_run_at <= now and run.lease_until <= now


def next_run_at(started_at: float, interval_s: float, ok: bool, retry_s: float,
                finished_at: float) -> float:
    """When a job runs next: one interval after its run started (so the
    cadence does not drift), or after ``min(retry_s, interval_s)`` when it
    failed; never before it finished."""
    delay = interval_s if ok else min(retry_s, interval_s)
    return max(started_at + delay, finished_at)


OVERLAP_SAFE_LEASES = 3.0


def interval_of(job: Job, settings: Settings) -> float:
    """The job's interval: ``jobs.intervals_s[name]`` if set, else its own."""
    return float(settings.jobs.intervals_s.get(job.name, job.interval_s))


def lease_of(job: Job, settings: Settings) -> float:
    """How long a claim of ``job`` is held before another process may take
    it over (s): ``jobs.lease_s``, or for an ``overlap_safe`` job at most
    ``OVERLAP_SAFE_LEASES`` of its intervals (1 s at least)."""
    if not job.overlap_safe:
        return settings.jobs.lease_s
    return min(settings.jobs.lease_s, max(1.0, OVERLAP_SAFE_LEASES * interval_of(job, settings)))


def stale_cutoff(now: float, settings: Settings) -> float:
    """Sessions still active that started before this are stale."""
    after = settings.jobs.stale_session_s or settings.relay.max_session_s + STALE_MARGIN_S
    return now - after


def trial_reminders_due(trials: Iterable[TrialEnd], accounts: Mapping[str, Account],
                        now: float, days_before: int = TRIAL_REMINDER_DAYS) -> list[TrialEnd]:
    """The trials to remind today: ending in (now, now + ``days_before``
    days] and still the account's current subscription."""
    due = []
    for trial in trials:
        account = accounts.get(trial.account_id)
        if account is None or account.stripe_subscription_id != trial.subscription_id:
            continue
        if now < trial.trial_end <= now + days_before * DAY_S:
            due.append(trial)
    return due


def summary_recipients(accounts: Iterable[Account], catalog: PlanCatalog,
                       period: str, enterprise: Mapping[str, Plan] | None = None) -> list[Account]:
    """The accounts that get ``period``'s summary: paying now (a Stripe
    subscription on a paid plan, ``voxgate.models.figures.standing``; an
    enterprise account by its own plan in ``enterprise``, account id →
    Plan) and created before the period ended."""
    _, end = period_bounds(period)
    return [a for a in accounts if a.created_at < end
            and standing(a.plan_id, a.status, a.stripe_subscription_id is not None,
                         catalog, a.id, enterprise) == "paying"]


def job_table(jobs: Iterable[Job], runs: Mapping[str, JobRun], settings: Settings,
              now: float) -> list[dict[str, Any]]:
    """One row per registered job for the operator page: name, description,
    interval_s, last_started_at, last_finished_at, last_outcome, last_detail,
    next_run_at (None = at the next poll), running (a lease is held)."""
    out = []
    for job in jobs:
        run = runs.get(job.name) or JobRun(job.name)
        out.append({
            "name": job.name, "description": job.description,
            "interval_s": interval_of(job, settings),
            "last_started_at": run.last_started_at, "last_finished_at": run.last_finished_at,
            "last_outcome": run.last_outcome, "last_detail": run.last_detail,
            "next_run_at": run.next_run_at or None, "runs": run.runs,
            "running": run.lease_until > now,
        })
    return out


# ---------------------------------------------------------------- the jobs

async def sweep_stale_sessions(ctx: JobContext) -> str:
    """Complete the stale active sessions (``stale_cutoff``) as interrupted."""
    now = ctx.clock()
    n = await ctx.store.abandon_active_sessions(
        Verdict(False, Reason.INTERRUPTED, "still active long after any session may last: "
                                           "its voxgate process stopped"),
        now, started_before=stale_cutoff(now, ctx.settings))
    if n:
        log.warning("completed %d stale session(s)", n)
    return f"{n} stale session(s) completed"


def verdict_policy(settings: Settings) -> VerdictPolicy:
    """The verdict policy the gateway decides with (``policy`` settings)."""
    return VerdictPolicy(min_audio_ms=settings.policy.min_audio_s * 1000.0,
                         max_connect_ms=settings.policy.max_connect_ms,
                         min_text_responses=settings.policy.min_text_responses,
                         provider_error=settings.policy.provider_error)


async def sweep_expired_instances(ctx: JobContext) -> str:
    """Sweep the instances whose heartbeat is older than ``heartbeat_ttl_s``:
    delete each (its epoch's row) and complete its active sessions from
    their last checkpoint, provisionally (``complete_orphans``); then the
    sessions an earlier sweep left active (it died between the two steps).
    Leases are left to expire; admission's counters of the accounts
    concerned are reconciled (``Admission.reconcile``)."""
    now = ctx.clock()
    cutoff = now - ctx.settings.heartbeat_ttl_s
    policy = verdict_policy(ctx.settings)
    prices = ctx.settings.pricing.prices()
    dead = await ctx.store.expired_instances(cutoff)
    done: list[Orphan] = []
    for instance in dead:
        orphans = await ctx.store.sweep_instance(instance.id, instance.epoch, now,
                                                 heartbeat_before=cutoff)
        verdicts = await complete_orphans(
            ctx.store, ctx.catalog, policy, orphans, now,
            f"instance {instance.id} lost (no heartbeat for {now - instance.heartbeat_at:.0f} s)",
            prices=prices)
        done += orphans
        log.warning("instance %s (%s pid %d, epoch %d) expired: %d session(s) completed from "
                    "their last checkpoint (%d billable)", instance.id, instance.host,
                    instance.pid, instance.epoch, len(orphans),
                    sum(1 for v in verdicts if v.billable))
    left = await ctx.store.orphaned_sessions(cutoff)
    if left:
        await complete_orphans(ctx.store, ctx.catalog, policy, left, now,
                               "its instance was lost (no heartbeat)", prices=prices)
        log.warning("completed %d session(s) of lost instances left active", len(left))
        done += left
    await _reconcile(ctx, {(o.account_id, o.record.period if o.record else period_of(now))
                           for o in done})
    return f"{len(dead)} expired instance(s), {len(done)} session(s) completed"


async def _reconcile(ctx: JobContext, pairs: set[tuple[str, str]]) -> None:
    """``Admission.reconcile`` of each (account id, period) with the store's
    billable count; failures are logged (the gateways reconcile too)."""
    if ctx.admission is None:
        return
    for account_id, period in sorted(pairs):
        async def seed(account_id: str = account_id, period: str = period) -> int:
            return (await ctx.store.get_usage(account_id, period)).billable_sessions

        try:
            await ctx.admission.reconcile(account_id, period, seed, time.monotonic())
        except Exception as exc:  # noqa: BLE001 - reconciled again later
            log.warning("reconciling admission of %s %s: %s: %s", account_id, period,
                        type(exc).__name__, exc)


async def check_usage_limits(ctx: JobContext) -> str:
    """Send the quota alerts of this period missed so far (once each),
    against the plan as admission sees it (add-on packs counted in)."""
    now = ctx.clock()
    period = period_of(now)
    sent = 0
    for account in await ctx.store.list_accounts():
        usage = await ctx.store.get_usage(account.id, period)
        if usage.billable_sessions:
            plan = await account_plan(ctx.store, ctx.catalog, account, now)
            sent += len(await ctx.mailer.catch_up(account, plan, usage))
    return f"{sent} missed alert(s) sent for {period}"


async def expire_addon_packs(ctx: JobContext) -> str:
    """Mark the add-on packs whose 30 days are over as expired, each once
    (``voxgate.billing.addons.Addons.expire``)."""
    from voxgate.billing.addons import Addons

    expired = await Addons(ctx.store, BillingDB(ctx.store), ctx.catalog).expire(ctx.clock())
    return f"{len(expired)} add-on pack(s) expired"


async def remind_trials_ending(ctx: JobContext) -> str:
    """Queue the trial-ending reminder of each trial ending within 3 days."""
    accounts = {a.id: a for a in await ctx.store.list_accounts()}
    queued = 0
    for trial in trial_reminders_due(await ctx.mailer.trials(), accounts, ctx.clock()):
        account = accounts[trial.account_id]
        plan = await subscribed_plan(ctx.store, ctx.catalog, account)
        if await ctx.mailer.trial_ending(account, plan, trial):
            queued += 1
    return f"{queued} trial reminder(s) queued"


async def send_monthly_summaries(ctx: JobContext) -> str:
    """Queue last period's usage summary for each paying account (once)."""
    period = previous_period(period_of(ctx.clock()))
    queued = 0
    enterprise = await enterprise_plans(ctx.store)
    for account in summary_recipients(await ctx.store.list_accounts(), ctx.catalog, period,
                                      enterprise):
        usage = await ctx.store.get_usage(account.id, period)
        covered = (await ctx.store.pack_balance(account.id, period, ctx.clock())).used_this_period
        summary = usage_summary(await subscribed_plan(ctx.store, ctx.catalog, account), usage,
                                covered)
        if await ctx.mailer.monthly_summary(account, summary):
            queued += 1
    return f"{queued} summar{'y' if queued == 1 else 'ies'} for {period} queued"


def retention_cutoff(now: float, keep_s: float) -> float | None:
    """Rows whose time (sent, delivered, processed, expired) is before this
    are pruned; None when ``keep_s`` is 0 or less (kept for ever)."""
    return now - keep_s if keep_s > 0 else None


async def _prune(ctx: JobContext, kinds: tuple[str, ...], cutoff: float | None) -> dict[str, int]:
    """Rows pruned per kind (``HousekeepingDB.prune``); {} when ``cutoff`` is None."""
    if cutoff is None:
        return {}
    retention = ctx.settings.retention
    db = HousekeepingDB(ctx.store)
    return {kind: await db.prune(kind, cutoff, batch=retention.batch_size,
                                 max_batches=retention.max_batches) for kind in kinds}


async def purge_ephemeral_keys(ctx: JobContext) -> str:
    """Delete the ephemeral keys expired more than
    ``retention.ephemeral_key_grace_s`` ago."""
    cutoff = ctx.clock() - ctx.settings.retention.ephemeral_key_grace_s
    n = (await _prune(ctx, ("ephemeral_keys",), cutoff))["ephemeral_keys"]
    return f"{n} expired ephemeral key(s) deleted"


async def prune_outbox(ctx: JobContext) -> str:
    """Delete the emails sent and customer webhooks delivered more than
    ``retention.outbox_days`` ago (never unsent ones)."""
    pruned = await _prune(ctx, ("email_outbox", "webhook_outbox"), retention_cutoff(
        ctx.clock(), ctx.settings.retention.outbox_days * DAY_S))
    if not pruned:
        return "kept (retention.outbox_days = 0)"
    return (f"{pruned['email_outbox']} sent email(s), {pruned['webhook_outbox']} delivered "
            f"webhook(s) deleted")


async def prune_stripe_payloads(ctx: JobContext) -> str:
    """Empty the payload of the Stripe events processed more than
    ``retention.webhook_payload_days`` ago (the rows stay: replays are
    still recognized by their id)."""
    pruned = await _prune(ctx, ("stripe_events",), retention_cutoff(
        ctx.clock(), ctx.settings.retention.webhook_payload_days * DAY_S))
    if not pruned:
        return "kept (retention.webhook_payload_days = 0)"
    return f"{pruned['stripe_events']} processed Stripe event payload(s) emptied"


async def queue_missed_session_events(ctx: JobContext) -> str:
    """The ``session.completed`` webhook events no completion hook queued
    (sessions completed by a sweep or a process that died between storing a
    verdict and running its hooks: ``Notifier.catch_up_sessions``)."""
    return f"{await ctx.mailer.catch_up_sessions(ctx.clock())} session.completed event(s) queued"


JOBS: list[Job] = [
    Job("instance_sweep", 10.0, sweep_expired_instances,
        "complete the sessions of voxgate instances whose heartbeat expired", overlap_safe=True),
    Job("stale_session_sweep", 600.0, sweep_stale_sessions,
        "complete sessions left active by a stopped process"),
    Job("usage_limit_check", DAY_S, check_usage_limits,
        "send the 80/95/100 % quota alerts missed while no server ran"),
    Job("trial_ending_reminder", DAY_S, remind_trials_ending,
        f"email accounts whose trial ends within {TRIAL_REMINDER_DAYS} days"),
    Job("monthly_usage_summary", DAY_S, send_monthly_summaries,
        "email last month's usage to each paying account"),
    Job("addon_expiry", 3600.0, expire_addon_packs,
        "mark add-on packs 30 days after purchase as expired"),
    Job("ephemeral_key_purge", 3600.0, purge_ephemeral_keys,
        "delete ephemeral keys a day (retention.ephemeral_key_grace_s) after they expired"),
    Job("outbox_prune", 3600.0, prune_outbox,
        "delete emails sent and customer webhooks delivered retention.outbox_days ago"),
    Job("stripe_payload_prune", 3600.0, prune_stripe_payloads,
        "empty the payloads of Stripe events processed retention.webhook_payload_days ago"),
    Job("session_event_catch_up", 60.0, queue_missed_session_events,
        "queue the session.completed webhooks of sessions completed without their hook",
        overlap_safe=True),
]


def register(job: Job) -> Job:
    """Add ``job`` to ``JOBS``.

    Raises:
        ValueError: a job of that name is registered already.
    """
    if any(j.name == job.name for j in JOBS):
        raise ValueError(f"job {job.name!r} is registered already")
    JOBS.append(job)
    return job


# ---------------------------------------------------------------- scheduler

class Scheduler:
    """Runs the due jobs this process wins, every ``jobs.poll_s``.

    Args:
        jobs: the jobs (default: ``JOBS`` as it is when ``tick`` runs).
        owner: this scheduler's name in ``job_runs.lease_owner`` (default
            ``host:pid:random``).
    """

    def __init__(self, ctx: JobContext, jobs: list[Job] | None = None, *,
                 owner: str | None = None) -> None:
        self.ctx = ctx
        self._jobs = jobs
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.db = JobRunsDB(ctx.store)
        self._task: asyncio.Task | None = None

    @property
    def jobs(self) -> list[Job]:
        return list(JOBS if self._jobs is None else self._jobs)

    async def tick(self) -> dict[str, str]:
        """Claim and run every due job; returns name → what it did (or the
        error) for the jobs this scheduler ran."""
        settings = self.ctx.settings.jobs
        ran: dict[str, str] = {}
        runs = await self.db.runs()
        for job in self.jobs:
            now = self.ctx.clock()
            if not is_due(runs.get(job.name), now):
                continue
            if not await self.db.claim(job.name, self.owner, now,
                                       now + lease_of(job, self.ctx.settings)):
                continue
            try:
                detail, ok = await job.run(self.ctx), True
            except Exception as exc:  # noqa: BLE001 - recorded, retried after retry_s
                log.exception("job %s failed", job.name)
                detail, ok = f"{type(exc).__name__}: {exc}", False
            finished = self.ctx.clock()
            await self.db.finish(job.name, self.owner, finished_at=finished, ok=ok, detail=detail,
                                 next_at=next_run_at(now, interval_of(job, self.ctx.settings), ok,
                                                     settings.retry_s, finished))
            ran[job.name] = detail
        return ran

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the scheduler must survive a bad poll
                log.exception("job scheduler poll failed")
            await asyncio.sleep(self.ctx.settings.jobs.poll_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="job-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


# ---------------------------------------------------------------- in the app

SCHEDULER = web.AppKey("job_scheduler", Scheduler)


def setup(app: web.Application) -> None:
    """Plug the scheduler into the app (``voxgate.server.PLUGINS``): it
    starts with the app when ``jobs.enabled``, after the store is open, and
    stops before the store closes. The mailer is billing's notifier when
    billing is plugged in."""
    from voxgate.proxy.keys import GATEWAY, SETTINGS

    settings = app[SETTINGS]
    gateway = app[GATEWAY]
    mailer: Notifier | None = None
    with contextlib.suppress(ImportError):
        from voxgate.billing.service import BILLING

        if BILLING in app:
            mailer = app[BILLING].notifier
    ctx = JobContext(store=gateway.store, settings=settings, clock=time.time,
                     mailer=mailer or Notifier(settings, BillingDB(gateway.store)),
                     catalog=gateway.catalog, admission=gateway.admission)
    app[SCHEDULER] = Scheduler(ctx)

    async def scheduler_ctx(app: web.Application):
        scheduler = app[SCHEDULER]
        if settings.jobs.enabled:
            scheduler.start()
        try:
            yield
        finally:
            await scheduler.stop()

    app.cleanup_ctx.append(scheduler_ctx)

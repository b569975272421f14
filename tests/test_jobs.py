"""Scheduled jobs (voxgate.jobs): the pure decisions on their own, then the
jobs on a real SQLite database with the clock injected: two schedulers (two
store connections, and two processes) polling at once do each job's work
once; a trial reminder goes out once, three days before the trial ends; the
quota alert missed while no server ran goes out once; the monthly summary
once per paying account; the outbox workers of two processes send each
message once to a loopback SMTP server."""

from __future__ import annotations

import asyncio
import calendar
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.billing.test_alerts import SmtpSink
from tests.conftest import ROOT, SLOW, free_port
from voxgate.billing.db import BillingDB
from voxgate.billing.events import EventProcessor
from voxgate.billing.notify import (
    Notifier,
    OutboxWorker,
    TrialEnd,
    catch_up_alerts,
    usage_summary,
    usage_summary_email,
)
from voxgate.billing.stripe_api import StripeApi
from voxgate.config import load_settings
from voxgate.jobs import (
    JOBS,
    Job,
    JobContext,
    JobRun,
    JobRunsDB,
    Scheduler,
    interval_of,
    is_due,
    job_table,
    lease_of,
    next_run_at,
    stale_cutoff,
    summary_recipients,
    trial_reminders_due,
)
from voxgate.models import Account, Measurements, SessionRecord, Verdict, load_catalog, new_id
from voxgate.models.enterprise import enterprise_plan
from voxgate.store.base import MonthlyUsage, period_of
from voxgate.store.sql import SQLiteStore

DAY = 86400.0
T0 = float(calendar.timegm((2026, 6, 10, 12, 0, 0)))  # a Wednesday noon, period 2026-06
JOB_NAMES = {j.name for j in JOBS}
CATALOG = """
minutes_per_session = 2.0
default_plan = "free"

[plans.free]
name = "Free"
sessions_included = 10

[plans.starter]
name = "Starter"
price_cents = 2900
sessions_included = 10
trial_days = 14

[plans.pro]
name = "Pro"
price_cents = 2900
sessions_included = 3
overage_cents = 7
"""


class Clock:
    """The injected clock: ``now`` in Unix seconds, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG)
    return path


@pytest.fixture
def settings(tmp_path: Path, catalog_file: Path):
    return load_settings(None, data_dir=str(tmp_path / "data"), catalog=str(catalog_file))


async def open_ctx(settings, clock: Clock) -> JobContext:
    store = SQLiteStore(settings.sqlite_path)
    await store.open()
    return JobContext(store, settings, clock, Notifier(settings, BillingDB(store)),
                      load_catalog(settings.catalog))


@pytest.fixture
async def two(settings):
    """Two job contexts on two connections to the same database, one clock."""
    clock = Clock(T0)
    a, b = await open_ctx(settings, clock), await open_ctx(settings, clock)
    yield a, b, clock
    await a.store.close()
    await b.store.close()


async def add_session(store, account_id: str, project_id: str, started_at: float, *,
                      billable: bool = True, duration_ms: float = 60_000.0,
                      active: bool = False) -> SessionRecord:
    record = SessionRecord(id=new_id("sess"), account_id=account_id, project_id=project_id,
                           transport="websocket", started_at=started_at, model="gpt-realtime",
                           measurements=Measurements(connected=True, duration_ms=duration_ms,
                                                     audio_in_ms=6000.0))
    if active:
        await store.open_session(record)
        return record
    record.ended_at = started_at + duration_ms / 1000
    await store.complete_session(record, Verdict(billable, "billable" if billable else "too_short",
                                                 "test"))
    return record


async def emails(store, kind: str | None = None):
    found = await BillingDB(store).list_emails()
    return [e for e in found if kind is None or e.kind == kind]


async def backdate(store, account_id: str, created_at: float) -> None:
    async with store.transaction() as db:
        await db.execute("UPDATE accounts SET created_at = ? WHERE id = ?", (created_at, account_id))


# ---------------------------------------------------------------- pure decisions

def test_is_due_and_next_run():
    assert is_due(None, T0)
    assert is_due(JobRun("j", next_run_at=T0), T0)
    assert not is_due(JobRun("j", next_run_at=T0 + 1), T0)
    assert not is_due(JobRun("j", next_run_at=T0 - 10, lease_until=T0 + 5), T0)
    assert is_due(JobRun("j", next_run_at=T0 - 10, lease_until=T0), T0)
    assert next_run_at(T0, DAY, True, 300, T0 + 2) == T0 + DAY  # the cadence does not drift
    assert next_run_at(T0, DAY, False, 300, T0 + 2) == T0 + 300  # a failure is retried sooner
    assert next_run_at(T0, 60, False, 300, T0 + 2) == T0 + 60
    assert next_run_at(T0, 60, True, 300, T0 + 90) == T0 + 90  # never before it finished


def test_intervals_and_stale_cutoff(settings):
    sweep = next(j for j in JOBS if j.name == "stale_session_sweep")
    assert interval_of(sweep, settings) == 600.0
    tuned = load_settings(None, jobs={"intervals_s": {"stale_session_sweep": 60},
                                      "stale_session_s": 120})
    assert interval_of(sweep, tuned) == 60.0
    assert stale_cutoff(T0, tuned) == T0 - 120
    assert stale_cutoff(T0, settings) == T0 - settings.relay.max_session_s - 600


def test_trial_reminders_due():
    accounts = {i: Account(i, f"{i}@x", "starter", T0 - 20 * DAY, stripe_subscription_id=f"sub_{i}")
                for i in ("a", "b", "c", "d", "e")}
    accounts["e"].stripe_subscription_id = "sub_new"  # moved on to another subscription
    trials = [TrialEnd("a", "sub_a", T0 + 5 * DAY),          # too early
              TrialEnd("b", "sub_b", T0 + 3 * DAY),          # exactly three days: today
              TrialEnd("c", "sub_c", T0 + 2.5 * DAY),        # within three days
              TrialEnd("d", "sub_d", T0 - 1),                # over
              TrialEnd("e", "sub_e", T0 + 2 * DAY),          # not its subscription any more
              TrialEnd("zz", "sub_zz", T0 + 2 * DAY)]        # unknown account
    assert [t.account_id for t in trial_reminders_due(trials, accounts, T0)] == ["b", "c"]


def test_summary_recipients(catalog_file):
    cat = load_catalog(catalog_file)
    before = T0 - 40 * DAY  # 2026-05-01
    accounts = [
        Account("paying", "p@x", "starter", before, stripe_subscription_id="sub_1"),
        Account("pastdue", "d@x", "pro", before, status="past_due", stripe_subscription_id="s"),
        Account("comped", "c@x", "starter", before),
        Account("free", "f@x", "free", before, stripe_subscription_id="sub_free"),
        Account("canceled", "x@x", "starter", before, status="canceled",
                stripe_subscription_id="sub_2"),
        Account("new", "n@x", "starter", T0, stripe_subscription_id="sub_3"),  # after 2026-05
    ]
    assert [a.id for a in summary_recipients(accounts, cat, "2026-05")] == ["paying", "pastdue"]
    terms = enterprise_plan("ent", {"price_cents": 50000, "sessions_included": 1000})
    accounts.append(Account("ent", "e@x", "enterprise", before, stripe_subscription_id="sub_e"))
    assert [a.id for a in summary_recipients(accounts, cat, "2026-05", {"ent": terms})] == [
        "paying", "pastdue", "ent"]


def test_catch_up_alerts_send_the_highest_missed_threshold(catalog_file):
    plan = load_catalog(catalog_file).get("starter")  # 10 included: 80 % = 8, 95 % = 10
    assert catch_up_alerts(plan, 7, []) == (None, [])
    alert, superseded = catch_up_alerts(plan, 10, [])
    assert alert is not None and (alert.threshold, superseded) == (100, [80, 95])
    alert, superseded = catch_up_alerts(plan, 8, [80])
    assert (alert, superseded) == (None, [])
    alert, superseded = catch_up_alerts(plan, 10, [80])
    assert alert is not None and (alert.threshold, superseded) == (100, [95])


def test_usage_summary_contents(catalog_file):
    plan = load_catalog(catalog_file).get("pro")  # 3 included, 7 c beyond, 29.00 a month
    usage = MonthlyUsage("acct", "2026-05", sessions=7, billable_sessions=5,
                         minutes_used=3.2789, audio_seconds=100.04)
    s = usage_summary(plan, usage)
    assert (s.billable_sessions, s.overage_sessions, s.cost_cents) == (5, 2, 2900 + 2 * 7)
    assert (s.minutes_used, s.audio_seconds, s.sessions_included) == (3.3, 100.0, 3)
    subject, body = usage_summary_email(s, "http://x/billing")
    assert subject == "voxgate: your usage for 2026-05"
    assert "Billable sessions: 5 of 3 included" in body and "Minutes used:      3.3" in body
    assert "Overage sessions:  2" in body and "Cost of the month: 29.14" in body


def test_job_table(settings):
    runs = {"usage_limit_check": JobRun("usage_limit_check", next_run_at=T0 + DAY,
                                        last_started_at=T0, last_finished_at=T0 + 1,
                                        last_outcome="ok", last_detail="0 sent", runs=3),
            "stale_session_sweep": JobRun("stale_session_sweep", lease_until=T0 + 10)}
    rows = {r["name"]: r for r in job_table(JOBS, runs, settings, T0)}
    assert set(rows) == JOB_NAMES
    check = rows["usage_limit_check"]
    assert (check["last_outcome"], check["next_run_at"], check["runs"]) == ("ok", T0 + DAY, 3)
    assert rows["stale_session_sweep"]["running"] and not check["running"]
    assert rows["trial_ending_reminder"]["last_started_at"] is None
    assert rows["trial_ending_reminder"]["next_run_at"] is None  # at the next poll


# ---------------------------------------------------------------- on a real database

async def fill(store, clock: Clock, notifier: Notifier) -> dict[str, str]:
    """Work for every job: stale and live active sessions, a missed alert, a
    trial ending in two days, a paying account with last month's usage."""
    trial = await store.create_account("trial@example.com", "starter")
    await store.update_account(trial.id, stripe_subscription_id="sub_trial")
    await notifier.note_trial(trial.id, {"id": "sub_trial", "status": "trialing",
                                         "trial_end": clock.now + 2 * DAY})
    payer = await store.create_account("payer@example.com", "pro")
    await store.update_account(payer.id, stripe_subscription_id="sub_payer")
    await backdate(store, payer.id, clock.now - 60 * DAY)
    project = await store.create_project(payer.id, "p")
    for i in range(4):  # last month: 4 billable of 3 included
        await add_session(store, payer.id, project.id, clock.now - 20 * DAY + i)
    heavy = await store.create_account("heavy@example.com", "free")
    heavy_project = await store.create_project(heavy.id, "p")
    for i in range(9):  # 90 % of 10, this month, while no server ran: one alert owed
        await add_session(store, heavy.id, heavy_project.id, clock.now - 3600 + i)
    for i in range(3):  # left active by a process that died hours ago
        await add_session(store, heavy.id, heavy_project.id, clock.now - 5 * 3600 + i, active=True)
    live = await add_session(store, heavy.id, heavy_project.id, clock.now - 60, active=True)
    return {"trial": trial.id, "payer": payer.id, "heavy": heavy.id, "live": live.id}


async def check_done_once(store, ids: dict[str, str], clock: Clock, *,
                          live_swept: bool = False) -> None:
    assert [e.to_addr for e in await emails(store, "trial_ending")] == ["trial@example.com"]
    summaries = await emails(store, "usage_summary")
    assert [e.to_addr for e in summaries] == ["payer@example.com"]
    assert "Billable sessions: 4 of 3 included" in summaries[0].body
    alerts = await emails(store, "quota_warning")
    assert len(alerts) == 1 and "(80%)" in alerts[0].body  # 9 of 10: 80 % reached, 95 % not
    assert len(await emails(store)) == 3
    usage = await store.get_usage(ids["heavy"], period_of(clock.now))
    swept = 3 + live_swept
    assert (usage.sessions, usage.billable_sessions) == (9 + swept, 9)  # each swept once
    assert await store.count_sessions(ids["heavy"]) == 13
    live = await store.get_session(ids["live"])
    assert live.status == ("completed" if live_swept else "active")


async def test_two_schedulers_on_one_database_do_each_job_once(two):
    a, b, clock = two
    ids = await fill(a.store, clock, a.mailer)
    one, other = Scheduler(a, owner="one"), Scheduler(b, owner="other")
    ran_a, ran_b = await asyncio.gather(one.tick(), other.tick())
    assert set(ran_a).isdisjoint(ran_b) and set(ran_a) | set(ran_b) == JOB_NAMES
    ran = {**ran_a, **ran_b}
    assert ran["stale_session_sweep"] == "3 stale session(s) completed"
    assert ran["usage_limit_check"] == "1 missed alert(s) sent for 2026-06"
    assert ran["trial_ending_reminder"] == "1 trial reminder(s) queued"
    assert ran["monthly_usage_summary"] == "1 summary for 2026-05 queued"
    await check_done_once(a.store, ids, clock)

    # and the outbox workers of both processes send each message once
    sink = SmtpSink(free_port())
    await sink.start()
    try:
        smtp = {"smtp": {"host": "127.0.0.1", "port": sink.port, "timeout_s": 5.0}}
        workers = [OutboxWorker(load_settings(None, **smtp), BillingDB(ctx.store))
                   for ctx in (a, b)]
        counts = await asyncio.gather(*(w.run_once() for w in workers))  # queued in real time
        assert sum(c["emails"] for c in counts) == 3
        assert sorted(rcpt for _, rcpts, _ in sink.messages for rcpt in rcpts) == [
            "heavy@example.com", "payer@example.com", "trial@example.com"]
        assert all(e.sent_at for e in await emails(a.store))
    finally:
        await sink.stop()

    assert await asyncio.gather(one.tick(), other.tick()) == [{}, {}]  # nothing due
    runs = await JobRunsDB(a.store).runs()
    assert {r.last_outcome for r in runs.values()} == {"ok"} and {r.runs for r in runs.values()} == {1}
    assert {r.lease_owner for r in runs.values()} == {None}
    assert runs["usage_limit_check"].next_run_at == T0 + DAY

    clock.now += DAY  # every job due again: nothing left to do but the session now stale
    ran_a, ran_b = await asyncio.gather(one.tick(), other.tick())
    assert set(ran_a) | set(ran_b) == JOB_NAMES and set(ran_a).isdisjoint(ran_b)
    again = {**ran_a, **ran_b}
    assert again["stale_session_sweep"] == "1 stale session(s) completed"  # the "live" one
    assert again["usage_limit_check"] == "0 missed alert(s) sent for 2026-06"
    assert again["trial_ending_reminder"] == "0 trial reminder(s) queued"
    assert again["monthly_usage_summary"] == "0 summaries for 2026-05 queued"
    await check_done_once(a.store, ids, clock, live_swept=True)


async def test_two_processes_on_one_database_do_each_job_once(settings, catalog_file):
    clock = Clock(T0)
    ctx = await open_ctx(settings, clock)
    try:
        ids = await fill(ctx.store, clock, ctx.mailer)
        start_at = time.time() + 2.0 * SLOW  # both import and open first, then poll together
        procs = [await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.jobs_tick", str(settings.sqlite_path), str(catalog_file),
            str(T0), str(start_at), name, cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE) for name in ("p1", "p2")]
        outs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)),
                                      30 * SLOW)
        for p, (_, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err.decode()
        ran = [json.loads(out) for out, _ in outs]
        assert set(ran[0]).isdisjoint(ran[1]) and set(ran[0]) | set(ran[1]) == JOB_NAMES
        owners = {r.name: r for r in (await JobRunsDB(ctx.store).runs()).values()}
        assert all(r.runs == 1 and r.last_outcome == "ok" for r in owners.values())
        await check_done_once(ctx.store, ids, clock)
    finally:
        await ctx.store.close()


async def test_trial_reminder_once_three_days_before_the_end(two, tmp_path):
    a, _, clock = two
    trial_end = T0 + 14 * DAY  # a 14-day trial that started now
    account = await a.store.create_account("t@example.com", "free")
    # the subscription as Stripe sends it: the webhook path records the trial
    sub = {"id": "sub_t", "object": "subscription", "status": "trialing", "customer": "cus_t",
           "trial_end": trial_end, "metadata": {"voxgate_account": account.id},
           "items": {"data": [{"price": {"lookup_key": "voxgate_starter"}}]}}

    class KnownSubscription(StripeApi):
        async def get_subscription(self, subscription_id):
            return sub if subscription_id == "sub_t" else None

    api = KnownSubscription(a.settings.billing)
    events = EventProcessor(a.store, a.mailer.bdb, api, a.catalog, a.mailer)
    await events.process({"id": "evt_1", "type": "customer.subscription.created",
                          "data": {"object": sub}})
    account = await a.store.get_account(account.id)
    assert (account.plan_id, account.stripe_subscription_id) == ("starter", "sub_t")
    assert await a.mailer.trials() == [TrialEnd(account.id, "sub_t", trial_end)]

    scheduler = Scheduler(a, [j for j in JOBS if j.name == "trial_ending_reminder"])
    sent_on = []
    for day in range(15):  # a daily run through the whole trial
        clock.now = T0 + day * DAY + 60
        ran = await scheduler.tick()
        assert ran, f"day {day}: the daily job did not run"
        if ran["trial_ending_reminder"].startswith("1 "):
            sent_on.append(day)
    assert sent_on == [11]  # the first run within three days of the end
    reminders = await emails(a.store, "trial_ending")
    assert len(reminders) == 1 and reminders[0].to_addr == "t@example.com"
    assert reminders[0].subject == "voxgate: your Starter trial ends on 2026-06-24"
    assert "29.00 a month" in reminders[0].body

    old = {**sub, "id": "sub_old", "status": "canceled"}  # a late event of an older one
    await a.mailer.note_trial(account.id, old)
    assert await a.mailer.trials() == [TrialEnd(account.id, "sub_t", trial_end)]
    sub = {**sub, "status": "active"}  # out of trial: forgotten
    await events.process({"id": "evt_2", "type": "customer.subscription.updated",
                          "data": {"object": sub}})
    assert await a.mailer.trials() == []
    await api.close()


async def test_missed_alert_sent_once_after_downtime(two):
    """Sessions completed while no server ran the alert hook (written
    straight to the store): the next daily check sends the highest missed
    alert once; the live hook and later checks send nothing more, and the
    next threshold still comes from the live hook."""
    a, b, clock = two
    account = await a.store.create_account("h@example.com", "free")
    project = await a.store.create_project(account.id, "p")
    for i in range(10):  # 100 % of 10 while down
        await add_session(a.store, account.id, project.id, clock.now - 7200 + i)
    clock.now += 3 * DAY  # the server comes back three days later
    checks = [Scheduler(ctx, [j for j in JOBS if j.name == "usage_limit_check"], owner=n)
              for ctx, n in ((a, "a"), (b, "b"))]
    results = await asyncio.gather(*(s.tick() for s in checks))
    assert sorted(r.get("usage_limit_check", "") for r in results) == [
        "", "1 missed alert(s) sent for 2026-06"]
    sent = await emails(a.store)
    assert [e.kind for e in sent] == ["quota_exhausted"] and "(100%)" in sent[0].body
    assert await a.mailer.bdb.quota_alerts(account.id, "2026-06") == [80, 95, 100]
    usage = await a.store.get_usage(account.id, "2026-06")
    assert await a.mailer.quota(account, a.catalog.get("free"), usage) == []  # the live hook
    for _ in range(2):
        clock.now += DAY
        await asyncio.gather(*(s.tick() for s in checks))
    assert len(await emails(a.store)) == 1


async def test_failed_job_recorded_and_retried_and_lease_taken_over(two):
    a, b, clock = two
    calls = []

    async def flaky(ctx: JobContext) -> str:
        calls.append(ctx.clock())
        if len(calls) == 1:
            raise RuntimeError("mail server on fire")
        return "fine"

    job = Job("flaky", 3600.0, flaky, "fails once")
    scheduler = Scheduler(a, [job], owner="a")
    assert await scheduler.tick() == {"flaky": "RuntimeError: mail server on fire"}
    run = (await JobRunsDB(a.store).runs())["flaky"]
    assert (run.last_outcome, run.next_run_at) == ("failed", T0 + a.settings.jobs.retry_s)
    clock.now = run.next_run_at
    assert await scheduler.tick() == {"flaky": "fine"}
    assert (await JobRunsDB(a.store).runs())["flaky"].last_outcome == "ok"

    # a claim whose process died: another takes it over once the lease is out
    db_a, db_b = JobRunsDB(a.store), JobRunsDB(b.store)
    clock.now += 3600
    assert await db_a.claim("flaky", "dead", clock.now, clock.now + 600)
    assert not await db_b.claim("flaky", "b", clock.now + 599, clock.now + 1199)
    assert await db_b.claim("flaky", "b", clock.now + 600, clock.now + 1200)
    assert not await db_a.finish("flaky", "dead", finished_at=clock.now + 700, ok=True,
                                 detail="late", next_at=clock.now + 4300)
    assert await db_b.finish("flaky", "b", finished_at=clock.now + 650, ok=True, detail="took over",
                             next_at=clock.now + 4200)
    assert (await db_a.runs())["flaky"].last_detail == "took over"


async def test_overlap_safe_job_taken_over_after_three_intervals(two):
    """A process that dies (or is paused) while running the instance sweep
    holds its claim for three of its intervals, not ``jobs.lease_s``: another
    process sweeps again within seconds; an ordinary job keeps the long lease."""
    a, b, clock = two
    gate = asyncio.Event()

    async def stuck(ctx: JobContext) -> str:
        await gate.wait()  # the process running it stops here (dies, or is paused)
        return "late"

    async def fine(ctx: JobContext) -> str:
        return "swept"

    sweep = Job("sweep", 10.0, stuck, "a sweep", overlap_safe=True)
    ordinary = Job("ordinary", 10.0, stuck, "not overlap-safe")
    assert lease_of(sweep, a.settings) == 30.0 and lease_of(ordinary, a.settings) == 600.0
    dying = [asyncio.ensure_future(Scheduler(a, [job], owner=f"dying-{job.name}").tick())
             for job in (sweep, ordinary)]
    await asyncio.sleep(0.2)  # it claimed both and is stuck in them
    survivor = Scheduler(b, [Job("sweep", 10.0, fine, overlap_safe=True),
                             Job("ordinary", 10.0, fine)], owner="survivor")
    clock.now += 29.0
    assert await survivor.tick() == {}  # the sweep's claim is still the dying one's
    clock.now += 1.0
    assert await survivor.tick() == {"sweep": "swept"}  # the ordinary job waits for lease_s
    for task in dying:
        task.cancel()
    gate.set()

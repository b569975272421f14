"""The queries of billing (``BillingDB``), the dashboard (``WebDB``) and the
jobs (``JobRunsDB``) on both databases: each test runs on SQLite and on
PostgreSQL (``any_store``), through the store's connection."""

from __future__ import annotations

import asyncio

from voxgate.billing.db import BillingDB
from voxgate.jobs import JobRunsDB
from voxgate.models import Measurements, Reason, SessionRecord, Verdict, new_id
from voxgate.web.db import WebDB

T0 = 1_760_000_000.0  # 2025-10-09 UTC
BILLABLE = Verdict(True, Reason.BILLABLE, "ok")


async def add_session(store, account_id: str, project_id: str, started_at: float,
                      billable: bool = True, settle: bool = False) -> SessionRecord:
    record = SessionRecord(id=new_id("sess"), account_id=account_id, project_id=project_id,
                           transport="websocket", started_at=started_at, model="m",
                           ended_at=started_at + 90,
                           measurements=Measurements(duration_ms=90_000))
    verdict = BILLABLE if billable else Verdict(False, Reason.TOO_SHORT, "short")
    await store.complete_session(record, verdict, settle=settle)
    return record


async def test_billing_tables(any_store):
    store, bdb = any_store, BillingDB(any_store)
    account = await store.create_account("ada@example.com", "payg")
    await store.update_account(account.id, stripe_customer_id="cus_1", status="past_due",
                               past_due_since=T0)
    assert (await bdb.account_by_customer("cus_1")).id == account.id
    assert [a.id for a in await bdb.past_due_accounts(T0 + 1)] == [account.id]
    assert await bdb.past_due_accounts(T0) == []

    assert await bdb.record_event("evt_1", "invoice.paid", b'{"id": "evt_1"}')
    assert not await bdb.record_event("evt_1", "invoice.paid", b'{"id": "evt_1"}')  # replay
    assert await bdb.unprocessed_events() == [("evt_1", '{"id": "evt_1"}')]
    await bdb.event_failed("evt_1", "boom")
    await bdb.event_done("evt_1")
    assert await bdb.unprocessed_events() == []
    assert (await bdb.event_status("evt_1"))["attempts"] == 1

    await store.set_meta("cancel_at:sub_1", "1")
    await store.set_meta("cancel_at:sub_2", "2")
    await store.set_meta("other", "3")
    assert sorted(await bdb.meta_with_prefix("cancel_at:")) == [("cancel_at:sub_1", "1"),
                                                               ("cancel_at:sub_2", "2")]
    assert await bdb.claim_quota_alert(account.id, "2025-10", 80)
    assert not await bdb.claim_quota_alert(account.id, "2025-10", 80)
    assert await bdb.quota_alerts(account.id, "2025-10") == [80]

    await bdb.audit("cli:root", account.id, "plan.change", {"plan": "pro"})
    [entry] = await bdb.list_audit(account.id)
    assert entry["action"] == "plan.change" and entry["detail"] == {"plan": "pro"}


async def test_email_and_webhook_outboxes_claimed_once(any_store):
    store, bdb = any_store, BillingDB(any_store)
    account = await store.create_account("ada@example.com", "payg")
    assert await bdb.queue_email(account_id=account.id, kind="k", to_addr="a@x", subject="s",
                                 body="b", dedupe_key="once")
    assert not await bdb.queue_email(account_id=account.id, kind="k", to_addr="a@x",
                                     subject="s", body="b", dedupe_key="once")
    [item] = await bdb.due_emails(1e12)
    claims = await asyncio.gather(*(bdb.claim_email(item.id, 1e12, 1e12 + 60)
                                    for _ in range(4)))
    assert claims.count(True) == 1
    await bdb.email_sent(item.id)
    assert await bdb.due_emails(2e12) == []

    await bdb.set_account_webhook(account.id, "https://example.com/h", "whsec")
    await bdb.set_account_webhook(account.id, "https://example.com/h2", "whsec2")
    assert await bdb.account_webhook(account.id) == ("https://example.com/h2", "whsec2")
    assert await bdb.queue_webhook(account.id, "quota.warning", {"pct": 80}, "w1")
    assert not await bdb.queue_webhook(account.id, "quota.warning", {"pct": 80}, "w1")
    [hook] = await bdb.due_webhooks(1e12)
    assert await bdb.claim_webhook(hook.id, 1e12, 1e12 + 60)
    assert not await bdb.claim_webhook(hook.id, 1e12, 1e12 + 60)
    await bdb.webhook_failed(hook.id, 1e12 + 5, "503")
    assert [h.attempts for h in await bdb.due_webhooks(1e12 + 5)] == [1]


async def test_invoice_settlements(any_store):
    store, bdb = any_store, BillingDB(any_store)
    account = await store.create_account("ada@example.com", "payg")
    project = await store.create_project(account.id, "p")
    sessions = [await add_session(store, account.id, project.id, T0 + i, settle=True)
                for i in range(3)]
    [(acct, period, ids)] = await bdb.unclaimed_closed("2025-11")
    assert (acct, period, sorted(ids)) == (account.id, "2025-10", sorted(s.id for s in sessions))
    settlement = await bdb.claim_settlement(account.id, period, ids, 50, T0 + 1000)
    assert (settlement.quantity, settlement.amount_cents) == (3, 150)
    assert await bdb.claim_settlement(account.id, period, ids, 50, T0 + 1000) is None
    assert await bdb.unclaimed_closed("2025-11") == []
    first, second = await asyncio.gather(bdb.claim_settlements(T0 + 2000, T0 + 2300),
                                         bdb.claim_settlements(T0 + 2000, T0 + 2300))
    assert sorted([len(first), len(second)]) == [0, 1]  # one worker has it
    await bdb.settlement_failed(settlement.id, T0 + 3000, "stripe: 503")
    assert [e[1:] for e in await bdb.outbox_errors(account.id)] == [(1, "stripe: 503")] * 3
    await bdb.settlement_done(settlement.id, "ii_1")
    assert {(await store.get_session(s.id)).settlement for s in sessions} == {"invoiced"}
    assert await bdb.outbox_errors(account.id) == []


async def test_dashboard_tables(any_store):
    store, wdb = any_store, WebDB(any_store, b"k" * 32)
    account = await store.create_account("ada@example.com", "starter")
    project = await store.create_project(account.id, "p")
    user = await wdb.create_user(account.id, "Ada@Example.com", "hash")
    assert (await wdb.user_by_email("ada@example.COM")).id == user.id
    token, csrf = await wdb.start_session(user, now=T0)
    found = await wdb.session_user(token, now=T0 + 1)
    assert found is not None and found[0].id == user.id and found[1] == csrf
    await wdb.end_session(token)
    assert await wdb.session_user(token, now=T0 + 1) is None

    await wdb.enable_totp(user.id, "SECRET", 100, ["01234-56789", "abcde-f0123"], now=T0)
    assert not await wdb.accept_totp_step(user.id, 100)  # that step was the enrolment's
    assert await wdb.accept_totp_step(user.id, 101)
    assert await wdb.use_recovery_code(user.id, "0123456789", now=T0)
    assert not await wdb.use_recovery_code(user.id, "0123456789", now=T0)
    assert await wdb.recovery_codes_left(user.id) == 1

    await store.update_account(account.id, plan_id="pro")  # recorded by the triggers
    changes = [(c.old_plan, c.new_plan) for c in await wdb.plan_changes()
               if c.account_id == account.id]
    assert changes == [(None, "starter"), ("starter", "pro")]

    for i, billable in enumerate((True, True, False)):
        await add_session(store, account.id, project.id, T0 + i * 86400, billable)
    days = await wdb.sessions_per_day(account.id, T0 - 86400, T0 + 3 * 86400)
    assert [(d.day, d.billable, d.not_billable) for d in days] == [
        ("2025-10-09", 1, 0), ("2025-10-10", 1, 0), ("2025-10-11", 0, 1)]
    assert days[0].billable_minutes == 1.5
    assert await wdb.sessions_per_day_all(T0) == [("2025-10-09", 1, 1), ("2025-10-10", 1, 1),
                                                  ("2025-10-11", 1, 0)]
    assert await wdb.active_account_ids(T0) == {account.id}
    assert await wdb.sessions_per_account("2025-10") == {account.id: 3}


async def test_job_runs_claimed_once(any_store):
    runs = JobRunsDB(any_store)
    claims = await asyncio.gather(*(runs.claim("sweep", f"p{i}", T0, T0 + 600)
                                    for i in range(4)))
    assert claims.count(True) == 1
    owner = f"p{claims.index(True)}"
    assert not await runs.finish("sweep", "someone-else", finished_at=T0 + 1, ok=True,
                                 detail="x", next_at=T0 + 60)
    assert await runs.finish("sweep", owner, finished_at=T0 + 1, ok=True, detail="done",
                             next_at=T0 + 60)
    run = (await runs.runs())["sweep"]
    assert (run.runs, run.last_outcome, run.lease_owner, run.next_run_at) == (
        1, "ok", None, T0 + 60)
    assert not await runs.claim("sweep", "p9", T0 + 59, T0 + 600)
    assert await runs.claim("sweep", "p9", T0 + 60, T0 + 600)


async def test_two_schedulers_run_a_job_once_per_interval(any_store):
    """Two processes' schedulers on one database: each due run goes to one."""
    from tests.conftest import same_database
    from voxgate.config import load_settings
    from voxgate.jobs import Job, JobContext, Scheduler
    from voxgate.models import load_catalog

    other = same_database(any_store)
    await other.open()
    try:
        ran: list[str] = []
        now = [T0]

        async def count(ctx: JobContext) -> str:
            ran.append(ctx.store.instance_id or "?")
            return "counted"

        job = Job("count", 60.0, count)
        settings = load_settings(None)
        schedulers = [
            Scheduler(JobContext(store, settings, lambda: now[0], None, load_catalog()),
                      [job], owner=f"p{i}")
            for i, store in enumerate((any_store, other, any_store, other))]
        for store, name in ((any_store, "a"), (other, "b")):
            store.instance_id = name
        for _ in range(3):
            results = await asyncio.gather(*(s.tick() for s in schedulers))
            assert sum(len(r) for r in results) == 1  # one of the four ran it
            assert await asyncio.gather(*(s.tick() for s in schedulers)) == [{}] * 4
            now[0] += 60
        assert len(ran) == 3
    finally:
        await other.close()

"""Housekeeping on both databases: the jobs that purge expired ephemeral
keys, delete delivered outbox rows and empty processed Stripe payloads
after their retention, in bounded batches, never touching what is still
needed (unsent mail, unprocessed events, live keys); and the in-memory maps
of the store and the gateway stay bounded however many keys and accounts
pass through them."""

from __future__ import annotations

import time

import pytest

from tests.conftest import drop_store, open_store
from voxgate.admission.base import InProcessAdmission
from voxgate.billing.db import BillingDB
from voxgate.billing.notify import Notifier
from voxgate.caches import BoundedDict
from voxgate.config import load_settings
from voxgate.jobs import (
    DAY_S,
    JOBS,
    JobContext,
    Scheduler,
    prune_outbox,
    prune_stripe_payloads,
    purge_ephemeral_keys,
    retention_cutoff,
)
from voxgate.models import load_catalog
from voxgate.store import accounts as store_accounts
from voxgate.store.base import period_of


class Clock:
    """The jobs' clock (Unix s), moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def context(store, clock: Clock, tmp_path, **retention) -> JobContext:
    settings = load_settings(None, data_dir=str(tmp_path / "data"), retention=retention)
    return JobContext(store, settings, clock, Notifier(settings, BillingDB(store)),
                      load_catalog(settings.catalog))


async def count(store, sql: str) -> int:
    return int((await store.db.execute_fetchall(sql))[0][0])


def test_retention_cutoff():
    assert retention_cutoff(1000.0, 100.0) == 900.0
    assert retention_cutoff(1000.0, 0.0) is None  # kept for ever


def test_housekeeping_jobs_are_registered():
    names = {job.name: job for job in JOBS}
    for name, run in (("ephemeral_key_purge", purge_ephemeral_keys),
                      ("outbox_prune", prune_outbox),
                      ("stripe_payload_prune", prune_stripe_payloads)):
        assert names[name].run is run
        assert names[name].interval_s == 3600.0


async def test_expired_ephemeral_keys_purged_after_the_grace(any_store, tmp_path):
    store = any_store
    account = await store.create_account("ada@example.com", "starter")
    project = await store.create_project(account.id, "p")
    now = time.time()
    expired_long_ago = [await store.create_ephemeral_key(project.id, {}, now - 7200 - i)
                        for i in range(5)]
    _, just_expired = await store.create_ephemeral_key(project.id, {}, now - 60)
    _, live = await store.create_ephemeral_key(project.id, {}, now + 600)
    ctx = context(store, Clock(now), tmp_path, ephemeral_key_grace_s=3600, batch_size=2)
    assert await purge_ephemeral_keys(ctx) == "5 expired ephemeral key(s) deleted"
    assert await count(store, "SELECT COUNT(*) FROM ephemeral_keys") == 2
    for key, _ in expired_long_ago:
        assert await count(store, f"SELECT COUNT(*) FROM ephemeral_keys WHERE id = '{key.id}'") == 0
    # inside the grace an expired key still says "expired"; a live one works
    assert await store.find_ephemeral_key(just_expired) is not None
    assert await store.find_ephemeral_key(live) is not None
    assert await purge_ephemeral_keys(ctx) == "0 expired ephemeral key(s) deleted"


async def test_delivered_outbox_rows_pruned_after_retention(any_store, tmp_path):
    store = any_store
    db = BillingDB(store)
    account = await store.create_account("ada@example.com", "starter")
    for i in range(3):
        await db.queue_email(account_id=account.id, kind="k", to_addr="ada@example.com",
                             subject="s", body="b", dedupe_key=f"sent-{i}")
    await db.queue_email(account_id=account.id, kind="k", to_addr="ada@example.com",
                         subject="s", body="b", dedupe_key="never-sent")
    for item in (await db.list_emails())[:3]:
        await db.email_sent(item.id)
    for i in range(2):
        await db.queue_webhook(account.id, "quota.alert", {"n": i}, dedupe_key=f"hook-{i}")
    delivered = (await db.due_webhooks(time.time() + 1))[0]
    await db.webhook_delivered(delivered.id)
    sent_at = time.time()
    clock = Clock(sent_at + 29 * DAY_S)  # within outbox_days = 30
    ctx = context(store, clock, tmp_path, outbox_days=30, batch_size=2)
    assert await prune_outbox(ctx) == "0 sent email(s), 0 delivered webhook(s) deleted"
    clock.now = sent_at + 31 * DAY_S
    assert await prune_outbox(ctx) == "3 sent email(s), 1 delivered webhook(s) deleted"
    # what was never sent or delivered stays, however old
    assert [e.sent_at for e in await db.list_emails()] == [None]
    rows = await store.db.execute_fetchall("SELECT delivered_at FROM webhook_outbox")
    assert [r[0] for r in rows] == [None]
    assert await prune_outbox(ctx) == "0 sent email(s), 0 delivered webhook(s) deleted"
    # outbox_days = 0: kept for ever
    await db.email_sent((await db.list_emails())[0].id)
    clock.now += 365 * DAY_S
    assert await prune_outbox(context(store, clock, tmp_path, outbox_days=0)) == \
        "kept (retention.outbox_days = 0)"
    assert await count(store, "SELECT COUNT(*) FROM email_outbox") == 1


async def test_processed_stripe_payloads_emptied_and_replays_still_recognized(any_store,
                                                                              tmp_path):
    store = any_store
    db = BillingDB(store)
    for i in range(5):
        assert await db.record_event(f"evt_{i}", "invoice.paid", b'{"id": "evt_%d"}' % i)
        if i < 4:
            await db.event_done(f"evt_{i}")
    done_at = time.time()
    clock = Clock(done_at + 31 * DAY_S)
    ctx = context(store, clock, tmp_path, webhook_payload_days=30, batch_size=3, max_batches=1)
    # one batch per run at most: the backlog goes over the next runs
    assert await prune_stripe_payloads(ctx) == "3 processed Stripe event payload(s) emptied"
    assert await prune_stripe_payloads(ctx) == "1 processed Stripe event payload(s) emptied"
    assert await prune_stripe_payloads(ctx) == "0 processed Stripe event payload(s) emptied"
    rows = await store.db.execute_fetchall(
        "SELECT id, payload, processed_at IS NOT NULL FROM stripe_events ORDER BY id")
    assert [tuple(r) for r in rows] == [
        *((f"evt_{i}", "", True) for i in range(4)), ("evt_4", '{"id": "evt_4"}', False)]
    # the unprocessed event is still there to process; a replay is still a replay
    assert await db.unprocessed_events() == [("evt_4", '{"id": "evt_4"}')]
    assert not await db.record_event("evt_0", "invoice.paid", b"{}")


async def test_housekeeping_runs_once_per_interval_through_the_scheduler(any_store, tmp_path):
    store = any_store
    account = await store.create_account("ada@example.com", "starter")
    project = await store.create_project(account.id, "p")
    now = time.time()
    await store.create_ephemeral_key(project.id, {}, now - 2 * DAY_S)
    clock = Clock(now)
    ctx = context(store, clock, tmp_path)
    housekeeping = [j for j in JOBS if j.name in ("ephemeral_key_purge", "outbox_prune",
                                                   "stripe_payload_prune")]
    scheduler = Scheduler(ctx, housekeeping, owner="a")
    other = Scheduler(ctx, housekeeping, owner="b")
    ran = await scheduler.tick()
    assert ran == {"ephemeral_key_purge": "1 expired ephemeral key(s) deleted",
                   "outbox_prune": "0 sent email(s), 0 delivered webhook(s) deleted",
                   "stripe_payload_prune": "0 processed Stripe event payload(s) emptied"}
    assert await other.tick() == {}  # not due again before an interval
    clock.now += 3600
    assert set(await other.tick()) == set(ran)


# ---------------------------------------------------------------- bounded maps

async def test_store_key_maps_stay_bounded(tmp_path, monkeypatch):
    """However many API keys pass through one process, the store remembers
    at most KEY_CACHE_MAX of them (lookups and last-used writes), and keys
    it forgot are still found."""
    monkeypatch.setattr(store_accounts, "KEY_CACHE_MAX", 4)
    store = await open_store("sqlite", tmp_path)
    try:
        account = await store.create_account("ada@example.com", "starter")
        project = await store.create_project(account.id, "p")
        keys = [await store.create_api_key(project.id, f"k{i}") for i in range(10)]
        for _ in range(2):
            for key, plaintext in keys:
                found = await store.find_api_key(plaintext)
                assert found is not None and found[0].id == key.id
                assert found[0].last_used_at is not None
                assert len(store._key_cache) <= 4 and len(store._last_used_written) <= 4
    finally:
        await drop_store(store)


async def test_gateway_usage_cache_stays_bounded(tmp_path, monkeypatch):
    """The gateway's (account, period) usage cache keeps at most
    USAGE_CACHE_MAX entries; an evicted one is read again from the store,
    with the same figures."""
    from voxgate.proxy import gateway as gateway_module
    from voxgate.proxy.gateway import Gateway

    monkeypatch.setattr(gateway_module, "USAGE_CACHE_MAX", 3)
    store = await open_store("sqlite", tmp_path)
    try:
        settings = load_settings(None, data_dir=str(tmp_path / "data"))
        gateway = Gateway(settings, store, InProcessAdmission(), load_catalog(settings.catalog))
        assert isinstance(gateway._usage, BoundedDict)
        accounts = [await store.create_account(f"a{i}@example.com", "starter") for i in range(8)]
        period = period_of()
        for account in accounts:
            usage = await gateway.usage(account.id, period)
            assert usage.sessions == 0
            assert len(gateway._usage) <= 3
        assert (await gateway.usage(accounts[0].id, period)).account_id == accounts[0].id
    finally:
        await drop_store(store)


def test_bounded_dict_evicts_the_least_recently_used():
    d: BoundedDict[str, int] = BoundedDict(2)
    d["a"], d["b"] = 1, 2
    assert d.get("a") == 1  # a used: b is now the oldest
    d["c"] = 3
    assert dict(d) == {"a": 1, "c": 3}
    assert d.setdefault("a", 9) == 1 and d.setdefault("d", 4) == 4
    assert list(d) == ["a", "d"]
    with pytest.raises(ValueError):
        BoundedDict(0)

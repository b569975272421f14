"""The operator's margin view (issue 21, item 3): a month of seeded
sessions across plans, written through the store on SQLite and PostgreSQL,
gives the revenue, provider cost and margin figures computed by hand here;
the pure sums on their own."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from tests.web.conftest import WEB_CATALOG
from voxgate.models import Measurements, SessionRecord, Verdict, load_catalog, new_id
from voxgate.models.figures import period_bounds
from voxgate.models.margin import AccountMonth, margin
from voxgate.store.base import period_of
from voxgate.store.queries.margin import read_margin

PERIOD = "2026-11"
DAY = 86400.0


@pytest.fixture
def catalog(tmp_path):
    path = tmp_path / "catalog.toml"
    path.write_text(WEB_CATALOG)
    return load_catalog(path)


def test_margin_pure_sums(catalog):
    rows = [
        # a Starter subscriber: 3 billable, 1 free session, a pack bought
        AccountMonth("a1", "a1@x", billable=3, non_billable=1, cost_billable_micros=1_500_000,
                     cost_non_billable_micros=250_000, packs_cents=1500),
        # pay as you go, subscribed: 4 billable at 10 cents, 2 of them paid by a pack
        AccountMonth("a2", "a2@x", billable=4, cost_billable_micros=400_000, pack_covered=2),
        # comped Growth: no revenue, all cost
        AccountMonth("a3", "a3@x", billable=2, non_billable=2, cost_billable_micros=3_000_000,
                     cost_non_billable_micros=1_000_001, unpriced_sessions=1),
    ]
    states = {"a1": ("starter", "active", True), "a2": ("payg", "active", True),
              "a3": ("growth", "active", False)}
    m = margin(PERIOD, rows, states, catalog, histogram=[1, 2, 3])
    by = {a.key: a for a in m.accounts}
    assert (by["a1"].subscription_cents, by["a1"].overage_cents, by["a1"].packs_cents) == (2900, 0, 1500)
    assert by["a1"].margin_usd == Decimal("44.00") - Decimal("1.75")
    assert (by["a2"].subscription_cents, by["a2"].overage_cents) == (0, 20)
    assert by["a2"].cost_per_billable_usd == Decimal("0.100000")
    assert by["a3"].revenue_cents == 0 and by["a3"].margin_usd == Decimal("-4.000001")
    assert [a.key for a in m.accounts] == ["a3", "a2", "a1"]  # lowest margin first
    assert m.total.revenue_cents == 2900 + 1500 + 20
    assert m.total.cost_non_billable_usd == Decimal("1.250001")
    assert m.total.unpriced_sessions == 1
    assert [p.key for p in m.plans] == ["growth", "payg", "starter"]
    body = m.to_json()
    assert body["total"]["margin_usd"] == str(Decimal("44.20") - Decimal("6.150001"))
    assert [b["sessions"] for b in body["cost_per_billable_session_histogram"][:4]] == [1, 2, 3, 0]
    assert body["cost_per_billable_session_histogram"][-1]["to_usd"] is None


async def seed_session(store, account_id: str, project_id: str, started_at: float, *,
                       billable: bool, cost: str | None, paid_by_customer: bool = False) -> str:
    m = Measurements(connected=True, connect_ms=100.0, duration_ms=60_000.0,
                     audio_in_ms=6000.0, audio_out_ms=3000.0, closed_by="client", close_code=1000)
    record = SessionRecord(id=new_id("sess"), account_id=account_id, project_id=project_id,
                           transport="websocket", started_at=started_at,
                           ended_at=started_at + 60, period=period_of(started_at),
                           model="gpt-realtime",
                           measurements=m)
    record.provider_cost_usd = None if cost is None else Decimal(cost)
    record.provider_cost_reason = "unknown model" if cost is None else None
    reason = "billable" if billable else "too_short"
    await store.complete_session(record, Verdict(billable, reason, reason))
    if paid_by_customer:
        await store.db.execute("UPDATE sessions SET paid_by = 'customer' WHERE id = ?", (record.id,))
    return record.id


async def test_a_seeded_month_gives_the_hand_computed_margin(any_store, catalog):
    """This month (the accounts exist from now on, as the plan history says)."""
    store = any_store
    now = time.time()
    period = period_of(now)
    t = max(period_bounds(period)[0], now - 60)
    starter = await store.create_account("s@x", "starter")
    await store.update_account(starter.id, stripe_subscription_id="sub_1")
    free = await store.create_account("f@x", "free")
    ps = await store.create_project(starter.id, "p")
    pf = await store.create_project(free.id, "p")
    for cost in ("0.120000", "0.080000", "0.300000"):
        await seed_session(store, starter.id, ps.id, t, billable=True, cost=cost)
    await seed_session(store, starter.id, ps.id, t, billable=False, cost="0.010000")
    await seed_session(store, starter.id, ps.id, t, billable=True, cost="9.000000",
                       paid_by_customer=True)  # BYOK: not the operator's cost
    await seed_session(store, free.id, pf.id, t, billable=True, cost="0.050000")
    await seed_session(store, free.id, pf.id, t, billable=False, cost="0.200000")
    await seed_session(store, free.id, pf.id, t, billable=False, cost=None)
    m = await read_margin(store, catalog, period, time.time())
    by = {a.key: a for a in m.accounts}
    s, f = by[starter.id], by[free.id]
    assert (s.billable, s.non_billable, s.revenue_cents) == (4, 1, 2900)
    assert s.cost_billable_usd == Decimal("0.500000") and s.cost_non_billable_usd == Decimal("0.010000")
    assert s.margin_usd == Decimal("29.00") - Decimal("0.51")
    assert s.cost_per_billable_usd == Decimal("0.127500")
    assert (f.billable, f.non_billable, f.revenue_cents, f.unpriced_sessions) == (1, 2, 0, 1)
    assert f.margin_usd == Decimal("-0.250000")
    assert [a.key for a in m.accounts][0] == free.id  # lowest margin first
    assert m.total.cost_non_billable_usd == Decimal("0.210000")  # what the guarantee cost
    plans = {p.key: p for p in m.plans}
    assert plans["starter"].revenue_cents == 2900 and plans["free"].accounts == 1
    # histogram of billable, priced, operator-paid sessions: 0.05 0.08 0.12 0.30
    hist = {str(lo): n for lo, _, n in m.cost_histogram}
    assert (hist["0.02"], hist["0.05"], hist["0.10"], hist["0.20"]) == (0, 2, 1, 1)

"""Operator analytics checked against known accounts, plans, cancellations
and sessions; the pure figures, simulator and charts on their own."""

from __future__ import annotations

import time
from dataclasses import dataclass

from tests.web.conftest import WEB_CATALOG, add_session
from voxgate.metering.store import period_of
from voxgate.models import Account, load_catalog
from voxgate.web import charts, figures
from voxgate.web.app import WEB
from voxgate.web.auth import create_operator

DAY = 86400.0


def catalog(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(WEB_CATALOG)
    return load_catalog(path)


@dataclass
class Change:
    at: float
    account_id: str
    new_plan: str
    new_status: str


def test_analytics_pure(tmp_path):
    cat = catalog(tmp_path)
    start, _ = figures.period_bounds("2026-05")
    now = start + 10 * DAY
    before = start - 20 * DAY
    accounts = [
        Account("s1", "s1@x", "starter", before),                       # paying throughout
        Account("s2", "s2@x", "starter", before, status="canceled"),    # churned
        Account("g1", "g1@x", "free", before),                          # downgraded: churned
        Account("g2", "g2@x", "growth", start + DAY),                   # new this period
        Account("p1", "p1@x", "starter", before, status="past_due"),    # still paying
        Account("f1", "f1@x", "free", before),
        Account("pg", "pg@x", "payg", before),                          # paid, 0 MRR
    ]
    changes = [Change(a.created_at, a.id, {"g1": "growth"}.get(a.id, a.plan_id), "active")
               for a in accounts]
    changes += [Change(start + 2 * DAY, "s2", "starter", "canceled"),
                Change(start + 3 * DAY, "g1", "free", "active"),
                Change(start + 4 * DAY, "p1", "starter", "past_due")]
    figs = figures.analytics(accounts, cat, changes, {"s1", "f1", "nobody"},
                             {"s1": 3, "f1": 2, "g1": 1}, "2026-05", now)
    assert figs.mrr == 2900 + 9900 + 2900
    assert (figs.paid_users, figs.free_users) == (4, 3)
    assert figs.conversion_rate == round(400 / 7, 2)
    assert (figs.paid_at_period_start, figs.churned, figs.churn_rate) == (5, 2, 40.0)
    assert figs.active_users == 2
    assert figs.sessions_by_plan == {
        "free": {"avg": 1.5, "total": 3}, "growth": {"avg": 0.0, "total": 0},
        "payg": {"avg": 0.0, "total": 0}, "starter": {"avg": 1.0, "total": 3}}
    hist = figures.history(changes, cat, "2026-05", now, months=2)
    assert [h["period"] for h in hist] == ["2026-04", "2026-05"]
    assert hist[0]["mrr"] == 2900 * 3 + 9900 and hist[0]["paid_users"] == 5
    assert hist[1]["mrr"] == figs.mrr and hist[1]["churn_rate"] == 40.0


def test_simulator_marks_cheapest_serving_plan(tmp_path):
    cat = catalog(tmp_path)
    rows = {r.plan.id: r for r in figures.simulate(cat, 150, "free")}
    assert (rows["free"].cost_cents, rows["free"].refused) == (0, 50)
    assert (rows["tiny"].cost_cents, rows["tiny"].refused) == (0, 148)
    assert rows["payg"].cost_cents == 1500 and rows["payg"].refused == 0
    assert rows["starter"].cost_cents == 2900
    assert [r.plan.id for r in rows.values() if r.cheapest] == ["payg"]
    assert rows["free"].current
    small = {r.plan.id: r for r in figures.simulate(cat, 1)}
    assert [r.plan.id for r in small.values() if r.cheapest] == ["tiny"]


def test_charts_escape_and_scale():
    svg = charts.stacked_bars("<t>", ["1", "2"], [charts.Series("a&b", [1, 3], "s-ok"),
                                                  charts.Series("c", [2, 0], "s-fail")])
    assert "&lt;t&gt;" in svg and "a&amp;b" in svg and "<t>" not in svg
    assert svg.count("<rect") == 3 + 2  # three bars, two legend swatches
    assert charts.nice_max(0) == 1 and charts.nice_max(7) == 10 and charts.nice_max(180) == 200
    assert charts.nice_max(2100) == 2500 and charts.nice_max(0.12) == 0.2
    assert charts.nice_max(1, integer=True) == 4 and charts.nice_max(5, integer=True) == 8
    assert charts.nice_max(33, integer=True) == 40 and charts.nice_max(0, integer=True) == 4


async def test_analytics_endpoint_on_a_known_store(make_server, clients):
    """The figures of GET /admin/analytics on a store filled with known
    accounts (besides the demo, fixture and operator accounts on tiny)."""
    server = await make_server()
    store = server.store
    state = server.app[WEB]
    await create_operator(store, state.db, state.catalog, "ops@example.com", "operator password")
    now = time.time()
    start, _ = figures.period_bounds(period_of(now))
    made = {}
    for name, plan in [("s1", "starter"), ("s2", "starter"), ("g1", "growth"),
                       ("g2", "growth"), ("p1", "starter"), ("f1", "free"), ("old", "growth")]:
        made[name] = await store.create_account(f"{name}@example.com", plan)
    async with store.transaction() as db:  # all but g2 existed before this period
        for name, account in made.items():
            if name != "g2":
                await db.execute("UPDATE plan_changes SET at = ? WHERE account_id = ?",
                                 (start - 20 * DAY, account.id))
                await db.execute("UPDATE accounts SET created_at = ? WHERE id = ?",
                                 (start - 20 * DAY, account.id))
    # "old" canceled last period; the others change now (recorded by the trigger)
    await store.update_account(made["old"].id, status="canceled")
    async with store.transaction() as db:
        await db.execute("UPDATE plan_changes SET at = ? WHERE account_id = ? AND source = 'update'",
                         (start - 5 * DAY, made["old"].id))
    await store.update_account(made["s2"].id, status="canceled")
    await store.update_account(made["g1"].id, plan_id="free")
    await store.update_account(made["p1"].id, status="past_due", past_due_since=now)
    proj = {n: await store.create_project(a.id, "p") for n, a in made.items()}
    for billable in (True, True, False):
        await add_session(store, made["s1"].id, proj["s1"].id, billable=billable,
                          started_at=max(start, now - 120))
    for _ in range(2):
        await add_session(store, made["f1"].id, proj["f1"].id, started_at=max(start, now - 120))
    await add_session(store, made["g2"].id, proj["g2"].id, started_at=now - 40 * DAY)

    ops = clients(server)
    assert await ops.signin("ops@example.com", "operator password") == 303
    await ops.enroll_2fa()
    async with ops.http.get(server.url + "/admin/analytics") as resp:
        assert resp.status == 200
        figs = await resp.json()
    # 3 accounts on tiny (demo, fixture, operator) + 7 made here
    assert figs["period"] == period_of(now)
    assert figs["mrr"] == 2900 + 9900 + 2900  # s1, g2, p1 (past_due still pays)
    assert (figs["paid_users"], figs["free_users"]) == (3, 7)
    assert figs["conversion_rate"] == 30.0
    assert (figs["paid_at_period_start"], figs["churned"]) == (4, 2)  # s1 s2 g1 p1; s2 g1
    assert figs["churn_rate"] == 50.0
    assert figs["active_users"] == 2  # s1, f1 (g2's session is 40 days old)
    assert figs["sessions_by_plan"] == {
        "free": {"avg": 1.0, "total": 2},       # g1 (0), f1 (2)
        "growth": {"avg": 0.0, "total": 0},     # g2, old
        "starter": {"avg": 1.0, "total": 3},    # s1 (3), s2, p1
        "tiny": {"avg": 0.0, "total": 0},
    }
    status, text, _ = await ops.get("/admin")
    assert status == 200 and '<strong id="mrr">$157</strong>' in text
    assert "50.0 %" in text and "<svg" in text
    status, text, _ = await ops.get("/admin/audit")
    assert status == 200

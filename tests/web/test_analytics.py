"""Operator analytics checked against known accounts, plans, cancellations
and sessions; the pure figures, simulator and charts on their own."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import time
from dataclasses import dataclass

from tests.conftest import SLOW
from tests.web.conftest import WEB_CATALOG, add_session
from voxgate.jobs import JOBS, JobRunsDB
from voxgate.models import Account, figures, load_catalog
from voxgate.models.enterprise import enterprise_plan, plan_for, plan_of
from voxgate.store.base import period_of
from voxgate.web import charts
from voxgate.web.auth import create_operator
from voxgate.web.render import fmt_time
from voxgate.web.state import WEB

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
    subscribed: bool = False


def test_one_plan_of_knows_enterprise_plans(tmp_path):
    """``plan_of`` turns a plan id into a Plan the same way for the store's
    lookup (``plan_for``: stored terms, the default plan as fallback) and
    the analytics (an account id → enterprise Plan map)."""
    cat = catalog(tmp_path)
    acme = enterprise_plan("acct_acme", {"name": "Acme", "price_cents": 50000})
    assert plan_of(cat, "starter") is cat.get("starter")
    assert plan_of(cat, "enterprise", acme) is acme
    assert plan_of(cat, "enterprise") is None and plan_of(cat, "gone") is None
    assert plan_of(cat, None) is None
    assert plan_for(cat, "acct_acme", "enterprise", {"name": "Acme", "price_cents": 50000}) == acme
    assert plan_for(cat, "acct_acme", "enterprise", None) is cat.default
    assert plan_for(cat, "acct_acme", "enterprise", {"price_cents": -1}) is cat.default
    assert plan_for(cat, "acct_x", "gone", None) is cat.default
    ent = {"acct_acme": acme}
    assert figures.price_of("enterprise", cat, "acct_acme", ent) == 50000
    assert figures.price_of("enterprise", cat, "acct_other", ent) == 0
    assert figures.standing("enterprise", "active", True, cat, "acct_acme", ent) == "paying"


def test_analytics_pure(tmp_path):
    """Paying = a Stripe subscription on a paid plan; comped (a paid plan
    without one) apart; the operator's account in no customer figure."""
    cat = catalog(tmp_path)
    start, _ = figures.period_bounds("2026-05")
    now = start + 10 * DAY
    before = start - 20 * DAY
    sub = {"s1", "g2", "p1", "pg", "op"}  # subscribed now
    accounts = [
        Account("s1", "s1@x", "starter", before),                       # paying throughout
        Account("s2", "s2@x", "starter", before, status="canceled"),    # churned
        Account("g1", "g1@x", "free", before),                          # downgraded: churned
        Account("g2", "g2@x", "growth", start + DAY),                   # new this period
        Account("p1", "p1@x", "starter", before, status="past_due"),    # still paying
        Account("f1", "f1@x", "free", before),
        Account("pg", "pg@x", "payg", before),                          # paid, 0 MRR
        Account("c1", "c1@x", "starter", before),                       # comped throughout
        Account("x1", "x1@x", "starter", before),                       # paying → comped: churned
        Account("op", "op@x", "growth", before),                        # the operator's own
    ]
    for a in accounts:
        a.stripe_subscription_id = f"sub_{a.id}" if a.id in sub else None
    first_plan = {"g1": "growth"}
    subscribed_before = {"s1", "s2", "g1", "p1", "pg", "x1", "op"}
    changes = [Change(a.created_at, a.id, first_plan.get(a.id, a.plan_id), "active",
                      a.id in subscribed_before or a.id == "g2") for a in accounts]
    changes += [Change(start + 2 * DAY, "s2", "starter", "canceled", False),
                Change(start + 3 * DAY, "g1", "free", "active", False),
                Change(start + 4 * DAY, "p1", "starter", "past_due", True),
                Change(start + 5 * DAY, "x1", "starter", "active", False)]
    figs = figures.analytics(accounts, cat, changes, {"s1", "f1", "op", "nobody"},
                             {"s1": 3, "f1": 2, "g1": 1, "op": 7}, "2026-05", now,
                             operator_account_ids={"op"})
    assert figs.mrr == 2900 + 9900 + 2900  # s1, g2, p1 (pg pays 0; c1, x1 comped; op apart)
    assert (figs.paid_users, figs.comped_users, figs.free_users) == (4, 2, 3)
    assert figs.operator_accounts == 1
    assert figs.conversion_rate == round(400 / 9, 2)
    # paying at start: s1 s2 g1 p1 pg x1 (not c1, comped; not op); churned: s2 g1 x1
    assert (figs.paid_at_period_start, figs.churned, figs.churn_rate) == (6, 3, 50.0)
    assert figs.active_users == 2  # s1, f1: op is not a customer
    assert figs.sessions_by_plan == {
        "free": {"avg": 1.5, "total": 3}, "growth": {"avg": 0.0, "total": 0},
        "payg": {"avg": 0.0, "total": 0}, "starter": {"avg": 0.6, "total": 3}}
    assert figs.to_json()["comped_users"] == 2
    hist = figures.history(changes, cat, "2026-05", now, months=2, operator_account_ids={"op"})
    assert [h["period"] for h in hist] == ["2026-04", "2026-05"]
    assert hist[0]["mrr"] == 2900 * 4 + 9900 and hist[0]["paid_users"] == 6
    assert (hist[0]["comped_users"], hist[0]["accounts"]) == (1, 8)
    assert hist[1]["mrr"] == figs.mrr and hist[1]["churn_rate"] == 50.0
    assert (hist[1]["paid_users"], hist[1]["comped_users"], hist[1]["accounts"]) == (4, 2, 9)


def test_standing():
    cat = load_catalog(None)
    paid = next(p.id for p in cat.plans.values() if p.price_cents > 0)
    assert figures.standing(paid, "active", True, cat) == "paying"
    assert figures.standing(paid, "past_due", True, cat) == "paying"
    assert figures.standing(paid, "active", False, cat) == "comped"
    assert figures.standing(paid, "canceled", True, cat) == "free"
    assert figures.standing(cat.default_plan, "active", True, cat) == "free"
    assert figures.standing("no-such-plan", "active", True, cat) == "free"


def test_enterprise_accounts_count_with_their_own_terms(tmp_path):
    """An account on an enterprise plan pays its own monthly price: in MRR
    when subscribed, comped without a subscription, free without terms."""
    cat = catalog(tmp_path)
    start, _ = figures.period_bounds("2026-05")
    now = start + 10 * DAY
    accounts = [Account("e1", "e1@x", "enterprise", start - DAY, stripe_subscription_id="sub_e1"),
                Account("e2", "e2@x", "enterprise", start - DAY),
                Account("e3", "e3@x", "enterprise", start - DAY, stripe_subscription_id="sub_e3"),
                Account("s1", "s1@x", "starter", start - DAY, stripe_subscription_id="sub_s1")]
    ent = {"e1": enterprise_plan("e1", {"price_cents": 50000, "sessions_included": 10000}),
           "e2": enterprise_plan("e2", {"price_cents": 70000, "sessions_included": 10000})}
    changes = [Change(a.created_at, a.id, a.plan_id, "active", a.stripe_subscription_id is not None)
               for a in accounts]
    figs = figures.analytics(accounts, cat, changes, set(), {}, "2026-05", now, enterprise=ent)
    assert figs.mrr == 50000 + 2900  # e1 and s1; e2 comped; e3 has no terms
    assert (figs.paid_users, figs.comped_users, figs.free_users) == (2, 1, 1)
    assert figures.analytics(accounts, cat, changes, set(), {}, "2026-05", now).mrr == 2900
    hist = figures.history(changes, cat, "2026-05", now, months=1, enterprise=ent)
    assert (hist[0]["mrr"], hist[0]["paid_users"], hist[0]["comped_users"]) == (52900, 2, 1)


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
    accounts: paying ones with a Stripe subscription, a comped one (a paid
    plan an operator set, no subscription) and an operator on a paid
    plan with a subscription of their own (besides the demo and fixture
    accounts on tiny)."""
    server = await make_server()
    store = server.store
    state = server.app[WEB]
    user, _ = await create_operator(store, state.db, state.catalog, "ops@example.com",
                                    "operator password")
    await store.update_account(user.account_id, plan_id="growth",
                               stripe_subscription_id="sub_ops")
    now = time.time()
    start, _ = figures.period_bounds(period_of(now))
    made = {}
    plans = [("s1", "starter"), ("s2", "starter"), ("g1", "growth"), ("g2", "growth"),
             ("p1", "starter"), ("f1", "free"), ("old", "growth"), ("c1", "starter")]
    for name, plan in plans:
        made[name] = await store.create_account(f"{name}@example.com", plan)
        if name not in ("f1", "c1"):  # c1: comped by an operator, no subscription
            await store.update_account(made[name].id, stripe_subscription_id=f"sub_{name}")
    async with store.transaction() as db:  # all but g2 existed before this period
        for name, account in made.items():
            if name != "g2":
                await db.execute("UPDATE plan_changes SET at = ? WHERE account_id = ?",
                                 (start - 20 * DAY, account.id))
                await db.execute("UPDATE accounts SET created_at = ? WHERE id = ?",
                                 (start - 20 * DAY, account.id))
    # "old" canceled last period; the others change now (recorded by the trigger)
    await store.update_account(made["old"].id, status="canceled", stripe_subscription_id=None)
    async with store.transaction() as db:
        await db.execute("UPDATE plan_changes SET at = ? WHERE account_id = ? AND at > ?",
                         (start - 5 * DAY, made["old"].id, start))
    await store.update_account(made["s2"].id, status="canceled", stripe_subscription_id=None)
    await store.update_account(made["g1"].id, plan_id="free", stripe_subscription_id=None)
    await store.update_account(made["p1"].id, status="past_due", past_due_since=now)
    proj = {n: await store.create_project(a.id, "p") for n, a in made.items()}
    for billable in (True, True, False):
        await add_session(store, made["s1"].id, proj["s1"].id, billable=billable,
                          started_at=max(start, now - 120))
    for _ in range(2):
        await add_session(store, made["f1"].id, proj["f1"].id, started_at=max(start, now - 120))
    await add_session(store, made["g2"].id, proj["g2"].id, started_at=now - 40 * DAY)
    ops_project = await store.create_project(user.account_id, "ops")
    await add_session(store, user.account_id, ops_project.id, started_at=max(start, now - 120))

    ops = clients(server)
    assert await ops.signin("ops@example.com", "operator password") == 303
    await ops.enroll_2fa()
    async with ops.http.get(server.url + "/admin/analytics") as resp:
        assert resp.status == 200
        figs = await resp.json()
    # customers: demo and fixture (tiny) + 8 made here; the operator's account apart
    assert figs["period"] == period_of(now)
    assert figs["operator_accounts"] == 1
    assert figs["mrr"] == 2900 + 9900 + 2900  # s1, g2, p1 (past_due still pays); not c1, ops
    assert (figs["paid_users"], figs["comped_users"], figs["free_users"]) == (3, 1, 6)
    assert figs["conversion_rate"] == 30.0
    assert (figs["paid_at_period_start"], figs["churned"]) == (4, 2)  # s1 s2 g1 p1; s2 g1
    assert figs["churn_rate"] == 50.0
    assert figs["active_users"] == 2  # s1, f1 (g2's session is 40 days old; ops apart)
    assert figs["sessions_by_plan"] == {
        "free": {"avg": 1.0, "total": 2},       # g1 (0), f1 (2)
        "growth": {"avg": 0.0, "total": 0},     # g2, old
        "starter": {"avg": 0.75, "total": 3},   # s1 (3), s2, p1, c1
        "tiny": {"avg": 0.0, "total": 0},       # demo, fixture
    }
    status, text, _ = await ops.get("/admin")
    assert status == 200 and '<strong id="mrr">$157</strong>' in text
    assert '<strong id="paid">3</strong>' in text and '<strong id="comped">1</strong>' in text
    assert "50.0 %" in text and "<svg" in text
    # the scheduled jobs the server ran at start-up, with their last and next run
    runs = await _all_ran(store)
    status, text, _ = await ops.get("/admin")
    for job in JOBS:
        row = re.search(rf'<tr id="job-{job.name}">(.*?)</tr>', text)
        assert row, job.name
        cells = re.findall(r"<td>(.*?)</td>", row.group(1))
        assert cells[2] == fmt_time(runs[job.name].last_started_at)
        assert f"ok</strong>: {runs[job.name].last_detail}" in cells[3]
        assert cells[4] == fmt_time(runs[job.name].next_run_at)
    status, text, _ = await ops.get("/admin/audit")
    assert status == 200


async def _all_ran(store):
    """The ``job_runs`` rows once every job has run (the scheduler starts
    with the server and polls at once)."""
    deadline = time.monotonic() + 5 * SLOW
    while True:
        runs = await JobRunsDB(store).runs()
        if all(j.name in runs and runs[j.name].runs >= 1 for j in JOBS):
            return runs
        assert time.monotonic() < deadline, runs
        await asyncio.sleep(0.05)


def test_single_day_line_chart_has_a_visible_point():
    """A series of one value draws a dot where the value is (no polyline
    of one point, which a browser does not paint)."""
    svg = str(charts.lines("Billable minutes per day", ["1"],
                           [charts.Series("2026-12", [3.0], "l-cur")], unit="minutes"))
    assert "<polyline" not in svg
    dots = re.findall(r'<circle class="l-cur dot" cx="([\d.]+)" cy="([\d.]+)" r="(\d+)">'
                      r"<title>([^<]*)</title>", svg)
    assert len(dots) == 1
    cx, cy, r, title = dots[0]
    plot_h = charts.HEIGHT - charts.PAD_TOP - charts.PAD_BOTTOM
    assert int(r) == charts.DOT_R > 0
    assert charts.PAD_LEFT < float(cx) < charts.WIDTH - charts.PAD_RIGHT
    # 3 on an axis topped at 5: three fifths up the plot
    assert float(cy) == round(charts.PAD_TOP + plot_h * (1 - 3 / 5), 1)
    assert title == "1 2026-12: 3 minutes"
    two = str(charts.lines("t", ["1", "2"], [charts.Series("s", [1, 2], "l-cur")]))
    assert two.count("<polyline") == 1 and two.count("<circle") == 2


def test_minutes_used_is_one_rounding():
    assert figures.minutes_used(3.27889) == 3.3
    assert figures.minutes_used(0.04) == 0.0
    assert figures.minutes_used(-0.0) == 0.0


async def test_minutes_agree_across_card_usage_api_csv_and_chart(make_server, clients):
    """One account with known sessions today: the dashboard card, GET
    /billing/usage, /usage.csv and the minutes-per-day chart show the same
    minutes used (billable durations only)."""
    server = await make_server()
    user = clients(server)
    await user.signup("minutes@example.com", "correct horse battery")
    account = await server.store.get_account_by_email("minutes@example.com")
    project = await server.store.create_project(account.id, "p")
    now = time.time()
    start, _ = figures.period_bounds(period_of(now))
    day_start = now - now % DAY
    at = max(start, day_start) + 1  # today, this period
    for duration_ms, billable in ((90_000, True), (45_500, True), (61_234, True),
                                  (30_000, False)):
        await add_session(server.store, account.id, project.id, billable=billable,
                          started_at=at, duration_ms=duration_ms)
    expected = round((90_000 + 45_500 + 61_234) / 60_000, 1)  # 3.3
    assert expected == 3.3

    status, text, _ = await user.get("/dashboard")
    assert status == 200
    card = re.search(r'<span id="minutes-used">([^<]*)</span> minutes used', text)
    assert card and float(card.group(1)) == expected
    day = str(int(time.strftime("%d", time.gmtime(at))))
    point = re.search(rf"<title>{day} {period_of(now)}: ([\d.]+) minutes</title>", text)
    assert point and float(point.group(1)) == expected

    async with user.http.get(server.url + "/billing/usage") as resp:
        assert resp.status == 200
        usage = await resp.json()
    assert usage["minutesUsed"] == expected and usage["sessionsUsed"] == 3

    status, text, _ = await user.get("/usage.csv")
    assert status == 200
    rows = list(csv.DictReader(io.StringIO(text)))
    this = next(r for r in rows if r["period"] == period_of(now))
    assert float(this["minutes_used"]) == expected

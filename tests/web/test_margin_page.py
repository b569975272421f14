"""The operator's margin view over HTTP and the command line (issue 21,
item 3): ``GET /admin/margin`` as JSON and as a page with its charts, for
operators only; ``voxgate admin margin --json`` prints the same figures;
``voxgate admin set-spend-limit`` sets an account's cap."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from decimal import Decimal

from tests.conftest import ROOT
from tests.web.conftest import add_session
from voxgate.store.base import period_of
from voxgate.web.auth import create_operator
from voxgate.web.margin_views import margin_charts
from voxgate.web.state import WEB


async def seeded(server):
    """A Starter subscriber with 2 billable sessions ($0.40 of provider
    cost) and a free session ($0.10), and a free-plan account whose one
    billable session cost $1.25."""
    store = server.store
    starter = await store.create_account("margin-s@example.com", "starter")
    await store.update_account(starter.id, stripe_subscription_id="sub_margin")
    free = await store.create_account("margin-f@example.com", "free")
    ps, pf = await store.create_project(starter.id, "p"), await store.create_project(free.id, "p")
    now = time.time()
    ids = [await add_session(store, starter.id, ps.id, started_at=now - 30),
           await add_session(store, starter.id, ps.id, started_at=now - 30),
           await add_session(store, starter.id, ps.id, billable=False, started_at=now - 30),
           await add_session(store, free.id, pf.id, started_at=now - 30)]
    for sid, micros in zip(ids, (150_000, 250_000, 100_000, 1_250_000), strict=True):
        await store.db.execute("UPDATE sessions SET provider_cost_micros = ? WHERE id = ?",
                               (micros, sid))
    return starter, free


async def test_margin_json_page_and_access(make_server, clients):
    server = await make_server()
    state = server.app[WEB]
    await create_operator(server.store, state.db, state.catalog, "ops@example.com",
                          "operator password")
    starter, free = await seeded(server)
    period = period_of(time.time())
    ops = clients(server)
    assert await ops.signin("ops@example.com", "operator password") == 303
    await ops.enroll_2fa()
    async with ops.http.get(server.url + "/admin/margin", params={"format": "json"}) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert body["period"] == period
    accounts = {a["id"]: a for a in body["accounts"]}
    s, f = accounts[starter.id], accounts[free.id]
    assert (s["billable_sessions"], s["non_billable_sessions"], s["revenue_cents"]) == (2, 1, 2900)
    assert (s["provider_cost_billable_usd"], s["provider_cost_non_billable_usd"]) == \
        ("0.400000", "0.100000")
    assert s["margin_usd"] == str(Decimal("29.00") - Decimal("0.500000"))
    assert s["cost_per_billable_session_usd"] == "0.250000"
    assert f["margin_usd"] == "-1.250000" and body["accounts"][0]["id"] == free.id
    # a browser gets the page, with the charts
    html = {"Accept": "text/html,application/xhtml+xml"}
    status, text, _ = await ops.get("/admin/margin", headers=html)
    assert status == 200 and "<svg" in text and 'id="margin"' in text
    assert f'id="margin-{free.id}"' in text and "-$1.250000" in text
    status, _, _ = await ops.get("/admin/margin?period=2026-13", headers=html)
    assert status == 400
    # a customer is not an operator
    member = clients(server)
    await member.signup("member@example.com", "member password 123")
    status, _, _ = await member.get("/admin/margin", headers=html)
    assert status == 403


def test_margin_chart_goes_below_zero():
    """A plan losing money is drawn below the 0 line, not off the chart."""
    from voxgate.models.margin import AccountMonth, margin
    from voxgate.models.plans import Plan, PlanCatalog

    catalog = PlanCatalog({"free": Plan("free", "Free", sessions_included=100)})
    month = margin("2026-11", [AccountMonth("a", "a@x", billable=1, cost_billable_micros=3_000_000)],
                   {"a": ("free", "active", False)}, catalog, histogram=[0, 1])
    _, chart = margin_charts([month], month)
    assert ">-5<" in chart and ">0<" in chart and "<circle" in chart  # -5 is the nice value under -3


def voxgate(*args: str, settings) -> subprocess.CompletedProcess:
    """``voxgate ARGS`` on the server's data directory and catalog."""
    return subprocess.run([sys.executable, "-m", "voxgate", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "VOXGATE_DATA_DIR": str(settings.data_dir),
                               "VOXGATE_CATALOG": str(settings.catalog)})


async def test_admin_margin_and_spend_limit_commands(make_server):
    server = await make_server()
    starter, free = await seeded(server)
    settings = server.gateway.settings
    out = voxgate("admin", "margin", "--json", settings=settings)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    accounts = {a["id"]: a for a in body["accounts"]}
    assert accounts[starter.id]["revenue_cents"] == 2900
    assert accounts[free.id]["margin_usd"] == "-1.250000"
    table = voxgate("admin", "margin", settings=settings)
    assert table.returncode == 0 and "margin-f@example.com" in table.stdout
    assert "-$1.250000" in table.stdout and "$-" not in table.stdout
    assert voxgate("admin", "margin", "--period", "May", settings=settings).returncode == 2
    out = voxgate("admin", "set-spend-limit", free.id, "12.50", settings=settings)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["spend_limit_usd"] == "12.50"
    assert (await server.store.get_account(free.id)).spend_limit_usd == Decimal("12.50")
    assert voxgate("admin", "set-spend-limit", free.id, "-1", settings=settings).returncode == 2
    out = voxgate("admin", "set-spend-limit", free.id, "none", settings=settings)
    assert out.returncode == 0 and (await server.store.get_account(free.id)).spend_limit_usd is None

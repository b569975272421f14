"""The sessions table: filters, cursor pagination, receipts and the CSV
exports of sessions and monthly usage."""

from __future__ import annotations

import csv
import io
import re
import time

from tests.web.conftest import add_session
from voxgate.billing.addons import Addons
from voxgate.billing.db import BillingDB
from voxgate.models.plans import ENTERPRISE_PLAN_ID
from voxgate.store.base import period_of
from voxgate.web.views import PAGE_SIZE

DAY = 86400.0


async def test_filters_pagination_and_exports(make_server, clients):
    server = await make_server()
    c = clients(server)
    await c.signup("table@example.com")
    account = await server.store.get_account_by_email("table@example.com")
    one = await server.store.create_project(account.id, "One")
    two = await server.store.create_project(account.id, "Two")
    now = time.time()
    old = now - 3 * DAY
    billable = [await add_session(server.store, account.id, one.id, started_at=now - 100 - i)
                for i in range(PAGE_SIZE + 5)]
    short = await add_session(server.store, account.id, two.id, billable=False,
                              started_at=now - 50)
    timeout = await add_session(server.store, account.id, two.id, billable=False,
                                reason="connect_timeout", started_at=old)

    status, text, _ = await c.get("/sessions")
    assert status == 200 and f"{PAGE_SIZE + 7} sessions." in text
    shown = re.findall(r'data-session="([^"]+)"', text)
    assert len(shown) == PAGE_SIZE and shown[0] == short
    older = re.search(r'href="(/sessions\?after=[^"]+)" rel="next"', text).group(1)
    status, text, _ = await c.get(older.replace("&amp;", "&"))
    rest = re.findall(r'data-session="([^"]+)"', text)
    assert set(shown) | set(rest) == set(billable) | {short, timeout} and len(rest) == 7
    assert 'rel="next"' not in text

    async def ids(query: str) -> list[str]:
        status, text, _ = await c.get("/sessions?" + query)
        assert status == 200, text
        return re.findall(r'data-session="([^"]+)"', text)

    assert await ids(f"project={two.id}") == [short, timeout]
    assert await ids("verdict=not_billable") == [short, timeout]
    assert await ids("verdict=connect_timeout") == [timeout]
    day = time.strftime("%Y-%m-%d", time.gmtime(old))
    assert await ids(f"from={day}&to={day}") == [timeout]
    assert (await c.get("/sessions?verdict=bogus"))[0] == 400
    assert (await c.get("/sessions?from=yesterday"))[0] == 400

    status, text, _ = await c.get(f"/sessions/{timeout}")
    assert status == 200 and "rule for connect_timeout" in text and "connect timeout" in text

    status, text, resp = await c.get(f"/sessions.csv?project={two.id}")
    assert resp.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in resp.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["id"], r["billable"], r["reason"], r["project"]) for r in rows] == [
        (short, "false", "too_short", "Two"), (timeout, "false", "connect_timeout", "Two")]
    status, text, _ = await c.get("/sessions.csv")
    assert len(list(csv.DictReader(io.StringIO(text)))) == PAGE_SIZE + 7

    status, text, _ = await c.get("/usage.csv")
    usage = {r["period"]: r for r in csv.DictReader(io.StringIO(text))}
    this = usage[period_of(now)]
    expected_here = PAGE_SIZE + 6 + (1 if period_of(old) == period_of(now) else 0)
    assert int(this["sessions"]) == expected_here
    assert int(this["billable_sessions"]) == PAGE_SIZE + 5
    assert int(this["estimated_minutes"]) == 2 * (PAGE_SIZE + 5)


async def test_usage_csv_names_an_enterprise_accounts_own_plan(make_server, clients):
    """An account on its enterprise plan (``enterprise``, an id no catalog
    holds) sees that plan in usage.csv, not the catalog's default plan."""
    server = await make_server()
    c = clients(server)
    await c.signup("acme@example.com")
    account = await server.store.get_account_by_email("acme@example.com")
    project = await server.store.create_project(account.id, "One")
    await add_session(server.store, account.id, project.id)

    async def plans_shown() -> list[str]:
        status, text, _ = await c.get("/usage.csv")
        assert status == 200, text
        return [r["plan"] for r in csv.DictReader(io.StringIO(text))]

    catalog = server.gateway.catalog
    assert await plans_shown() == [catalog.default_plan]
    await Addons(server.store, BillingDB(server.store), catalog).set_enterprise(
        account.id, {"name": "Acme", "price_cents": 50000, "sessions_included": 10000},
        "ops@example.com")
    assert await plans_shown() == [ENTERPRISE_PLAN_ID]

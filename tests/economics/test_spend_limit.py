"""Spend limits (issue 21, item 4, ``spend_limit_usd``): a plan's monthly
cap on an account's provider cost, overridden per account by an operator.
Each session over WebSocket costs gpt-realtime's price of ``USAGE_1``
($0.046202, ``test_session_cost``) at the loopback fake provider; the alerts at
80/95/100 % are queued once each (email and webhook event), and at 100 %
new sessions are refused with ``insufficient_quota`` while the limit's
figures are named; a session on the customer's own key is neither counted
nor refused."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import aiohttp
import orjson
import pytest_asyncio

from tests.conftest import SLOW, start_server
from tests.economics.test_pricing import USAGE_1
from tests.economics.test_session_cost import FakeProvider
from voxgate.billing.db import BillingDB
from voxgate.proxy.spend import spend_thresholds_reached
from voxgate.proxy.ws_relay import SESSION_ID_HEADER

SESSION_USD = Decimal("0.046202")  # USAGE_1 at gpt-realtime's prices
CATALOG = """
default_plan = "metered"

[plans.metered]
name = "Metered"
sessions_included = 100
concurrency = 5
requests_per_minute = 1000
spend_limit_usd = "0.10"
"""


@pytest_asyncio.fixture
async def metered(tmp_path):
    provider = FakeProvider([USAGE_1] * 10)
    await provider.start()
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    server = await start_server({
        "data_dir": str(tmp_path / "data"), "catalog": str(catalog),
        "upstream": {"provider": "local", "url": provider.url, "connect_timeout_s": 5.0}},
        "metered")
    yield server
    await server.runner.cleanup()
    await provider.close()


async def one_response(http: aiohttp.ClientSession, server) -> tuple[int, str | None, dict]:
    """A session that gets one response (one USAGE_1), then closes:
    (HTTP status of the upgrade, session id, the refusal body if refused)."""
    try:
        ws = await http.ws_connect(f"{server.ws_url}?model=gpt-realtime",
                                   headers={"Authorization": f"Bearer {server.key}"})
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status, None, {}
    sid = ws._response.headers[SESSION_ID_HEADER]
    async with asyncio.timeout(10 * SLOW):
        while (await ws.receive_json())["type"] != "session.created":
            pass
        await ws.send_str(orjson.dumps({"type": "response.create"}).decode())
        while (await ws.receive_json())["type"] != "response.done":
            pass
    await ws.close()
    await server.session(sid)
    return 101, sid, {}


def test_thresholds_reached():
    assert spend_thresholds_reached(79_999, Decimal("0.10")) == []
    assert spend_thresholds_reached(80_000, Decimal("0.10")) == [80]
    assert spend_thresholds_reached(100_000, Decimal("0.10")) == [80, 95, 100]
    assert spend_thresholds_reached(0, Decimal("0")) == [80, 95, 100]


async def test_spend_limit_alerts_then_refuses(metered, http):
    server = metered
    account = await server.store.get_account(server.account_id)
    assert server.gateway.catalog.get("metered").spend_limit_usd == Decimal("0.10")
    # 1 × $0.046202 = 46 %: no alert; 2 × = 92 %: the 80 % warning
    for _ in range(2):
        status, _, _ = await one_response(http, server)
        assert status == 101
    bdb = BillingDB(server.store)

    async def alert_kinds() -> list[str]:
        return sorted(e.kind for e in await bdb.list_emails(account.id) if e.kind.startswith("spend"))

    async def until(kinds: list[str]) -> None:
        async with asyncio.timeout(5 * SLOW):
            while await alert_kinds() != kinds:
                await asyncio.sleep(0.05)

    await until(["spend_warning"])
    # 3 × = $0.138606 ≥ $0.10: the 95 % warning and the limit reached, once each
    assert (await one_response(http, server))[0] == 101
    await until(["spend_limit_reached", "spend_warning", "spend_warning"])
    # now refused, with the limit and the spend named; nothing is admitted
    async with http.get(f"{server.ws_url}?model=gpt-realtime",
                        headers={"Authorization": f"Bearer {server.key}", "Upgrade": "websocket",
                                 "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                                 "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as resp:
        assert resp.status == 429
        err = (await resp.json())["error"]
    assert err["code"] == "insufficient_quota"
    assert "$0.10" in err["message"] and f"${3 * SESSION_USD:.2f}" in err["message"], err
    # the operator raises this account's own limit: admitted again, no alert repeated
    await server.store.update_account(account.id, spend_limit_usd=Decimal("5"))
    status, sid, _ = await one_response(http, server)
    assert status == 101
    period = (await server.session(sid)).period
    assert await server.store.provider_spend_micros(account.id, period) == \
        4 * int(SESSION_USD * 1_000_000)
    await asyncio.sleep(0.2)
    assert await alert_kinds() == ["spend_limit_reached", "spend_warning", "spend_warning"]

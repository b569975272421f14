"""Plans that cap cost over a real WebSocket session (issue 21, item 4):
a plan's ``max_session_s`` ends the session with OpenAI's
``session_expired`` error, then a normal close, recorded as closed by
``server`` with reason ``max_session_s`` and its verdict kept; a plan's
``models`` refuses another model at the URL, in a client secret and in
``session.update`` (``model_not_allowed``, nothing relayed). The provider
is the loopback fake of ``test_session_cost``."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest_asyncio

from tests.conftest import SLOW, start_server
from tests.economics.test_pricing import USAGE_1
from tests.economics.test_session_cost import FakeProvider

CATALOG = """
default_plan = "capped"

[plans.capped]
name = "Capped"
sessions_included = 100
concurrency = 5
requests_per_minute = 1000
max_session_s = 2
models = ["gpt-realtime-mini"]
"""


@pytest_asyncio.fixture
async def capped(tmp_path):
    provider = FakeProvider([USAGE_1])
    await provider.start()
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    server = await start_server({
        "data_dir": str(tmp_path / "data"), "catalog": str(catalog),
        "upstream": {"provider": "local", "url": provider.url, "connect_timeout_s": 5.0}}, "capped")
    yield server, provider
    await server.runner.cleanup()
    await provider.close()


async def test_max_session_s_ends_with_session_expired(capped):
    server, _ = capped
    headers = {"Authorization": f"Bearer {server.key}"}
    events = []
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{server.ws_url}?model=gpt-realtime-mini", headers=headers,
                                   protocols=("realtime",)) as ws:
            await ws.send_json({"type": "response.create"})
            async with asyncio.timeout(10 * SLOW):
                async for msg in ws:
                    events.append(msg.json())
            close_code = ws.close_code
    types = [e["type"] for e in events if e["type"] != "rate_limits.updated"]  # voxgate's own
    assert types == ["session.created", "response.done", "error"]
    assert events[-1]["error"] == {
        "type": "invalid_request_error", "code": "session_expired",
        "message": "Your session hit the maximum duration of 2 seconds.", "param": None,
        "event_id": None}
    assert close_code == 1000
    (record,) = await server.store.list_sessions(server.account_id, limit=5)
    record = await server.session(record.id)
    m = record.measurements
    assert (m.closed_by, m.close_reason) == ("server", "max_session_s")
    assert 2000 <= m.duration_ms < 2000 + 1000 * SLOW
    # the verdict is the session's own: one completed text response → billable
    assert (record.billable, record.reason) == (True, "billable")


async def test_models_refused_at_the_url(capped):
    server, _ = capped
    headers = {"Authorization": f"Bearer {server.key}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/v1/realtime?model=gpt-realtime", headers={
                **headers, "Connection": "Upgrade", "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as resp:
            body = await resp.json()
    assert resp.status == 400
    assert body["error"]["code"] == "model_not_allowed"
    assert body["error"]["message"] == ("model 'gpt-realtime' is not allowed for your plan; "
                                        "allowed: gpt-realtime-mini")
    assert await server.store.list_sessions(server.account_id, limit=5) == []


async def test_models_refused_in_a_client_secret(capped):
    server, _ = capped
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/v1/realtime/client_secrets",
                             headers={"Authorization": f"Bearer {server.key}"},
                             json={"session": {"type": "realtime", "model": "gpt-realtime"}}) as resp:
            body = await resp.json()
        assert resp.status == 400, body
        assert body["error"]["code"] == "model_not_allowed"
        async with http.post(f"{server.url}/v1/realtime/client_secrets",
                             headers={"Authorization": f"Bearer {server.key}"},
                             json={"session": {"type": "realtime"}}) as resp:
            body = await resp.json()
        # no model asked for: the plan's own, not the deployment's default
        assert resp.status == 200, body
        assert body["session"]["model"] == "gpt-realtime-mini"


async def test_models_refused_in_session_update(capped):
    server, provider = capped
    seen: list[dict] = []
    headers = {"Authorization": f"Bearer {server.key}"}

    async def next_event(ws) -> dict:
        while (event := await ws.receive_json())["type"] == "rate_limits.updated":  # voxgate's own
            pass
        return event

    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{server.ws_url}?model=gpt-realtime-mini", headers=headers,
                                   protocols=("realtime",)) as ws:
            async with asyncio.timeout(10 * SLOW):
                seen.append(await next_event(ws))  # session.created
                await ws.send_json({"type": "session.update", "event_id": "evt_9",
                                    "session": {"type": "realtime", "model": "gpt-realtime"}})
                seen.append(await next_event(ws))
                # the same update without a model goes through
                await ws.send_json({"type": "session.update", "event_id": "evt_10",
                                    "session": {"type": "realtime", "instructions": "Be brief."}})
                await ws.send_json({"type": "response.create"})
                seen.append(await next_event(ws))
    assert seen[1] == {"type": "error", "error": {
        "type": "invalid_request_error", "code": "model_not_allowed",
        "message": "model 'gpt-realtime' is not allowed for your plan; allowed: gpt-realtime-mini",
        "param": "session.model", "event_id": "evt_9"}}
    assert seen[2]["type"] == "response.done"
    assert [e.get("event_id") for e in provider.received if e["type"] == "session.update"] == ["evt_10"]
    (record,) = await server.store.list_sessions(server.account_id, limit=5)
    record = await server.session(record.id)
    assert record.measurements.client_errors == 1

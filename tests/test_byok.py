"""Customers' own provider keys (BYOK, issue 21 item 5) end to end: a
project stores its OpenAI key through ``PATCH /v1/projects/{id}``; it is kept
encrypted, shown only as its last 4 characters, never returned or logged;
the project's sessions reach the provider with it (a fake provider on
loopback records the ``Authorization`` it gets) and a 401 to it ends the
session as ``provider_error`` with a message naming the customer's key."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from cryptography.fernet import Fernet

from tests.conftest import SLOW, free_port
from voxgate.proxy.upstream import CUSTOMER_KEY_REFUSED
from voxgate.proxy.ws_relay import SESSION_ID_HEADER

CUSTOMER_KEY = "sk-proj-Customer0wnKey-" + "x" * 24 + "9Zq7"
REFUSED_KEY = "sk-proj-RevokedKey-" + "y" * 24 + "0000"
OPERATOR_KEY = "sk-operator-secret-" + "z" * 24


class FakeProvider:
    """A realtime WebSocket endpoint that records each handshake's
    ``Authorization`` and refuses ``REFUSED_KEY`` with 401, as OpenAI does."""

    def __init__(self) -> None:
        self.authorizations: list[str] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        self.authorizations.append(auth)
        if auth == f"Bearer {REFUSED_KEY}":
            return web.json_response({"error": {"type": "invalid_request_error",
                                                "code": "invalid_api_key",
                                                "message": "Incorrect API key provided"}},
                                     status=401)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(orjson.dumps({"type": "session.created", "event_id": "event_1", "session": {
            "type": "realtime", "object": "realtime.session", "id": "sess_fake",
            "model": request.query.get("model", "gpt-realtime")}}).decode())
        async for _ in ws:
            pass
        return ws

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/realtime", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"ws://127.0.0.1:{port}/v1/realtime"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def provider():
    fake = FakeProvider()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def byok_server(make_server, provider):
    return await make_server(upstream_url=provider.url, upstream={
        "provider": "openai", "url": provider.url, "openai_api_key": OPERATOR_KEY,
        "provider_key_secret": Fernet.generate_key().decode(), "connect_timeout_s": 5.0})


async def set_key(http: aiohttp.ClientSession, server, key: str | None) -> tuple[int, dict]:
    async with http.patch(f"{server.url}/v1/projects/{server.project_id}",
                          json={"openai_api_key": key},
                          headers={"Authorization": f"Bearer {server.admin_key}"}) as resp:
        return resp.status, await resp.json()


async def one_session(http: aiohttp.ClientSession, server) -> tuple[str, list[dict]]:
    """Open a session with the project key, wait for its first event, close."""
    async with http.ws_connect(f"{server.ws_url}?model=gpt-realtime",
                               headers={"Authorization": f"Bearer {server.key}"}) as ws:
        sid = ws._response.headers[SESSION_ID_HEADER]
        events = []
        async with asyncio.timeout(10 * SLOW):
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                events.append(orjson.loads(msg.data))
                if events[-1]["type"] in ("session.created", "error"):
                    break
    return sid, events


async def test_sessions_use_the_projects_own_key_which_is_never_shown_again(
        byok_server, provider, http, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    status, body = await set_key(http, byok_server, CUSTOMER_KEY)
    assert status == 200, body
    assert body["openai_api_key_last4"] == "9Zq7"
    sid, events = await one_session(http, byok_server)
    assert events[0]["type"] == "session.created", events
    assert provider.authorizations == [f"Bearer {CUSTOMER_KEY}"]
    record = await byok_server.session(sid)
    assert record.measurements.connect_ms is not None
    # read back: the project shows only the last 4 characters
    async with http.get(f"{byok_server.url}/v1/projects/{byok_server.project_id}",
                        headers={"Authorization": f"Bearer {byok_server.admin_key}"}) as resp:
        project = await resp.text()
    assert "9Zq7" in project and CUSTOMER_KEY not in project
    async with http.get(f"{byok_server.url}/v1/sessions/{sid}",
                        headers={"Authorization": f"Bearer {byok_server.key}"}) as resp:
        assert CUSTOMER_KEY not in await resp.text()
    # never logged, and encrypted at rest
    assert CUSTOMER_KEY not in caplog.text and CUSTOMER_KEY[:-4] not in caplog.text
    db = Path(byok_server.gateway.settings.sqlite_path)
    raw = db.read_bytes() + (Path(str(db) + "-wal").read_bytes() if Path(str(db) + "-wal").exists() else b"")
    assert CUSTOMER_KEY.encode() not in raw
    with sqlite3.connect(db) as conn:
        sealed, last4 = conn.execute("SELECT provider_key_sealed, provider_key_last4 FROM projects "
                                     "WHERE id = ?", (byok_server.project_id,)).fetchone()
    assert sealed and sealed.startswith("gAAAA") and last4 == "9Zq7"
    # removed: the operator's key again
    status, body = await set_key(http, byok_server, None)
    assert status == 200 and body["openai_api_key_last4"] is None
    await one_session(http, byok_server)
    assert provider.authorizations[-1] == f"Bearer {OPERATOR_KEY}"


async def test_a_refused_customer_key_is_a_provider_error_that_names_it(byok_server, provider, http):
    assert (await set_key(http, byok_server, REFUSED_KEY))[0] == 200
    sid, events = await one_session(http, byok_server)
    assert events and events[-1]["type"] == "error", events
    assert "own API key" in events[-1]["error"]["message"]
    record = await byok_server.session(sid)
    assert (record.billable, record.reason) == (False, "provider_error")
    assert CUSTOMER_KEY_REFUSED in (record.measurements.provider_error or ""), record.measurements
    assert REFUSED_KEY not in (record.rule + (record.measurements.provider_error or ""))


async def test_byok_disabled_without_a_secret_and_bad_keys_refused(make_server, provider, http):
    plain = await make_server(upstream={"provider": "openai", "url": provider.url,
                                        "openai_api_key": OPERATOR_KEY})
    status, body = await set_key(http, plain, CUSTOMER_KEY)
    assert status == 403 and body["error"]["code"] == "byok_disabled", body
    assert "provider_key_secret" in body["error"]["message"]
    on = await make_server(upstream={"provider": "openai", "url": provider.url,
                                     "openai_api_key": OPERATOR_KEY,
                                     "provider_key_secret": Fernet.generate_key().decode()})
    for bad in ("short", 12345, "sk has spaces in it 1234567890"):
        status, body = await set_key(http, on, bad)  # type: ignore[arg-type]
        assert status == 400 and body["error"]["param"] == "openai_api_key", (bad, body)

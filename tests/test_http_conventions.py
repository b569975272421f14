"""OpenAI API HTTP conventions against the real app on loopback:
``x-request-id``, ``x-should-retry``, ``Retry-After``, ``x-ratelimit-*``,
oversized headers, key redaction in logs, JSON logs and the metrics
operators expect. The official ``openai`` SDK is the client where it
decides (retries, ``e.request_id``)."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import re

import aiohttp
import openai
import pytest

from tests.conftest import SLOW
from voxgate import logs
from voxgate.proxy.metrics import METRICS

CATALOG = """
minutes_per_session = 2.0
default_plan = "capped"

[plans.capped]
name = "Capped"
sessions_included = 0
concurrency = 1
requests_per_minute = 1000
projects = 1

[plans.quick]
name = "Quick"
sessions_included = 100
concurrency = 1
requests_per_minute = 120
projects = 1

[plans.tiny]
name = "Tiny"
sessions_included = 100
concurrency = 1
requests_per_minute = 1000
projects = 2
"""

REQUEST_ID = re.compile(r"^req_[0-9a-f]{32}$")


@pytest.fixture
def catalog(tmp_path) -> str:
    path = tmp_path / "conventions.toml"
    path.write_text(CATALOG)
    return str(path)


def posts(server, route: str, status: int) -> float:
    """POSTs to ``route`` answered with ``status``, as the server counted them."""
    value = server.app[METRICS].registry.get_sample_value(
        "voxgate_http_requests_total", {"method": "POST", "route": route, "status": str(status)})
    return value or 0.0


def sdk(server, max_retries: int = 2) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=server.key, base_url=server.url + "/v1", max_retries=max_retries)


async def test_permanent_refusal_is_sent_once_and_has_a_request_id(make_server, catalog):
    server = await make_server(plan="capped", catalog=catalog)
    client = sdk(server)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.realtime.client_secrets.create(session={"type": "realtime", "model": "gpt-realtime"})
    err = caught.value
    assert err.code == "insufficient_quota"
    assert err.request_id is not None and REQUEST_ID.match(err.request_id)
    assert err.response.headers["x-should-retry"] == "false"
    assert int(err.response.headers["Retry-After"]) >= 1  # seconds until next month
    assert posts(server, "/v1/realtime/client_secrets", 429) == 1
    await client.close()


async def test_invalid_key_and_validation_errors_are_not_retried(make_server, catalog):
    server = await make_server(plan="tiny", catalog=catalog)
    bad = openai.AsyncOpenAI(api_key="vg_live_" + "x" * 40, base_url=server.url + "/v1", max_retries=3)
    with pytest.raises(openai.AuthenticationError) as caught:
        await bad.realtime.client_secrets.create()
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert caught.value.request_id
    client = sdk(server, max_retries=3)
    with pytest.raises(openai.BadRequestError) as bad_request:
        await client.realtime.client_secrets.create(expires_after={"anchor": "created_at", "seconds": 1})
    assert bad_request.value.response.headers["x-should-retry"] == "false"
    assert posts(server, "/v1/realtime/client_secrets", 401) == 1
    assert posts(server, "/v1/realtime/client_secrets", 400) == 1
    await bad.close()
    await client.close()


async def test_rate_limit_is_retried_after_retry_after(make_server, catalog, http):
    server = await make_server(plan="quick", catalog=catalog)
    headers = {"Authorization": f"Bearer {server.key}"}
    url = server.url + "/v1/realtime/client_secrets"
    for _ in range(200):  # 120 per minute: drain the bucket
        async with http.post(url, headers=headers) as resp:
            if resp.status == 429:
                assert resp.headers["x-should-retry"] == "true"
                assert 1 <= int(resp.headers["Retry-After"]) <= 2
                assert resp.headers["x-ratelimit-remaining-requests"] == "0"
                assert resp.headers["x-ratelimit-limit-requests"] == "120"
                break
    else:
        pytest.fail("the rate limit was never reached")
    limited = posts(server, "/v1/realtime/client_secrets", 429)
    client = sdk(server, max_retries=3)
    secret = await client.realtime.client_secrets.create()  # refused, then retried after ~0.5 s
    assert secret.value.startswith("ek_")
    assert posts(server, "/v1/realtime/client_secrets", 429) >= limited + 1
    await client.close()


async def test_server_errors_are_retried(make_server, catalog):
    # admission in a Redis nobody listens on: every counted request is a 503
    server = await make_server(plan="tiny", catalog=catalog, admission_url="redis://127.0.0.1:1/0")
    client = sdk(server, max_retries=1)
    with pytest.raises(openai.InternalServerError) as caught:
        await client.realtime.client_secrets.create()
    assert caught.value.status_code == 503
    assert caught.value.code == "service_unavailable"
    assert caught.value.response.headers["x-should-retry"] == "true"
    assert caught.value.response.headers["Retry-After"] == "1"
    assert caught.value.request_id
    assert posts(server, "/v1/realtime/client_secrets", 503) == 2
    await client.close()


async def test_rate_limit_headers_on_authenticated_routes(make_server, catalog, http):
    server = await make_server(plan="tiny", catalog=catalog)
    headers = {"Authorization": f"Bearer {server.key}"}
    async with http.get(server.url + "/v1/sessions", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["x-ratelimit-limit-requests"] == "1000"
        assert resp.headers["x-ratelimit-remaining-requests"] == "999"
        assert re.fullmatch(r"\d+ms", resp.headers["x-ratelimit-reset-requests"])  # one token: 60 ms
    async with http.post(server.url + "/v1/realtime/client_secrets", headers=headers) as resp:
        assert resp.status == 200
        assert int(resp.headers["x-ratelimit-remaining-requests"]) in (998, 999)
    async with http.get(server.url + "/healthz") as resp:  # not authenticated: no budget to show
        assert "x-ratelimit-limit-requests" not in resp.headers
        assert REQUEST_ID.match(resp.headers["x-request-id"])


async def test_every_response_has_a_distinct_request_id(make_server, catalog, http):
    server = await make_server(plan="tiny", catalog=catalog)
    seen = set()
    for path in ("/healthz", "/metrics", "/v1/sessions", "/no/such/route", "/openapi.json"):
        async with http.get(server.url + path) as resp:
            rid = resp.headers.get("x-request-id")
            assert rid and REQUEST_ID.match(rid), (path, resp.status)
            seen.add(rid)
            if resp.status == 404:
                assert resp.headers["x-should-retry"] == "false"
    assert len(seen) == 5


async def test_concurrency_refusal_has_retry_after(make_server, catalog, http):
    server = await make_server(plan="tiny", catalog=catalog)  # concurrency 1
    headers = {"Authorization": f"Bearer {server.key}"}
    first = await http.ws_connect(server.ws_url + "?model=gpt-realtime", headers=headers)
    try:
        assert json.loads((await first.receive(timeout=10 * SLOW)).data)["type"] == "session.created"
        async with http.get(server.ws_url, headers={**headers, "Upgrade": "websocket",
                                                    "Connection": "Upgrade",
                                                    "Sec-WebSocket-Version": "13",
                                                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as resp:
            assert resp.status == 429
            body = await resp.json()
            assert body["error"]["code"] == "concurrency_limit_exceeded"
            assert resp.headers["Retry-After"] == "1"
            assert resp.headers["x-should-retry"] == "true"
            assert REQUEST_ID.match(resp.headers["x-request-id"])
    finally:
        await first.close()


async def test_oversize_headers_are_431_with_one_log_line(make_server, catalog, http, caplog):
    server = await make_server(plan="tiny", catalog=catalog)
    caplog.set_level(logging.INFO)
    for _ in range(3):
        async with http.get(server.url + "/healthz", headers={"X-Big": "a" * 9000}) as resp:
            assert resp.status == 431
            body = await resp.json()
            assert body["error"]["code"] == "request_header_fields_too_large"
            assert resp.headers["x-should-retry"] == "false"
    refusals = [r for r in caplog.records if "exceeds 8192 bytes" in r.getMessage()]
    assert len(refusals) == 3 and all(r.exc_info is None for r in refusals)
    caplog.clear()
    # past aiohttp's own parser limit: its 400, logged as one line without a traceback
    async with aiohttp.ClientSession() as fresh:
        async with fresh.get(server.url + "/healthz", headers={"X-Huge": "a" * 70_000}) as resp:
            assert resp.status == 400
    errors = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(errors) == 1 and errors[0].exc_info is None and errors[0].levelno == logging.WARNING
    assert "Traceback" not in caplog.text


async def test_access_log_line_carries_the_request_id(make_server, catalog, caplog):
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    server = await make_server(plan="tiny", catalog=catalog)
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/healthz") as resp:
            rid = resp.headers["x-request-id"]
    await asyncio.sleep(0.05)
    lines = [r for r in caplog.records if r.name == "aiohttp.access" and "/healthz" in r.getMessage()]
    assert lines and f"request_id={rid}" in lines[-1].getMessage()
    assert getattr(lines[-1], "request_id", None) == rid


async def test_ephemeral_key_in_subprotocol_never_reaches_the_log(make_server, catalog, http, caplog):
    caplog.set_level(logging.DEBUG)
    server = await make_server(plan="tiny", catalog=catalog)
    async with http.post(server.url + "/v1/realtime/client_secrets",
                         headers={"Authorization": f"Bearer {server.key}"}) as resp:
        ek = (await resp.json())["value"]
    # only the key subprotocol, not "realtime": aiohttp warns about the mismatch, naming the protocols
    ws = await http.ws_connect(server.ws_url, protocols=(f"openai-insecure-api-key.{ek}",))
    await ws.close()
    await asyncio.sleep(0.3)
    assert any("protocols" in r.getMessage() and "ek_****" in r.getMessage() for r in caplog.records), \
        "the aiohttp warning this test is about was not logged"
    # and a project key in a query string of the access log
    async with http.get(server.url + f"/v1/sessions?key={server.key}") as resp:
        await resp.read()
    await asyncio.sleep(0.05)
    for record in caplog.records:
        text = record.getMessage()
        assert ek not in text and ek[3:] not in text, text
        assert server.key not in text and server.key[8:] not in text, text
    assert ek not in caplog.text and server.key not in caplog.text


def test_redact_covers_every_key_kind():
    line = "ek_" + "A" * 40 + " vg_live_" + "b-c_" * 10 + " vg_admin_" + "Z" * 40 + " ek_short"
    assert logs.redact(line) == "ek_**** vg_live_**** vg_admin_**** ek_short"


async def test_json_logs_carry_request_and_session_context(make_server, catalog, http):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        server = await make_server(plan="tiny", catalog=catalog, log_format="json")
        ws = await http.ws_connect(server.ws_url + "?model=gpt-realtime",
                                   headers={"Authorization": f"Bearer {server.key}"})
        rid = ws._response.headers["x-request-id"]
        session_id = ws._response.headers["X-Voxgate-Session-Id"]
        await ws.receive(timeout=10 * SLOW)
        await ws.close()
        await server.session(session_id)
        await asyncio.sleep(0.1)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        logs.configure("text")
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["time"]) for line in lines)
    ours = [line for line in lines if line.get("session_id") == session_id]
    assert ours, lines
    assert all(line["request_id"] == rid and line["account_id"] == server.account_id
               and line["project_id"] == server.project_id for line in ours)


def test_text_log_line_names_each_context_field_once():
    def line() -> str:
        logs.bind(request_id="req_1", session_id="sess_1")
        record = logging.getLogRecordFactory()("t", logging.INFO, __file__, 1,
                                               "GET / 200 request_id=%s", ("req_1",), None)
        return logs.TextFormatter("%(message)s").format(record)

    logs.install()
    assert contextvars.copy_context().run(line) == "GET / 200 request_id=req_1 session_id=sess_1"


async def test_metrics_operators_expect(make_server, catalog, http):
    server = await make_server(plan="tiny", catalog=catalog, upstream_url="ws://127.0.0.1:1/v1/realtime")
    ws = await http.ws_connect(server.ws_url + "?model=gpt-realtime",
                               headers={"Authorization": f"Bearer {server.key}"})
    session_id = ws._response.headers["X-Voxgate-Session-Id"]
    async for _ in ws:  # the provider is unreachable: an error event, then the close
        pass
    record = await server.session(session_id)
    assert record.reason == "not_connected"
    async with http.get(server.url + "/healthz") as resp:
        assert resp.status == 200
    async with http.get(server.url + "/metrics") as resp:
        text = await resp.text()
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                 "voxgate_outbox_depth 0.0", "voxgate_outbox_oldest_age_seconds 0.0",
                 "# TYPE voxgate_ice_outcomes_total counter",
                 'voxgate_upstream_connect_failures_total{transport="websocket"} 1.0',
                 'voxgate_http_requests_total{method="GET",route="/healthz",status="200"} 1.0',
                 'voxgate_http_requests_total{method="GET",route="/v1/realtime",status="101"} 1.0',
                 "voxgate_http_request_duration_seconds_bucket"):
        assert name in text, name


async def test_ice_outcome_of_a_webrtc_call_is_counted(make_server, catalog, http):
    from aiortc import RTCSessionDescription

    from tests.webrtc.client import Client

    server = await make_server(plan="tiny", catalog=catalog,
                               webrtc={"host_addresses": ["127.0.0.1"], "ice_timeout_s": 5.0 * SLOW})
    async with http.post(server.url + "/v1/realtime/client_secrets",
                         headers={"Authorization": f"Bearer {server.key}"}) as resp:
        ek = {"Authorization": f"Bearer {(await resp.json())['value']}"}
    client = Client(server.url, b"")
    try:
        async with http.post(server.url + "/v1/realtime/calls", data=await client.offer(),
                             headers={**ek, "Content-Type": "application/sdp"}) as resp:
            assert resp.status == 201
            assert REQUEST_ID.match(resp.headers["x-request-id"])
            assert resp.headers["x-ratelimit-limit-requests"] == "1000"
            answer, location = await resp.text(), resp.headers["Location"]
            session_id = resp.headers["X-Voxgate-Session-Id"]
        await client.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await client.wait_event("session.created", 10)
        async with http.delete(server.url + location, headers=ek) as resp:
            assert resp.status == 200
        await server.session(session_id)
    finally:
        await client.close()
    value = server.app[METRICS].registry.get_sample_value(
        "voxgate_ice_outcomes_total", {"outcome": "connected", "pair_type": "host"})
    assert value == 1.0

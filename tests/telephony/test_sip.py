"""OpenAI SIP calls through voxgate (issue 22, item 2): OpenAI's signed
``realtime.call.incoming`` webhook to ``POST /v1/telephony/openai/webhook``
over loopback, voxgate's call control against a fake of OpenAI's
(``fake_openai_sip``), the call metered from its sideband WebSocket; real
SQLite stores (and PostgreSQL for the delivery deduplication)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest
import pytest_asyncio

from tests.conftest import SLOW, drop_store, merge_settings, open_store, same_database, start_server
from tests.telephony.fake_openai_sip import (
    OPERATOR_KEY,
    SECRET,
    incoming_call,
    signed_headers,
    start_fake,
)
from voxgate.config import SipRouteSettings, load_settings
from voxgate.errors import (
    ConcurrencyLimited,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    ServiceUnavailable,
)
from voxgate.proxy.telephony import sip
from voxgate.proxy.telephony.sip import SIP_CALLS, WEBHOOK_PATH, calls_url
from voxgate.proxy.telephony.sip_protocol import (
    ReportedAudio,
    WebhookSignatureError,
    called_number,
    parse_incoming,
    reject_status,
    route_call,
    sign,
    valid_target_uri,
    verify_signature,
)
from voxgate.store.queries.telephony import SipCallsDB

SIP_PLUGIN = "voxgate.proxy.telephony.sip"
NUMBER = "+18005551212"
SESSION = {"instructions": "You are the front desk of the Hotel Voxgate.",
           "audio": {"output": {"voice": "marin"}}}


# ---------------------------------------------------------------- pure parts


def test_signature_matches_openai_sdk():
    """Our signature verifies with the openai package's own checker, and
    theirs (any of several space-separated values) with ours."""
    from openai.lib._webhooks import webhook_signature_matches

    body = incoming_call("rtc_abc")
    now = int(time.time())
    headers = {"webhook-id": "wh_1", "webhook-timestamp": str(now),
               "webhook-signature": "v1,bm90IGl0 " + sign(SECRET, "wh_1", now, body)}
    assert webhook_signature_matches(body, headers, secret=SECRET, tolerance=300)
    assert verify_signature(SECRET, headers, body, now, 300) == "wh_1"
    assert signed_headers(body, webhook_id="wh_1", timestamp=now)["webhook-signature"] \
        == sign(SECRET, "wh_1", now, body)


@pytest.mark.parametrize("change, message", [
    ({"webhook-signature": "v1,AAAA"}, "does not match"),
    ({"webhook-signature": "v2," + "A" * 44}, "does not match"),
    ({"webhook-id": "wh_other"}, "does not match"),
    ({"webhook-timestamp": "soon"}, "is not Unix seconds"),
    ({"webhook-id": ""}, "missing"),
])
def test_signature_refused(change, message):
    body = incoming_call("rtc_abc")
    now = int(time.time())
    headers = {**signed_headers(body, webhook_id="wh_1", timestamp=now), **change}
    with pytest.raises(WebhookSignatureError, match=message):
        verify_signature(SECRET, headers, body, now, 300)
    with pytest.raises(WebhookSignatureError, match="does not match"):
        verify_signature(SECRET, signed_headers(body, timestamp=now), body + b" ", now, 300)


def test_signature_tolerance_five_minutes():
    body = incoming_call("rtc_abc")
    now = 1_800_000_000
    for offset in (-300, 300):
        verify_signature(SECRET, signed_headers(body, timestamp=now + offset), body, now, 300)
    with pytest.raises(WebhookSignatureError, match="too old"):
        verify_signature(SECRET, signed_headers(body, timestamp=now - 301), body, now, 300)
    with pytest.raises(WebhookSignatureError, match="too new"):
        verify_signature(SECRET, signed_headers(body, timestamp=now + 301), body, now, 300)


def test_parse_incoming_and_routes():
    call = parse_incoming(incoming_call("rtc_1", to='"Desk" <sip:+1 (800) 555-1212@t.example>;tag=9',
                                        extra=[{"name": "X-Tenant", "value": "acme"}]))
    assert not isinstance(call, str)
    assert call.call_id == "rtc_1" and call.event_id == "evt_rtc_1"
    assert called_number(call.sip_headers) == NUMBER
    assert called_number([("t", "tel:+1-800-555-1212;phone-context=x")]) == NUMBER
    assert called_number([("From", "sip:+1@x")]) is None
    assert parse_incoming(b'{"type": "batch.completed", "data": {}}') == "batch.completed"
    by_number = SipRouteSettings(project_id="p_num", number="+1 800 555 1212")
    by_header = SipRouteSettings(project_id="p_hdr", header="x-tenant", value="acme")
    assert route_call([by_header, by_number], call.sip_headers).project_id == "p_hdr"
    assert route_call([by_number, by_header], call.sip_headers).project_id == "p_num"
    assert route_call([by_number], [("To", "sip:+18005550000@x")]) is None
    with pytest.raises(ValueError, match="either number or header"):
        SipRouteSettings(project_id="p")
    settings = load_settings(None, sip={"openai_webhook_secret": SECRET, "routes": [
        {"project_id": "p", "number": NUMBER, "session": SESSION}]})
    assert settings.sip.routes[0].session == SESSION and settings.sip.tolerance_s == 300


def test_reject_status_and_target_uri():
    assert reject_status(ConcurrencyLimited("full")) == 486
    assert reject_status(RateLimited("slow down")) == 486
    assert reject_status(QuotaExceeded("used up")) == 603
    assert reject_status(PermissionDenied("this account is closed")) == 603
    assert reject_status(ServiceUnavailable("draining")) == 503
    assert valid_target_uri("tel:+14155550100") and valid_target_uri("sip:desk@example.com")
    assert not valid_target_uri("https://example.com") and not valid_target_uri("tel:")
    assert calls_url("wss://api.openai.com/v1/realtime", "rtc_1", "accept") \
        == "https://api.openai.com/v1/realtime/calls/rtc_1/accept"


def test_reported_audio():
    audio = ReportedAudio()
    assert audio.speech_started(500, now_ms=10_000.0) == (0.0, 0.0)
    assert audio.speech_stopped(3_700) == (3_200.0, 0.0)
    assert audio.speech_stopped(4_000) == (0.0, 0.0)  # no speech going on
    assert audio.response_done(60) == (0.0, 3_000.0)
    audio.speech_started(9_000, now_ms=20_000.0)
    assert audio.end(21_500.0) == (1_500.0, 0.0)
    assert audio.end(22_000.0) == (0.0, 0.0)


# ---------------------------------------------------------------- deduplication in the store


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_delivery_claimed_once_across_processes(kind, tmp_path):
    """Two stores on one database (two processes): a webhook-id is taken
    once; a released one can be taken again; old ones are pruned."""
    first = await open_store(kind, tmp_path)
    second = same_database(first)
    await second.open()
    try:
        a, b = SipCallsDB(first), SipCallsDB(second)
        now = time.time()
        results = await asyncio.gather(a.claim_delivery("wh_1", "rtc_1", now, 660),
                                       b.claim_delivery("wh_1", "rtc_1", now, 660))
        assert sorted(results) == [False, True]
        assert not await a.claim_delivery("wh_1", "rtc_1", now, 660)
        await b.delivery_done("wh_1", "rejected:486")
        assert (await a.delivery("wh_1"))["outcome"] == "rejected:486"
        await a.release_delivery("wh_1")
        assert await b.claim_delivery("wh_1", "rtc_1", now, 660)
        # a minute on, deliveries older than the keep window are gone
        assert await SipCallsDB(first).claim_delivery("wh_2", "rtc_2", now + 700, 660)
        assert await a.delivery("wh_1") is None
    finally:
        await second.close()
        await drop_store(first)


SIP_QUERIES = [
    ("a call's session by its call id",
     "SELECT id FROM sessions WHERE call_sid = ? AND transport = ?"
     " ORDER BY started_at DESC LIMIT 1", ("rtc_1", "sip"), {"sessions_call_sid"}),
    ("a delivery by its webhook-id",
     "SELECT outcome FROM sip_webhook_deliveries WHERE webhook_id = ?", ("wh_1",),
     {"sip_webhook_deliveries_pkey"}),
    ("deliveries past the keep window",
     "DELETE FROM sip_webhook_deliveries WHERE received_at < ?", (1.0,),
     {"sip_webhook_deliveries_received"}),
]


async def test_sip_queries_use_their_indexes(tmp_path):
    """Each SIP query is served by its index on both databases (as
    ``tests/store/test_schema.py`` checks the other hot queries)."""
    from tests.store.test_schema import pg_plan_indexes, sqlite_plan_indexes

    sqlite = await open_store("sqlite", tmp_path)
    pg = await open_store("postgresql", tmp_path)
    try:
        for what, sql, params, indexes in SIP_QUERIES:
            assert await sqlite_plan_indexes(sqlite, sql, params) & indexes, what
            used, seq = pg_plan_indexes(pg.dialect.schema, sql, params)
            assert used & indexes and not seq, (what, used, seq)
    finally:
        await sqlite.close()
        await drop_store(pg)


# ---------------------------------------------------------------- end to end


@pytest_asyncio.fixture
async def fake():
    fake, runner = await start_fake()
    yield fake
    await runner.cleanup()


@pytest_asyncio.fixture
async def make_sip_server(tmp_path, catalog_path, fake, monkeypatch):
    """Factory: ``await make_sip_server(plan="tiny", webrtc=True)``: voxgate
    with the SIP routes, its upstream the fake OpenAI (operator key
    ``OPERATOR_KEY``), a route from ``NUMBER`` to the test project with
    ``SESSION``. ``webrtc=False``: without the WebRTC calls (the SIP module
    then serves ``…/hangup`` itself)."""
    from voxgate import server as server_module

    monkeypatch.setitem(server_module.PLUGINS, SIP_PLUGIN, sip.setup)
    servers = []

    async def factory(plan: str = "tiny", webrtc: bool = True, **overrides):
        plugins = tuple(name for name in dict.fromkeys((*server_module.PLUGINS, SIP_PLUGIN))
                        if webrtc or name != "voxgate.proxy.webrtc")
        base = {
            "data_dir": str(tmp_path / f"data{len(servers)}"),
            "catalog": str(catalog_path),
            "upstream": {"provider": "openai", "url": fake.url, "openai_api_key": OPERATOR_KEY,
                         "connect_timeout_s": 5.0},
            "sip": {"openai_webhook_secret": SECRET},
        }
        srv = await start_server(merge_settings(base, overrides), plan, plugins=plugins)
        servers.append(srv)
        srv.app[SIP_CALLS].settings.routes = [SipRouteSettings(
            project_id=srv.project_id, number=NUMBER, model="gpt-realtime", session=SESSION)]
        return srv

    yield factory
    for srv in servers:
        await srv.runner.cleanup()


async def deliver(http: aiohttp.ClientSession, server, body: bytes, **sign_kw):
    async with http.post(server.url + WEBHOOK_PATH, data=body,
                         headers=signed_headers(body, **sign_kw)) as resp:
        return resp.status, await resp.json()


METERED_CALL = [
    {"type": "session.created", "session": {"type": "realtime", "model": "gpt-realtime"}},
    {"type": "input_audio_buffer.speech_started", "audio_start_ms": 400, "item_id": "item_1"},
    {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 3_400, "item_id": "item_1"},
    {"type": "input_audio_buffer.committed", "item_id": "item_1"},
    {"type": "response.done", "response": {
        "id": "resp_1", "status": "completed", "output": [],
        "usage": {"total_tokens": 230, "input_tokens": 110, "output_tokens": 120,
                  "input_token_details": {"text_tokens": 80, "audio_tokens": 30,
                                          "cached_tokens": 0},
                  "output_token_details": {"text_tokens": 20, "audio_tokens": 100}}}},
]


async def test_call_accepted_with_project_config_and_metered(make_sip_server, fake, http):
    """A signed realtime.call.incoming: voxgate accepts the call with the
    route's session config and the operator's key, meters its sideband
    (3.0 s of caller speech, 100 output audio tokens = 5.0 s of agent
    audio) and records a completed, billable session of transport "sip"
    with the call id, shown in GET /v1/sessions."""
    server = await make_sip_server()
    fake.scripts["rtc_call1"] = METERED_CALL
    fake.end_after_script.add("rtc_call1")
    status, answer = await deliver(http, server, incoming_call("rtc_call1"))
    assert status == 200 and answer["status"] == "accepted", answer
    [accept] = fake.of("accept", "rtc_call1")
    assert accept.authorization == f"Bearer {OPERATOR_KEY}"
    assert accept.body == {**SESSION, "type": "realtime", "model": "gpt-realtime"}
    record = await server.session(answer["session_id"])
    assert fake.sideband_auth["rtc_call1"] == f"Bearer {OPERATOR_KEY}"
    m = record.measurements
    assert (record.transport, record.call_sid, record.stream_sid) == ("sip", "rtc_call1", None)
    assert record.project_id == server.project_id and record.model == "gpt-realtime"
    assert (m.audio_in_ms, m.audio_out_ms) == (3_000.0, 5_000.0)
    assert (m.output_audio_tokens, m.input_audio_tokens, m.responses_completed) == (100, 30, 1)
    assert m.connected and m.connect_ms is not None and m.connect_ms < 2000 * SLOW
    assert (m.closed_by, m.close_code) == ("upstream", 1000)
    assert m.event_counts["input_audio_buffer.speech_started"] == 1
    assert (record.billable, record.reason) == (True, "billable")
    async with http.get(server.url + "/v1/sessions",
                        headers={"Authorization": f"Bearer {server.key}"}) as resp:
        listed = {s["id"]: s for s in (await resp.json())["data"]}
    shown = listed[record.id]
    assert (shown["transport"], shown["call_sid"], shown["billable"]) == ("sip", "rtc_call1", True)
    assert shown["audio_in_ms"] == 3000 and shown["audio_out_ms"] == 5000
    assert not server.gateway.active and not server.app[SIP_CALLS].calls


async def test_short_call_not_billable(make_sip_server, fake, http):
    """The call's verdict comes from what its sideband reports: a call the
    caller hangs up after 1 s of speech and no reply is not billable."""
    server = await make_sip_server()
    fake.scripts["rtc_short"] = METERED_CALL[:3]
    fake.scripts["rtc_short"][2] = {**METERED_CALL[2], "audio_end_ms": 1_400}
    fake.end_after_script.add("rtc_short")
    status, answer = await deliver(http, server, incoming_call("rtc_short"))
    assert answer["status"] == "accepted"
    record = await server.session(answer["session_id"])
    assert record.measurements.audio_in_ms == 1_000.0
    assert (record.billable, record.reason) == (False, "too_short")


async def test_forged_and_stale_signatures_refused(make_sip_server, fake, http):
    server = await make_sip_server()
    body = incoming_call("rtc_forged")
    forged = {**signed_headers(body), "webhook-signature": signed_headers(body + b" ")[
        "webhook-signature"]}
    async with http.post(server.url + WEBHOOK_PATH, data=body, headers=forged) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_webhook_signature"
    status, answer = await deliver(http, server, body, timestamp=int(time.time()) - 301)
    assert status == 400 and "too old" in answer["error"]["message"]
    status, answer = await deliver(http, server, body, secret="whsec_" + "QUJD" * 8)
    assert status == 400
    assert fake.controls == []
    assert await server.store.list_sessions(server.account_id) == []


async def test_replayed_webhook_id_accepts_once(make_sip_server, fake, http):
    server = await make_sip_server()
    body = incoming_call("rtc_replay")
    status, first = await deliver(http, server, body, webhook_id="wh_replay")
    assert status == 200 and first["status"] == "accepted"
    # OpenAI retries the same delivery (a new timestamp, a new signature)
    status, again = await deliver(http, server, body, webhook_id="wh_replay")
    assert status == 200 and again == {"status": "duplicate"}
    assert len(fake.of("accept", "rtc_replay")) == 1
    fake.end("rtc_replay")
    await server.session(first["session_id"])
    assert len(await server.store.list_sessions(server.account_id)) == 1


async def test_concurrency_full_project_rejected_486(make_sip_server, fake, http):
    """A concurrency-1 account with a live WebSocket session: its phone
    call is rejected 486 Busy Here, nothing recorded for it."""
    server = await make_sip_server(plan="free")
    ws = await http.ws_connect(server.ws_url + "?model=gpt-realtime",
                               headers={"Authorization": f"Bearer {server.key}"})
    try:
        assert (await ws.receive_json())["type"] == "session.created"
        status, answer = await deliver(http, server, incoming_call("rtc_busy"))
        assert status == 200
        assert answer == {"status": "rejected", "sip_status": 486,
                          "reason": "concurrency_limit_exceeded"}
        [reject] = fake.of("reject", "rtc_busy")
        assert reject.body == {"status_code": 486}
        assert reject.authorization == f"Bearer {OPERATOR_KEY}"
        assert fake.of("accept") == []
        sessions = await server.store.list_sessions(server.account_id)
        assert [s.transport for s in sessions] == ["websocket"]
    finally:
        await ws.close()


async def test_quota_used_up_rejected_603(make_sip_server, fake, http):
    """The tiny plan includes 2 sessions: after two billable calls the
    third is declined 603, the quota counted across the SIP calls."""
    server = await make_sip_server(plan="tiny")
    for n in (1, 2):
        fake.scripts[f"rtc_q{n}"] = METERED_CALL
        fake.end_after_script.add(f"rtc_q{n}")
        _, answer = await deliver(http, server, incoming_call(f"rtc_q{n}"))
        assert (await server.session(answer["session_id"])).billable
    status, answer = await deliver(http, server, incoming_call("rtc_q3"))
    assert answer == {"status": "rejected", "sip_status": 603, "reason": "insufficient_quota"}
    assert fake.of("reject", "rtc_q3")[0].body == {"status_code": 603}


async def test_closed_account_and_unrouted_calls_rejected(make_sip_server, fake, http):
    server = await make_sip_server()
    status, answer = await deliver(http, server, incoming_call(
        "rtc_nowhere", to="sip:+18005550000@sip.example.com"))
    assert (status, answer["sip_status"]) == (200, 404)
    await server.store.update_account(server.account_id, status="canceled")
    status, answer = await deliver(http, server, incoming_call("rtc_closed"))
    assert (status, answer["sip_status"]) == (200, 603)
    assert [(c.call_id, c.body) for c in fake.of("reject")] == [
        ("rtc_nowhere", {"status_code": 404}), ("rtc_closed", {"status_code": 603})]
    assert fake.of("accept") == []


async def test_failed_accept_not_billable_and_retried(make_sip_server, fake, http):
    """OpenAI answering the accept with a 5xx: HTTP 502 to the webhook (so
    OpenAI redelivers), the session finished not billable, the delivery
    forgotten (its retry accepts)."""
    server = await make_sip_server()
    fake.status["accept"] = 500
    body = incoming_call("rtc_retry")
    status, answer = await deliver(http, server, body, webhook_id="wh_retry")
    assert status == 502, answer
    [failed] = await server.store.list_sessions(server.account_id)
    assert failed.status == "completed" and failed.billable is False
    assert failed.reason == "not_connected"
    assert failed.measurements.provider_error.startswith("upstream_unavailable: accept")
    del fake.status["accept"]
    status, answer = await deliver(http, server, body, webhook_id="wh_retry")
    assert answer["status"] == "accepted"
    fake.end("rtc_retry")
    await server.session(answer["session_id"])


async def test_sideband_refused_call_hung_up_not_billable(make_sip_server, fake, http):
    """An accepted call whose sideband cannot be opened cannot be metered:
    voxgate hangs it up; its session is not billable (provider error)."""
    server = await make_sip_server()
    fake.refuse_sideband.add("rtc_blind")
    status, answer = await deliver(http, server, incoming_call("rtc_blind"))
    assert answer["status"] == "accepted"
    record = await server.session(answer["session_id"])
    assert len(fake.of("hangup", "rtc_blind")) == 1
    assert (record.billable, record.reason) == (False, "not_connected")
    assert "sideband (HTTP 404)" in record.measurements.provider_error


async def test_refer_and_hangup_relayed(make_sip_server, fake, http):
    """Transfer and hang-up through voxgate, relayed to OpenAI for the
    call's project only; the hang-up ends the call, recorded closed by the
    client."""
    server = await make_sip_server(webrtc=False)
    status, answer = await deliver(http, server, incoming_call("rtc_ctl"))
    assert answer["status"] == "accepted"
    async with asyncio.timeout(5 * SLOW):
        await fake.opened("rtc_ctl").wait()
    auth = {"Authorization": f"Bearer {server.key}"}
    _, _, other_key = await server.new_account("tiny")
    base = f"{server.url}/v1/realtime/calls/rtc_ctl"
    async with http.post(base + "/refer", json={"target_uri": "https://x"}, headers=auth) as r:
        assert r.status == 400 and (await r.json())["error"]["param"] == "target_uri"
    async with http.post(base + "/refer", json={"target_uri": "tel:+14155550100"},
                         headers={"Authorization": f"Bearer {other_key}"}) as r:
        assert r.status == 404
    async with http.post(base + "/refer", json={"target_uri": "tel:+14155550100"},
                         headers=auth) as r:
        assert r.status == 200, await r.text()
    [refer] = fake.of("refer", "rtc_ctl")
    assert refer.body == {"target_uri": "tel:+14155550100"}
    assert refer.authorization == f"Bearer {OPERATOR_KEY}"
    async with http.post(base + "/hangup", headers={"Authorization": f"Bearer {other_key}"}) as r:
        assert r.status == 404
    assert fake.of("hangup") == []
    async with http.post(base + "/hangup", headers=auth) as r:
        assert r.status == 200, await r.text()
    assert len(fake.of("hangup", "rtc_ctl")) == 1
    record = await server.session(answer["session_id"])
    assert (record.measurements.closed_by, record.measurements.close_reason) == ("client",
                                                                                 "hangup")
    async with http.post(base + "/hangup", headers=auth) as r:
        assert r.status == 404  # the call is over


async def test_hangup_hook_for_the_webrtc_route(make_sip_server, fake, http):
    """With WebRTC calls installed, their hangup handler hands SIP call ids
    to ``SipCalls.hangup`` (the dispatch the composition root wires): it
    answers False for ids that are not the project's SIP calls."""
    from voxgate.proxy.telephony.sip import project_principal

    server = await make_sip_server()
    status, answer = await deliver(http, server, incoming_call("rtc_hook"))
    assert answer["status"] == "accepted"
    calls = server.app[SIP_CALLS]
    principal = await project_principal(server.gateway, server.project_id)
    assert not await calls.hangup("rtc_not_sip", principal)
    assert await calls.hangup("rtc_hook", principal)
    assert len(fake.of("hangup", "rtc_hook")) == 1
    record = await server.session(answer["session_id"])
    assert record.measurements.closed_by == "client"


async def test_shutdown_hangs_up_live_calls(make_sip_server, fake, http):
    server = await make_sip_server()
    status, answer = await deliver(http, server, incoming_call("rtc_live"))
    assert answer["status"] == "accepted"
    async with asyncio.timeout(5 * SLOW):
        await fake.opened("rtc_live").wait()
    await server.gateway.stop()
    assert len(fake.of("hangup", "rtc_live")) == 1
    record = await server.store.get_session(answer["session_id"])
    assert record.status == "completed"
    assert (record.measurements.closed_by, record.measurements.close_code) == ("server", 1001)


async def test_other_events_acknowledged(make_sip_server, fake, http):
    server = await make_sip_server()
    body = orjson.dumps({"object": "event", "id": "evt_1", "type": "batch.completed",
                         "created_at": 1, "data": {"id": "batch_1"}})
    status, answer = await deliver(http, server, body)
    assert (status, answer) == (200, {"status": "ignored", "type": "batch.completed"})
    assert fake.controls == []

"""The main job end to end: the official openai SDK through voxgate's
WebSocket relay to the local voice provider, with real speech, producing
every verdict reason from a real session."""

from __future__ import annotations

import asyncio
import base64
import time

import aiohttp
from openai import AsyncOpenAI

from tests.conftest import SLOW, free_port
from voxgate.proxy.ws_relay import SESSION_ID_HEADER

CHUNK = 24000 * 2 // 50  # 20 ms of 24 kHz PCM16


def sdk(server, key: str | None = None) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key or server.key, base_url=server.url + "/v1", max_retries=0)


def session_id_of(conn) -> str:
    return conn._connection.response.headers[SESSION_ID_HEADER]


async def append_audio(conn, pcm: bytes, speed: float = 8.0) -> None:
    """Append ``pcm`` in 20 ms chunks at ``speed``× real time."""
    for i in range(0, len(pcm), CHUNK):
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i:i + CHUNK]).decode())
        if speed:
            await asyncio.sleep(0.02 / speed)


async def recv_until(conn, etype: str, timeout_s: float = 30.0) -> tuple[object, list]:
    seen = []
    async with asyncio.timeout(timeout_s * SLOW):
        async for event in conn:
            seen.append(event)
            if event.type == etype:
                return event, seen
    raise AssertionError(f"connection ended before {etype}: {[e.type for e in seen]}")


async def test_billable_session_with_real_speech(server, jfk_pcm):
    """jfk.flac through voxgate: the provider hears it, answers with audio,
    and voxgate records a billable session with ≈ 11 s of audio in."""
    async with sdk(server).realtime.connect(model="gpt-realtime") as conn:
        sid = session_id_of(conn)
        created, _ = await recv_until(conn, "session.created")
        await conn.session.update(session={
            "type": "realtime",
            "audio": {"input": {"turn_detection": None, "transcription": {"model": "whisper-1"}}},
        })
        await append_audio(conn, jfk_pcm)
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        done, seen = await recv_until(conn, "response.done", 60)
    heard = " ".join(e.transcript for e in seen
                     if e.type == "conversation.item.input_audio_transcription.completed")
    assert any(w in heard.lower() for w in ("country", "americans", "fellow")), heard
    audio_bytes = sum(len(base64.b64decode(e.delta)) for e in seen
                      if e.type == "response.output_audio.delta")
    assert audio_bytes > 24000 * 2 * 0.5  # more than half a second of reply
    assert done.response.usage.total_tokens > 0

    record = await server.session(sid)
    m = record.measurements
    assert record.billable is True and record.reason == "billable", record.rule
    assert 10_900 <= m.audio_in_ms <= 11_100
    assert abs(m.audio_out_ms - audio_bytes / 48) < 1
    assert m.connected and m.connect_ms is not None and m.connect_ms < 2000
    assert m.closed_by == "client" and m.close_code == 1000
    assert m.event_counts["input_audio_buffer.append"] == -(-len(jfk_pcm) // CHUNK)
    assert m.total_tokens == done.response.usage.total_tokens
    assert m.bytes_in > len(jfk_pcm) * 4 / 3


async def test_short_session_is_too_short(server, jfk_pcm):
    async with sdk(server).realtime.connect(model="gpt-realtime") as conn:
        sid = session_id_of(conn)
        await recv_until(conn, "session.created")
        await append_audio(conn, jfk_pcm[: 24000 * 2], speed=0)  # 1 s
    record = await server.session(sid)
    assert (record.billable, record.reason) == (False, "too_short")
    assert 990 <= record.measurements.audio_in_ms <= 1010


async def test_injected_provider_error(server, jfk_pcm):
    async with sdk(server).realtime.connect(
        model="gpt-realtime", extra_query={"voxgate_fault": "server_error:200"}
    ) as conn:
        sid = session_id_of(conn)
        await append_audio(conn, jfk_pcm[: 24000 * 2 * 6], speed=0)  # 6 s
        err, _ = await recv_until(conn, "error")
        assert err.error.type == "server_error"
    record = await server.session(sid)
    assert (record.billable, record.reason) == (False, "provider_error")
    assert record.measurements.provider_errors == 1
    assert record.measurements.audio_in_ms > 5000


async def test_slow_session_created_is_connect_timeout(server, jfk_pcm):
    async with sdk(server).realtime.connect(
        model="gpt-realtime", extra_query={"voxgate_fault": "delay_created:2300"}
    ) as conn:
        sid = session_id_of(conn)
        await recv_until(conn, "session.created", 10)
        await append_audio(conn, jfk_pcm[: 24000 * 2 * 6], speed=0)
    record = await server.session(sid)
    assert (record.billable, record.reason) == (False, "connect_timeout")
    assert 2300 <= record.measurements.connect_ms < 4000


async def test_upstream_unreachable_is_not_connected(make_server):
    dead = f"ws://127.0.0.1:{free_port()}/v1/realtime"
    server = await make_server(upstream_url=dead)
    async with sdk(server).realtime.connect(model="gpt-realtime") as conn:
        sid = session_id_of(conn)
        err, _ = await recv_until(conn, "error")
        assert err.error.code == "upstream_unavailable"
    record = await server.session(sid)
    assert (record.billable, record.reason) == (False, "not_connected")
    assert record.measurements.close_code == 1011


async def test_refused_model_gets_error_and_not_connected(server):
    async with sdk(server).realtime.connect(model="no-such-model") as conn:
        sid = session_id_of(conn)
        err, _ = await recv_until(conn, "error")
        assert err.error.type == "invalid_request_error"
        assert "no-such-model" in err.error.message
    record = await server.session(sid)
    assert record.reason == "not_connected"
    assert record.measurements.provider_errors == 0


async def billable_quick_session(server, pcm: bytes, key: str | None = None) -> str:
    """A billable session as fast as possible: 6 s of real speech sent at
    once, then a normal close."""
    async with sdk(server, key).realtime.connect(model="gpt-realtime") as conn:
        sid = session_id_of(conn)
        await recv_until(conn, "session.created")
        await conn.session.update(session={"type": "realtime",
                                           "audio": {"input": {"turn_detection": None}}})
        await append_audio(conn, pcm[: 24000 * 2 * 6], speed=0)
    return sid


async def refusal(server, key: str, **headers) -> tuple[int, dict]:
    """Status and JSON body of a refused upgrade (a raw upgrade request)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(server.ws_url + "?model=gpt-realtime", headers={
            "Authorization": f"Bearer {key}", "Connection": "Upgrade", "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            **headers,
        }) as resp:
            body = await resp.json() if resp.status != 101 else {}
            return resp.status, body


async def test_quota_refuses_session_after_limit(server, jfk_pcm, http):
    """tiny plan: 2 sessions included → the third is refused with 429."""
    for _ in range(2):
        sid = await billable_quick_session(server, jfk_pcm)
        assert (await server.session(sid)).billable
    status, body = await refusal(server, server.key)
    assert status == 429
    assert body["error"]["code"] == "insufficient_quota"
    # minting is refused too
    async with http.post(server.url + "/v1/realtime/client_secrets",
                         headers={"Authorization": f"Bearer {server.key}"}) as resp:
        assert resp.status == 429
        assert (await resp.json())["error"]["type"] == "insufficient_quota"
    # non-billable sessions did not use quota: usage says exactly 2
    async with http.get(server.url + "/billing/usage",
                        headers={"Authorization": f"Bearer {server.admin_key}"}) as resp:
        usage = await resp.json()
    assert usage["sessionsUsed"] == 2 and usage["sessionsRemaining"] == 0
    assert usage["percentUsed"] == 100.0


async def test_in_flight_sessions_reserve_quota(server):
    """Two sessions in flight on a 2-session plan: a third can't start even
    though none is billable yet (concurrency is 2 as well, so use a plan
    with more concurrency)."""
    account, project, key = await server.new_account("tiny")
    await server.store.update_account(account.id, plan_id="tiny")
    client = sdk(server, key)
    c1 = await client.realtime.connect(model="gpt-realtime").enter()
    c2 = await client.realtime.connect(model="gpt-realtime").enter()
    try:
        status, body = await refusal(server, key)
        assert status == 429
        assert body["error"]["code"] in ("insufficient_quota", "concurrency_limit_exceeded")
    finally:
        await c1.close()
        await c2.close()


async def test_concurrency_limit_and_slot_freed(server):
    client = sdk(server)
    c1 = await client.realtime.connect(model="gpt-realtime").enter()
    c2 = await client.realtime.connect(model="gpt-realtime").enter()
    try:
        await recv_until(c1, "session.created")
        status, body = await refusal(server, server.key)
        assert status == 429
        assert body["error"]["code"] == "concurrency_limit_exceeded"
        assert await server.gateway.admission.in_flight(server.account_id) == 2
    finally:
        await c1.close()
    # the slot is freed once the first session is finished
    sid1 = session_id_of(c1)
    await server.session(sid1)
    c3 = await client.realtime.connect(model="gpt-realtime").enter()
    await recv_until(c3, "session.created")
    await c3.close()
    await c2.close()


async def test_slot_freed_when_client_vanishes_without_close(server):
    async with aiohttp.ClientSession() as http:
        ws1 = await http.ws_connect(server.ws_url + "?model=gpt-realtime",
                                    headers={"Authorization": f"Bearer {server.key}"})
        ws2 = await http.ws_connect(server.ws_url + "?model=gpt-realtime",
                                    headers={"Authorization": f"Bearer {server.key}"})
        sid = ws1._response.headers[SESSION_ID_HEADER]
        assert (await ws1.receive_json())["type"] == "session.created"
        assert await server.gateway.admission.in_flight(server.account_id) == 2
        # vanish: drop the TCP connection, no close frame
        ws1._response.connection.transport.abort()
        record = await server.session(sid)
        assert record.measurements.closed_by == "client"
        assert record.measurements.close_code not in (1000, 1001)
        assert await server.gateway.admission.in_flight(server.account_id) == 1
        ws3 = await http.ws_connect(server.ws_url + "?model=gpt-realtime",
                                    headers={"Authorization": f"Bearer {server.key}"})
        assert (await ws3.receive_json())["type"] == "session.created"
        await ws3.close()
        await ws2.close()


async def test_rate_limit_per_key(server, http):
    account, project, key = await server.new_account("ratelimited")
    headers = {"Authorization": f"Bearer {key}"}
    statuses = []
    for _ in range(4):
        async with http.get(server.url + "/v1/sessions", headers=headers) as resp:
            statuses.append(resp.status)
            body = await resp.json()
    assert statuses == [200, 200, 200, 429]
    assert body["error"]["code"] == "rate_limit_exceeded"
    status, body = await refusal(server, key)
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    # another key of the same account has its own budget
    _, key2 = await server.store.create_api_key(project.id, "second")
    async with http.get(server.url + "/v1/sessions",
                        headers={"Authorization": f"Bearer {key2}"}) as resp:
        assert resp.status == 200


async def test_bad_keys_refused_before_upgrade(server):
    status, body = await refusal(server, "vg_live_forgedforgedforgedforgedforged")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert "forged" not in body["error"]["message"][6:-4]  # redacted
    status, body = await refusal(server, "ek_forgedforgedforgedforged")
    assert status == 401
    status, body = await refusal(server, "")
    assert status == 401
    key_record, = await server.store.list_api_keys(server.project_id)
    await server.store.revoke_api_key(key_record.id)
    status, body = await refusal(server, server.key)
    assert status == 401 and "revoked" in body["error"]["message"]


async def test_malformed_events_get_errors_and_session_goes_on(server, jfk_pcm):
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.ws_url + "?model=gpt-realtime",
                                   headers={"Authorization": f"Bearer {server.key}"})
        sid = ws._response.headers[SESSION_ID_HEADER]
        assert (await ws.receive_json())["type"] == "session.created"

        async def expect_error(payload, code):
            await ws.send_str(payload)
            while True:
                event = await ws.receive_json(timeout=5 * SLOW)
                if event["type"] == "error":
                    assert event["error"]["code"] == code, event
                    assert event["error"]["type"] == "invalid_request_error"
                    return event

        await expect_error("{not json", "invalid_json")
        # a well-formed type voxgate does not know goes to the provider, which answers
        unknown = await expect_error('{"type": "no.such.event", "event_id": "evt_1"}',
                                     "invalid_value")
        assert unknown["error"]["param"] == "type" and unknown["error"]["event_id"] == "evt_1"
        await expect_error('{"type": "Not An Event!", "event_id": "evt_2"}', "invalid_event")
        await expect_error('["a list"]', "invalid_event")
        bad = await expect_error(
            '{"type": "input_audio_buffer.append", "audio": "%%%not-base64", "event_id": "e2"}',
            "invalid_base64")
        assert bad["error"]["event_id"] == "e2"
        big = '{"type": "input_audio_buffer.append", "audio": "' + "A" * (4 * 1024 * 1024) + '"}'
        await expect_error(big, "message_too_large")
        # the session goes on: real audio is relayed and committed
        for i in range(0, 24000 * 2 * 2, CHUNK):
            await ws.send_json({"type": "input_audio_buffer.append",
                                "audio": base64.b64encode(jfk_pcm[i:i + CHUNK]).decode()})
        await ws.send_json({"type": "input_audio_buffer.commit"})
        while (await ws.receive_json(timeout=10 * SLOW))["type"] != "input_audio_buffer.committed":
            pass
        await ws.close()
    record = await server.session(sid)
    m = record.measurements
    assert m.client_errors == 5
    assert m.event_counts.get("other") == 1  # relayed, the provider answered
    assert 1990 <= m.audio_in_ms <= 2010  # the rejected audio was not counted
    assert m.provider_errors == 0


async def test_upstream_close_reaches_client(server):
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.ws_url + "?model=gpt-realtime&voxgate_fault=close:4321",
                                   headers={"Authorization": f"Bearer {server.key}"})
        sid = ws._response.headers[SESSION_ID_HEADER]
        async with asyncio.timeout(10 * SLOW):
            async for _msg in ws:
                pass
        assert ws.close_code == 4321
    record = await server.session(sid)
    assert record.measurements.closed_by == "upstream"
    assert record.measurements.close_code == 4321


async def test_upstream_drop_is_provider_error_and_client_gets_1011(server):
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.ws_url + "?model=gpt-realtime&voxgate_fault=drop:300",
                                   headers={"Authorization": f"Bearer {server.key}"})
        sid = ws._response.headers[SESSION_ID_HEADER]
        events = []
        async with asyncio.timeout(10 * SLOW):
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    events.append(msg.json())
        assert ws.close_code == 1011
        assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == "server_error"
    record = await server.session(sid)
    assert (record.billable, record.reason) == (False, "provider_error")
    assert record.measurements.closed_by == "upstream"


async def test_client_close_code_reaches_upstream(server):
    client = sdk(server)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        sid = session_id_of(conn)
        await recv_until(conn, "session.created")
        await conn.close(code=4001, reason="bye")
    record = await server.session(sid)
    assert record.measurements.closed_by == "client"
    assert record.measurements.close_code == 4001


async def test_browser_subprotocol_auth(server):
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(
            server.ws_url + "?model=gpt-realtime",
            protocols=("realtime", f"openai-insecure-api-key.{server.key}"),
        )
        assert ws.protocol == "realtime"
        assert (await ws.receive_json())["type"] == "session.created"
        await ws.close()


async def test_idle_timeout_closes_session(make_server):
    server = await make_server(relay={"idle_timeout_s": 0.5})
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.ws_url + "?model=gpt-realtime",
                                   headers={"Authorization": f"Bearer {server.key}"})
        sid = ws._response.headers[SESSION_ID_HEADER]
        async with asyncio.timeout(10 * SLOW):
            async for _ in ws:
                pass
        assert ws.close_code == 1000
    record = await server.session(sid)
    assert record.measurements.closed_by == "server"
    assert record.measurements.close_reason == "idle timeout"


async def test_usage_equals_sessions_run(server, jfk_pcm, http):
    account, project, key = await server.new_account("roomy")
    billable = [await billable_quick_session(server, jfk_pcm, key) for _ in range(3)]
    async with sdk(server, key).realtime.connect(model="gpt-realtime") as conn:  # too short
        short = session_id_of(conn)
        await recv_until(conn, "session.created")
    await server.session(short)
    records = [await server.session(s) for s in billable]
    headers = {"Authorization": f"Bearer {key}"}
    admin = {"Authorization": f"Bearer {await server.admin_key_of(account.id)}"}
    async with http.get(server.url + "/billing/usage", headers=admin) as resp:
        usage = await resp.json()
    assert usage["plan"] == "roomy"
    assert usage["sessionsUsed"] == 3
    assert usage["sessionsIncluded"] == 1000
    assert usage["sessionsRemaining"] == 997
    assert usage["estimatedMinutes"] == 2000
    assert usage["percentUsed"] == 0.3
    expected_minutes = sum(r.measurements.duration_ms for r in records) / 60000
    assert usage["minutesUsed"] == round(expected_minutes, 1)
    async with http.get(server.url + "/v1/sessions?limit=2", headers=headers) as resp:
        page = await resp.json()
    assert [s["id"] for s in page["data"]] == [short, billable[2]]
    assert page["has_more"] is True
    # no audio and no response: a text session that did nothing
    assert page["data"][0]["reason"] == "no_response" and page["data"][0]["billable"] is False
    async with http.get(server.url + f"/v1/sessions?limit=10&after={page['last_id']}",
                        headers=headers) as resp:
        rest = await resp.json()
    assert [s["id"] for s in rest["data"]] == [billable[1], billable[0]]
    assert all(s["billable"] and s["audio_in_ms"] == 6000 for s in rest["data"])
    async with http.get(server.url + "/v1/sessions?billable=false", headers=headers) as resp:
        assert [s["id"] for s in (await resp.json())["data"]] == [short]


async def test_metrics_count_sessions_and_refusals(server, http):
    async with sdk(server).realtime.connect(model="gpt-realtime") as conn:
        sid = session_id_of(conn)
        await recv_until(conn, "session.created")
    await server.session(sid)
    status, _ = await refusal(server, "vg_live_nope_nope_nope_nope")
    assert status == 401
    async with http.get(server.url + "/metrics") as resp:
        text = await resp.text()
    assert 'voxgate_sessions_started_total{transport="websocket"} 1.0' in text
    assert 'voxgate_sessions_completed_total{reason="no_response",transport="websocket"} 1.0' in text
    assert "voxgate_active_sessions 0.0" in text


async def test_record_is_final_when_close_completes(server):
    """On a concurrency-1 plan, back-to-back sessions are never refused: the
    session is finished before the client's close handshake completes."""
    account, project, key = await server.new_account("free")
    async with aiohttp.ClientSession() as http:
        for _ in range(5):
            ws = await http.ws_connect(server.ws_url + "?model=gpt-realtime",
                                       headers={"Authorization": f"Bearer {key}"})
            sid = ws._response.headers[SESSION_ID_HEADER]
            assert (await ws.receive_json())["type"] == "session.created"
            await ws.close()
            record = await server.store.get_session(sid)  # no waiting
            assert record.status == "completed" and record.reason == "no_response"
            assert await server.gateway.admission.in_flight(account.id) == 0


async def test_pay_as_you_go_session_goes_to_the_settlement_outbox(server, jfk_pcm):
    account, project, key = await server.new_account("payg")
    billable = await billable_quick_session(server, jfk_pcm, key)
    async with sdk(server, key).realtime.connect(model="gpt-realtime") as conn:
        short = session_id_of(conn)
        await recv_until(conn, "session.created")
    assert (await server.session(billable)).settlement == "pending"
    assert (await server.session(short)).settlement == "none"
    due = await server.store.due_outbox(time.time() + 3600)
    assert [item.session_id for item in due if item.account_id == account.id] == [billable]


async def test_bytes_are_counted_as_utf8_on_the_wire(server):
    update = ('{"type": "session.update", "session": {"type": "realtime", '
              '"instructions": "Réponds en français — merci ✓"}}')
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.ws_url + "?model=gpt-realtime",
                                   headers={"Authorization": f"Bearer {server.key}"})
        sid = ws._response.headers[SESSION_ID_HEADER]
        assert (await ws.receive_json())["type"] == "session.created"
        await ws.send_str(update)
        while (await ws.receive_json(timeout=5 * SLOW))["type"] != "session.updated":
            pass
        await ws.close()
    record = await server.session(sid)
    assert record.measurements.bytes_in == len(update.encode()) > len(update)


async def test_keepalive_ends_a_session_whose_client_stops_answering(make_server):
    """A client that keeps its TCP connection but answers no ping is gone
    after two quiet ping intervals; a quiet client that answers pings stays."""
    server = await make_server(relay={"ping_interval_s": 0.2})
    headers = {"Authorization": f"Bearer {server.key}"}
    async with aiohttp.ClientSession() as http:
        alive = await http.ws_connect(server.ws_url + "?model=gpt-realtime", headers=headers)
        alive_id = alive._response.headers[SESSION_ID_HEADER]
        async def read_all():  # aiohttp answers pings while reading
            async for _ in alive:
                pass

        reader = asyncio.create_task(read_all())
        mute = await http.ws_connect(server.ws_url + "?model=gpt-realtime", headers=headers,
                                     autoping=False)
        mute_id = mute._response.headers[SESSION_ID_HEADER]
        record = await server.session(mute_id)  # never reads: never pongs
        m = record.measurements
        assert (m.closed_by, m.close_code) == ("client", 1006)
        assert m.close_reason.startswith("keepalive timeout")
        assert record.reason == "no_response" and m.provider_errors == 0
        assert m.duration_ms < 2000 * SLOW
        await asyncio.sleep(0.6)
        assert (await server.store.get_session(alive_id)).status == "active"
        reader.cancel()
        await alive.close()
        await mute.close()


async def test_text_session_with_completed_responses_is_billable(server):
    """The chat client's case: text in, text out, no audio; its completed
    responses make it billable (with the OpenAI upstream the operator pays
    for those tokens)."""
    async with sdk(server).realtime.connect(model="gpt-realtime") as conn:
        sid = session_id_of(conn)
        await recv_until(conn, "session.created")
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        for i in range(3):
            await conn.conversation.item.create(item={
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": f"Question number {i + 1}?"}]})
            await conn.response.create()
            done, _ = await recv_until(conn, "response.done")
            assert done.response.status == "completed"
    record = await server.session(sid)
    m = record.measurements
    assert m.audio_in_ms == 0 and m.audio_out_ms == 0
    assert m.responses_completed == 3 and m.total_tokens > 0
    assert (record.billable, record.reason) == (True, "billable"), record.rule
    assert record.rule.startswith("text session (no audio): 3 completed responses")

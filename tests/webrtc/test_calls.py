"""WebRTC calls end to end with an aiortc client over loopback: real speech
in, the local provider's reply out as media, the session metered and
judged like a WebSocket session."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import SLOW
from tests.webrtc.client import Client

NO_VAD = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
# what the client hears of itself needs input transcription (null by default, as OpenAI's)
TRANSCRIBED = {"type": "realtime",
               "audio": {"input": {"turn_detection": None, "transcription": {"model": "whisper-1"}}}}


async def mint(http, server, key: str | None = None, session: dict | None = None) -> dict:
    resp = await http.post(server.url + "/v1/realtime/client_secrets",
                           json={"session": session or NO_VAD},
                           headers={"Authorization": f"Bearer {key or server.key}"})
    body = await resp.json()
    assert resp.status == 200, body
    return body


async def assert_nothing_left(server) -> None:
    gw = server.gateway
    for _ in range(100):
        if not gw.active:
            break
        await asyncio.sleep(0.02)
    assert not gw.active
    assert await gw.admission.in_flight(server.account_id) == 0


async def speak_and_hear(client: Client) -> dict:
    """Wait for the speech to be sent, commit, ask for a reply, wait for the
    reply audio to finish playing."""
    await client.wait_event("session.created", 10)
    await asyncio.wait_for(client.track.finished.wait(), 20 * SLOW)
    await asyncio.sleep(0.3)  # the last RTP packets before the commit
    client.send({"type": "input_audio_buffer.commit"})
    client.send({"type": "response.create"})
    done = await client.wait_event("response.done", 60)
    await client.wait_event("output_audio_buffer.stopped", 30)
    return done


async def test_billable_call_with_real_speech(make_server, rtc_settings, http, jfk48):
    server = await make_server(**rtc_settings)
    ek = await mint(http, server, session=TRANSCRIBED)
    client = Client(server.url, jfk48)
    cpu0, wall0 = time.process_time(), time.monotonic()
    try:
        resp, answer = await client.connect(http, ek["value"])
        assert client.call_id.startswith("rtc_")
        assert "a=candidate:" in answer and " 127.0.0.1 " in answer
        done = await speak_and_hear(client)
        heard = " ".join(e.get("transcript", "") for e in client.events if e["type"]
                         == "conversation.item.input_audio_transcription.completed")
        assert any(w in heard.lower() for w in ("country", "americans", "fellow")), heard
        assert "response.output_audio.delta" not in client.types()
        assert "output_audio_buffer.started" in client.types()
        assert client.audio_samples_nonzero > 25  # > 0.5 s of reply heard
        assert done["response"]["status"] == "completed"
        r = await http.post(server.url + client.location + "/hangup",
                            headers={"Authorization": f"Bearer {ek['value']}"})
        assert r.status == 200
        cpu_share = (time.process_time() - cpu0) / (time.monotonic() - wall0)
    finally:
        await client.close()
    record = await server.session(client.session_id)
    m = record.measurements
    assert record.transport == "webrtc"
    assert record.billable is True and record.reason == "billable", record.rule
    assert 10_700 <= m.audio_in_ms <= 11_100, m.audio_in_ms
    assert m.audio_out_ms > 500
    assert m.ice_pair_type == "host"
    assert m.connect_ms is not None and 0 < m.connect_ms < 2000
    assert m.ice_checking_ms is not None and m.ice_connected_ms is not None
    assert m.dtls_connected_ms is not None and m.upstream_ready_ms is not None
    assert m.closed_by == "client" and m.close_reason == "hangup"
    assert m.total_tokens == done["response"]["usage"]["total_tokens"]
    # the call's record, as the voice page reads it
    r = await http.get(server.url + client.location,
                       headers={"Authorization": f"Bearer {ek['value']}"})
    body = await r.json()
    assert r.status == 200 and body["id"] == client.session_id and body["billable"] is True
    await assert_nothing_left(server)
    print(f"connect_ms={m.connect_ms:.1f} ice_connected_ms={m.ice_connected_ms:.1f} "
          f"dtls_connected_ms={m.dtls_connected_ms:.1f} "
          f"cpu (voxgate + aiortc client, one process)={cpu_share:.1%} of a core")


async def test_unified_interface_with_project_key_and_delete(make_server, rtc_settings, http,
                                                             speech_dir):
    """multipart/form-data (``sdp`` + ``session``) with a project API key;
    ``DELETE /v1/realtime/calls/{id}`` hangs up."""
    server = await make_server(**rtc_settings)
    client = Client(server.url, b"")
    try:
        await client.connect(http, server.key, multipart_session={
            "type": "realtime", "model": "gpt-realtime", "instructions": "Be brief.",
            "audio": {"input": {"format": {"type": "audio/pcmu"}}}})
        created = await client.wait_event("session.created", 10)  # with the call's config
        assert created["session"]["instructions"] == "Be brief."
        # media stays PCM16 24 kHz between voxgate and the provider
        assert created["session"]["audio"]["input"]["format"]["type"] == "audio/pcm"
        assert "session.updated" not in client.types()
        # an ephemeral key may not use the unified interface
        r = await http.delete(server.url + client.location,
                              headers={"Authorization": f"Bearer {server.key}"})
        assert r.status == 200
        await asyncio.wait_for(client.closed.wait(), 5 * SLOW)
    finally:
        await client.close()
    record = await server.session(client.session_id)
    assert record.transport == "webrtc" and record.api_key_id is not None
    assert record.measurements.close_reason == "hangup"
    assert record.reason == "no_response"  # no audio, no response
    r = await http.delete(server.url + client.location,
                          headers={"Authorization": f"Bearer {server.key}"})
    assert r.status == 404
    await assert_nothing_left(server)


NO_AUDIO_SDP = """v=0
o=- 1 1 IN IP4 0.0.0.0
s=-
t=0 0
a=group:BUNDLE 0
m=application 9 UDP/DTLS/SCTP webrtc-datachannel
c=IN IP4 0.0.0.0
a=mid:0
a=sctp-port:5000
a=ice-ufrag:abcd
a=ice-pwd:abcdefghijklmnopqrstuvwx
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF
a=setup:actpass
"""


@pytest.mark.parametrize("case", ["garbage", "no_audio", "no_opus", "bad_auth", "no_auth",
                                  "api_key_multipart_missing_sdp", "wrong_content_type"])
async def test_refused_offers_leave_nothing_running(make_server, rtc_settings, http, case):
    server = await make_server(**rtc_settings)
    ek = (await mint(http, server))["value"]
    client = Client(server.url, b"")
    try:
        good = await client.offer()
    finally:
        await client.close()
    headers = {"Authorization": f"Bearer {ek}", "Content-Type": "application/sdp"}
    body: object = good
    expected = (400, "invalid_sdp")
    if case == "garbage":
        body = "hello, I am not SDP"
    elif case == "no_audio":
        body = NO_AUDIO_SDP
        expected = (400, "no_audio")
    elif case == "no_opus":
        lines = [ln for ln in good.splitlines() if "opus" not in ln.lower()]
        body = "\r\n".join(ln.replace(" 96 ", " ").replace(" 96", "") if ln.startswith("m=audio")
                           else ln for ln in lines) + "\r\n"
        expected = (400, "unsupported_codec")
    elif case == "bad_auth":
        headers["Authorization"] = "Bearer ek_not_a_real_key"
        expected = (401, "invalid_api_key")
    elif case == "no_auth":
        del headers["Authorization"]
        expected = (401, "invalid_api_key")
    elif case == "api_key_multipart_missing_sdp":
        import aiohttp

        form = aiohttp.FormData()
        form.add_field("session", "{}", content_type="application/json")
        r = await http.post(server.url + "/v1/realtime/calls", data=form,
                            headers={"Authorization": f"Bearer {server.key}"})
        err = (await r.json())["error"]
        assert (r.status, err["code"]) == (400, "invalid_sdp"), err
        await assert_nothing_left(server)
        return
    elif case == "wrong_content_type":
        headers["Content-Type"] = "text/plain"
        expected = (400, "unsupported_content_type")
    r = await http.post(server.url + "/v1/realtime/calls", data=body, headers=headers)
    assert r.content_type == "application/json"
    err = (await r.json())["error"]
    assert (r.status, err["code"]) == expected, err
    await assert_nothing_left(server)
    sessions = await server.store.list_sessions(server.account_id) \
        if hasattr(server.store, "list_sessions") else []
    assert all(s.transport != "webrtc" for s in sessions)


async def test_data_channel_close_ends_the_call(make_server, rtc_settings, http):
    server = await make_server(**rtc_settings)
    ek = await mint(http, server)
    client = Client(server.url, b"")
    try:
        await client.connect(http, ek["value"])
        await client.wait_event("session.created", 10)
        client.send({"type": "not an event", "event_id": "evt_1"})
        err = await client.wait_event("error", 5)
        assert err["error"]["code"] == "invalid_event" and err["error"]["event_id"] == "evt_1"
        client.channel.send("{not json")
        client.channel.close()
        record = await server.session(client.session_id)
    finally:
        await client.close()
    m = record.measurements
    assert m.closed_by == "client" and m.close_reason == "data channel closed"
    assert m.client_errors >= 1
    await assert_nothing_left(server)


async def test_peer_close_ends_the_call(make_server, rtc_settings, http):
    server = await make_server(**rtc_settings)
    ek = await mint(http, server)
    client = Client(server.url, b"")
    await client.connect(http, ek["value"])
    await client.wait_event("session.created", 10)
    await client.close()
    record = await server.session(client.session_id)
    assert record.measurements.closed_by == "client"
    await assert_nothing_left(server)


async def test_response_cancel_drops_queued_audio(make_server, rtc_settings, http, jfk48):
    from voxgate.proxy.webrtc import CALLS

    server = await make_server(**rtc_settings)
    ek = await mint(http, server)
    client = Client(server.url, jfk48[: 48000 * 2 * 4])  # "And so, my fellow Americans"
    try:
        await client.connect(http, ek["value"])
        await client.wait_event("session.created", 10)
        await asyncio.wait_for(client.track.finished.wait(), 10 * SLOW)
        await asyncio.sleep(0.3)
        client.send({"type": "input_audio_buffer.commit"})
        client.send({"type": "response.create"})
        await client.wait_event("output_audio_buffer.started", 30)
        call = server.app[CALLS][client.call_id]
        for _ in range(100):  # let some reply audio queue up
            if call.track.queued_ms > 300:
                break
            await asyncio.sleep(0.02)
        queued = call.track.queued_ms
        client.send({"type": "response.cancel"})
        cleared = await client.wait_event("output_audio_buffer.cleared", 5)
        assert call.track.queued_ms == 0, queued
        assert cleared["response_id"]
        done = await client.wait_event("response.done", 10)
        await asyncio.sleep(0.3)
        assert call.track.queued_ms == 0
        assert "output_audio_buffer.stopped" not in client.types()
    finally:
        await client.close()
    print(f"dropped {queued:.0f} ms of queued audio; response {done['response']['status']}")
    await server.session(client.session_id)


async def test_voice_page_and_demo_key_routes(make_server, http):
    server = await make_server()
    r = await http.get(server.url + "/voice")
    assert r.status == 200 and "text/html" in r.content_type
    assert 'src="/voice/static/voice.js"' in await r.text()
    r = await http.get(server.url + "/voice/static/call.js")
    assert r.status == 200 and "oai-events" in await r.text()
    r = await http.post(server.url + "/voice/demo-key")
    body = await r.json()
    assert r.status == 200 and body["value"].startswith("ek_")
    off = await make_server(web={"demo_page": False})
    r = await http.post(off.url + "/voice/demo-key")
    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"


async def test_openai_sdk_calls_create_and_hangup(make_server, rtc_settings):
    """A server app places and ends a call with the official SDK's
    ``realtime.calls`` (the unified interface), only base_url changed."""
    from aiortc import RTCSessionDescription
    from openai import AsyncOpenAI

    server = await make_server(**rtc_settings)
    sdk = AsyncOpenAI(api_key=server.key, base_url=server.url + "/v1", max_retries=0)
    client = Client(server.url, b"")
    try:
        offer = await client.offer()
        raw = await sdk.realtime.calls.with_raw_response.create(
            sdp=offer, session={"type": "realtime", "instructions": "Be brief."})
        assert raw.http_response.status_code == 201
        call_id = raw.headers["Location"].rsplit("/", 1)[1]
        client.session_id = raw.headers["X-Voxgate-Session-Id"]
        answer = raw.http_response.text
        assert answer.startswith("v=0")
        await client.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        created = await client.wait_event("session.created", 10)
        assert created["session"]["instructions"] == "Be brief."
        await sdk.realtime.calls.hangup(call_id)
        await asyncio.wait_for(client.closed.wait(), 5 * SLOW)
    finally:
        await client.close()
    record = await server.session(client.session_id)
    assert record.transport == "webrtc" and record.measurements.close_reason == "hangup"
    await assert_nothing_left(server)

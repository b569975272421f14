"""Phone calls end to end: a simulated Twilio Media Streams client
(``twilio_client``) calls voxgate's ``GET /v1/telephony/twilio`` over
loopback, voxgate bridges it to the local voice provider (``audio/pcmu``)
through a recording proxy, with real speech as 8 kHz μ-law; records in a
real SQLite store."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import numpy as np
import pytest

from tests.conftest import SLOW, free_port
from tests.telephony.conftest import twilio_url
from tests.telephony.twilio_client import TwilioStream
from voxgate.proxy.telephony.twilio_protocol import compute_signature
from voxgate.voice.audio import ulaw_decode


def _rms(ulaw: bytes) -> float:
    pcm = np.frombuffer(ulaw_decode(ulaw), dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(pcm * pcm))) if len(pcm) else 0.0


async def stream_until(call: TwilioStream, done, timeout_s: float = 60.0) -> None:
    """Stream silence (the caller listening), 100 ms at a time, until
    ``done()``; fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s * SLOW
    while not done():
        assert time.monotonic() < deadline, "timed out"
        assert not call.closed.is_set(), (call.close_code, call.close_reason)
        await call.silence(100)


async def wait_closed(call: TwilioStream, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s * SLOW):
        await call.closed.wait()


async def no_session_left(server) -> None:
    """Nothing in flight: no live session, no admission lease."""
    gw = server.gateway
    deadline = time.monotonic() + 5 * SLOW
    while gw.active or await gw.admission.in_flight(server.account_id):
        assert time.monotonic() < deadline, (list(gw.active), await gw.admission.in_flight(
            server.account_id))
        await asyncio.sleep(0.02)


async def the_session(server):
    records = await server.store.list_sessions(server.account_id)
    assert len(records) == 1, records
    return await server.session(records[0].id)


def reply_played(call: TwilioStream, quiet_s: float = 1.5):
    """True once reply audio came, all of it played and none came for ``quiet_s``."""
    last = {"n": 0, "at": time.monotonic()}

    def done() -> bool:
        n = len(call.received_audio)
        if n != last["n"]:
            last["n"], last["at"] = n, time.monotonic()
        return n > 0 and not call.playing and time.monotonic() - last["at"] > quiet_s
    return done


async def test_phone_call_answered_metered_and_billed(make_phone_server, recorder, http,
                                                      question_ulaw):
    server = await make_phone_server(upstream_url=recorder.url)
    call = TwilioStream(twilio_url(server), {"authorization": f"Bearer {server.key}"})
    await call.connect(http)
    await call.start()
    await call.silence(200)
    await call.stream(question_ulaw)
    await stream_until(call, reply_played(call))
    await call.dtmf("5")
    await stream_until(call, lambda: any(
        e.get("type") == "conversation.item.create" for e in recorder.sent))
    await call.silence(200)
    await call.stop()
    await wait_closed(call)
    assert call.close_code == 1000

    # the reply: media frames of speech for this stream, each marked and echoed
    media = [f for f in call.received if f["event"] == "media"]
    marks = [f for f in call.received if f["event"] == "mark"]
    assert len(media) == len(marks) > 25  # more than half a second
    assert all(len(f["media"]["payload"]) <= 216 for f in media)  # ≤ 160 bytes (20 ms) each
    assert call.marks_echoed == [f["mark"]["name"] for f in marks]
    assert _rms(bytes(call.received_audio)) > 300  # speech, not silence
    assert not call.clears

    # what voxgate sent upstream
    update = recorder.sent[0]
    assert update["type"] == "session.update"
    assert update["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert update["session"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    appends = [e for e in recorder.sent if e["type"] == "input_audio_buffer.append"]
    assert len(appends) == call.chunk
    dtmf = [e for e in recorder.sent if e["type"] == "conversation.item.create"]
    assert dtmf == [{"type": "conversation.item.create", "item": {
        "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "DTMF: 5"}]}}]

    record = await the_session(server)
    m = record.measurements
    assert record.transport == "twilio"
    assert (record.call_sid, record.stream_sid) == (call.call_sid, call.stream_sid)
    assert record.billable is True and record.reason == "billable", record.rule
    assert abs(m.audio_in_ms - call.sent_audio_bytes / 8) <= 20
    assert abs(m.audio_out_ms - len(call.received_audio) / 8) <= 20
    assert m.connected and m.connect_ms is not None and m.connect_ms < 5000
    assert m.closed_by == "client" and m.close_code == 1000
    assert m.event_counts["twilio.dtmf"] == 1
    # duration: start → stop, at least the audio streamed
    assert m.duration_ms >= call.sent_audio_bytes / 8 - 100

    async with http.get(server.url + "/v1/sessions",
                        headers={"Authorization": f"Bearer {server.key}"}) as resp:
        body = await resp.json()
    assert resp.status == 200
    api = body["data"][0]
    assert (api["transport"], api["call_sid"], api["stream_sid"]) == (
        "twilio", call.call_sid, call.stream_sid)
    await no_session_left(server)
    await call.close()


async def test_barge_in_clears_then_truncates_at_audio_played(make_phone_server, recorder, http,
                                                               jfk_ulaw, barge_ulaw):
    server = await make_phone_server(upstream_url=recorder.url)
    call = TwilioStream(twilio_url(server), {"authorization": f"Bearer {server.key}"})
    await call.connect(http)
    await call.start()
    await call.stream(jfk_ulaw)  # a long question: its reply quotes 12 words (≈ 5 s)
    # the caller speaks again while the reply plays: 600 ms of it heard,
    # more than 1.5 s still to come
    await stream_until(call, lambda: call.played_bytes >= 4800 and call.queued_bytes >= 12000)
    await call.stream(barge_ulaw)
    try:
        await stream_until(call, lambda: bool(call.clears) and any(
            e.get("type") == "conversation.item.truncated" for e in recorder.answered))
    except AssertionError:
        raise AssertionError((call.clears, call.played_bytes, len(call.received_audio),
                              [e.get("type") for e in recorder.sent if e.get("type") !=
                               "input_audio_buffer.append"],
                              [e.get("type") for e in recorder.answered if "delta" not in
                               e.get("type", "")])) from None

    truncates = [e for e in recorder.sent if e["type"] == "conversation.item.truncate"]
    assert len(truncates) == 1, truncates
    truncate = truncates[0]
    heard_ms = call.clears[0].marked_played_bytes / 8
    assert heard_ms >= 600
    assert abs(truncate["audio_end_ms"] - heard_ms) <= 40, (truncate, call.clears)
    assert truncate["content_index"] == 0
    replied = {e["item_id"] for e in recorder.answered if e["type"] == "response.output_audio.delta"}
    assert truncate["item_id"] in replied
    # clear came before the truncate: the provider cut the item at what was heard
    truncated = next(e for e in recorder.answered if e["type"] == "conversation.item.truncated")
    assert truncated["audio_end_ms"] == truncate["audio_end_ms"]
    assert not [e for e in recorder.answered if e["type"] == "error"]

    await call.stop()
    await wait_closed(call)
    record = await the_session(server)
    assert record.measurements.event_counts["twilio.clear"] == 1
    assert record.billable is True
    await no_session_left(server)
    await call.close()


async def test_provider_failure_ends_the_call(make_phone_server, recorder, http, question_ulaw):
    """The provider fails mid-call: the stream closes 1011 (Twilio then
    ends the <Connect>), the record says provider_error, not billable."""
    server = await make_phone_server(upstream_url=recorder.url)
    call = TwilioStream(twilio_url(server), {"authorization": f"Bearer {server.key}"})
    await call.connect(http)
    await call.start()
    await call.stream(question_ulaw[:8000])
    await recorder.fail(1011)
    await wait_closed(call)
    assert (call.close_code, call.close_reason) == (1011, "upstream connection lost")
    record = await the_session(server)
    m = record.measurements
    assert (record.billable, record.reason) == (False, "provider_error"), record.rule
    assert (m.closed_by, m.close_code) == ("upstream", 1011)
    await no_session_left(server)
    await call.close()


async def test_shutdown_ends_calls_with_1001(make_phone_server, http):
    server = await make_phone_server()
    call = TwilioStream(twilio_url(server), {"authorization": f"Bearer {server.key}"})
    await call.connect(http)
    await call.start()
    await call.silence(300)
    await server.gateway.stop()
    await wait_closed(call)
    assert (call.close_code, call.close_reason) == (1001, "server shutting down")
    record = await the_session(server)
    m = record.measurements
    assert (m.closed_by, m.close_code, m.close_reason) == ("server", 1001, "shutdown")
    await no_session_left(server)
    await call.close()


async def test_plan_max_session_s_ends_the_call(make_phone_server, http, jfk_ulaw, tmp_path):
    """A plan with ``max_session_s = 6`` (issue 21, item 4): 22 s of speech
    streamed in real time; at 6 s (± 0.3 s) the stream is closed 1000 with
    reason ``max_session_s`` (Twilio takes no ``error`` event), recorded
    ``closed_by: "server"``, and billable (the session worked)."""
    from tests.economics.test_plan_caps import LIMIT_S, SIX_S_CATALOG, TOLERANCE_S

    catalog = tmp_path / "six.toml"
    catalog.write_text(SIX_S_CATALOG)
    server = await make_phone_server("six", catalog=str(catalog))
    call = TwilioStream(twilio_url(server), {"authorization": f"Bearer {server.key}"})
    await call.connect(http)
    await call.start()
    t0 = time.monotonic()
    speaker = asyncio.create_task(call.stream(jfk_ulaw * 2))
    await wait_closed(call, LIMIT_S + 5)
    at_s = time.monotonic() - t0
    speaker.cancel()
    assert (call.close_code, call.close_reason) == (1000, "max_session_s")
    assert abs(at_s - LIMIT_S) <= TOLERANCE_S * SLOW, at_s
    assert call.sent_audio_bytes < len(jfk_ulaw) * 2 - 5 * 8000  # cut short
    record = await the_session(server)
    m = record.measurements
    assert record.transport == "twilio"
    assert (m.closed_by, m.close_code, m.close_reason) == ("server", 1000, "max_session_s")
    assert abs(m.duration_ms - LIMIT_S * 1000) <= TOLERANCE_S * 1000 * SLOW, m.duration_ms
    assert (record.billable, record.reason) == (True, "billable"), record.rule
    await no_session_left(server)
    await call.close()


async def test_provider_unreachable(make_phone_server, http):
    server = await make_phone_server(upstream_url=f"ws://127.0.0.1:{free_port()}/v1/realtime")
    call = TwilioStream(twilio_url(server), {"authorization": f"Bearer {server.key}"})
    await call.connect(http)
    await call.start()
    await wait_closed(call)
    assert call.close_code == 1011
    assert call.close_reason.startswith("cannot reach the provider"), call.close_reason
    record = await the_session(server)
    assert record.billable is False and not record.measurements.connected
    await no_session_left(server)
    await call.close()


BAD_INPUTS = {
    "binary frame": (b"\x00\x01\x02", 1003, "twilio protocol error: binary_frame: "),
    "unknown event": ({"event": "hangup", "sequenceNumber": "9", "streamSid": "MZ" + "2" * 32},
                      1008, "twilio protocol error: unknown_event: unknown event 'hangup'"),
    "wrong streamSid": ("wrong_sid", 1008, "twilio protocol error: wrong_stream_sid: "),
    "invalid base64": ("bad_b64", 1008, "twilio protocol error: invalid_base64: "),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
async def test_bad_input_after_start_closes_with_reason(case, make_phone_server, http, caplog):
    server = await make_phone_server()
    call = TwilioStream(twilio_url(server), {"authorization": f"Bearer {server.key}"})
    bad, code, reason = BAD_INPUTS[case]
    await call.connect(http)
    await call.start()
    await call.silence(300)
    if bad == "wrong_sid":
        frame = call.media_message(b"\xff" * 160)
        frame["streamSid"] = "MZ" + "9" * 32
        bad = frame
    elif bad == "bad_b64":
        frame = call.media_message(b"\xff" * 160)
        frame["media"]["payload"] = "not base64!"
        bad = frame
    await call.send(bad)
    await wait_closed(call)
    assert call.close_code == code, (call.close_reason, await the_session(server))
    assert call.close_reason is not None and call.close_reason.startswith(reason), \
        call.close_reason
    record = await the_session(server)
    assert record.billable is False
    assert record.measurements.closed_by == "server"
    assert record.measurements.close_code == code
    assert record.measurements.close_reason.startswith(reason)
    await no_session_left(server)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    await call.close()


@pytest.mark.parametrize("case, parameters, code, reason", [
    ("media before start", None, 1008, "twilio protocol error: not_started: media before start"),
    ("missing key", {}, 1008, "invalid_api_key: missing API key"),
    ("wrong key", {"authorization": "Bearer vg_live_notakey000000000000"}, 1008,
     "invalid_api_key: incorrect API key provided"),
    ("bad session", "bad session", 1008, "invalid_session: customParameters.session must be"),
])
async def test_refused_before_any_session(case, parameters, code, reason, make_phone_server,
                                          http, caplog):
    server = await make_phone_server()
    params = {"authorization": f"Bearer {server.key}", "session": "[1]"} \
        if parameters == "bad session" else (parameters or {})
    call = TwilioStream(twilio_url(server), params)
    await call.connect(http)
    if parameters is None:
        await call.connected()
        await call.send(call.media_message(b"\xff" * 160))
    else:
        await call.start()
        await call.silence(100)
    await wait_closed(call)
    assert call.close_code == code
    assert call.close_reason is not None and call.close_reason.startswith(reason), \
        call.close_reason
    assert await server.store.list_sessions(server.account_id) == []  # nothing billed
    await no_session_left(server)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert any(reason in r.getMessage() for r in caplog.records)  # the attempt is logged
    await call.close()


async def test_concurrency_is_shared_with_websocket_sessions(make_phone_server, http):
    """A concurrency-1 account with a live WebSocket session: its phone call
    is refused (1013, try again later); once the WebSocket session ends, a
    call goes through."""
    server = await make_phone_server(plan="free")
    headers = {"Authorization": f"Bearer {server.key}"}
    async with http.ws_connect(server.ws_url + "?model=gpt-realtime", headers=headers,
                               protocols=("realtime",)) as live:
        first = await live.receive_json(timeout=10 * SLOW)
        assert first["type"] == "session.created"
        call = TwilioStream(twilio_url(server), {"authorization": f"Bearer {server.key}"})
        await call.connect(http)
        await call.start()
        await wait_closed(call)
        assert call.close_code == 1013
        assert call.close_reason.startswith("concurrency_limit_exceeded: "), call.close_reason
        await call.close()
    await no_session_left(server)
    records = await server.store.list_sessions(server.account_id)
    assert [r.transport for r in records] == ["websocket"]
    second = TwilioStream(twilio_url(server), {"authorization": f"Bearer {server.key}"},
                          call_sid="CA" + "3" * 32)
    await second.connect(http)
    await second.start()
    await second.silence(200)
    await second.stop()
    await wait_closed(second)
    assert second.close_code == 1000
    await no_session_left(server)
    records = await server.store.list_sessions(server.account_id)
    assert sorted(r.transport for r in records) == ["twilio", "websocket"]
    await second.close()


async def test_twilio_signature_checked_when_a_token_is_set(make_phone_server, http,
                                                            monkeypatch):
    monkeypatch.setenv("VOXGATE_TELEPHONY__TWILIO_AUTH_TOKEN", "twilio-token")
    server = await make_phone_server()
    url = twilio_url(server)
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await http.ws_connect(url)
    assert err.value.status == 403
    # signed with another token: it may be a project's own (checked at
    # start with the token of the project the key names; call_auth), so the
    # stream opens and the call is refused at start, nothing billed
    forged = TwilioStream(url, {"authorization": f"Bearer {server.key}"},
                          call_sid="CA" + "4" * 32,
                          headers={"X-Twilio-Signature": compute_signature("another-token", url)})
    await forged.connect(http)
    await forged.start()
    await wait_closed(forged)
    assert forged.close_code == 1008
    assert forged.close_reason.startswith("invalid_twilio_signature: "), forged.close_reason
    await forged.close()
    await no_session_left(server)
    assert await server.store.list_sessions(server.account_id) == []
    call = TwilioStream(url, {"authorization": f"Bearer {server.key}"},
                        headers={"X-Twilio-Signature": compute_signature("twilio-token", url)})
    await call.connect(http)
    await call.start()
    await call.silence(200)
    await call.stop()
    await wait_closed(call)
    assert call.close_code == 1000
    record = await the_session(server)
    assert record.transport == "twilio" and record.billable is False
    await call.close()

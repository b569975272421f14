"""The local voice provider over real loopback WebSockets: real speech in,
real transcripts and synthesised speech out, protocol errors, echo mode and
every injected fault. Timeouts scale from ``SLOW`` (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from tests.conftest import SLOW, SPEECH
from tests.voice.server_events import validated
from voxgate.config import VoiceSettings
from voxgate.voice import VoiceProvider, load_pcm16
from voxgate.voice.audio import resample_pcm16, ulaw_encode
from voxgate.voice.faults import Faults, parse_faults

TIMEOUT_S = 20.0 * SLOW
CHUNK = 24000 * 2 // 10  # 100 ms of 24 kHz PCM16
AUTH = {"Authorization": "Bearer sk-test"}


@pytest_asyncio.fixture
async def provider():
    p = VoiceProvider(VoiceSettings(faults_enabled=True))
    await p.start("127.0.0.1", 0)
    yield p
    await p.stop()


@pytest_asyncio.fixture
async def http():
    async with aiohttp.ClientSession() as s:
        yield s


async def connect(http, provider, query: str = "model=gpt-realtime", **kw) -> aiohttp.ClientWebSocketResponse:
    return await http.ws_connect(f"{provider.url}?{query}", headers=kw.pop("headers", AUTH), **kw)


async def send(ws, **event: Any) -> None:
    await ws.send_str(orjson.dumps(event).decode())


async def recv_until(ws, etype: str, timeout_s: float = TIMEOUT_S) -> list[dict[str, Any]]:
    """Events up to and including the first of type ``etype``, each
    validated with the SDK's models."""
    seen = []
    async with asyncio.timeout(timeout_s):
        while True:
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.TEXT, f"connection ended: {msg}"
            event = validated(msg.data)
            seen.append(event)
            if event["type"] == etype:
                return seen


async def stream(ws, pcm: bytes, chunk: int = CHUNK, speed: float = 4.0, rate_bytes_per_s: int = 48000) -> None:
    """Append ``pcm`` in ``chunk``-byte pieces at ``speed``× real time."""
    for i in range(0, len(pcm), chunk):
        await send(ws, type="input_audio_buffer.append", audio=base64.b64encode(pcm[i:i + chunk]).decode())
        if speed:
            await asyncio.sleep(chunk / rate_bytes_per_s / speed)


def types(events):
    return [e["type"] for e in events]


def audio_bytes(events) -> int:
    return sum(len(base64.b64decode(e["delta"])) for e in events if e["type"] == "response.output_audio.delta")


def check_usage(response: dict[str, Any]) -> None:
    u = response["usage"]
    assert u["total_tokens"] == u["input_tokens"] + u["output_tokens"] > 0
    assert {"text_tokens", "audio_tokens", "cached_tokens"} <= set(u["input_token_details"])
    assert {"text_tokens", "audio_tokens"} <= set(u["output_token_details"])


# -- HTTP layer ----------------------------------------------------------------

async def test_healthz_and_http_errors(http, provider):
    base = provider.url.replace("ws://", "http://").removesuffix("/v1/realtime")
    async with http.get(base + "/healthz") as r:
        assert r.status == 200 and (await r.json())["status"] == "ok"
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await connect(http, provider, headers={})
    assert info.value.status == 401
    async with http.get(provider.url + "?model=whisper-1", headers=AUTH) as r:
        assert r.status == 400
        assert (await r.json())["error"] == {
            "type": "invalid_request_error", "code": "model_not_found", "param": "model",
            "message": "The model `whisper-1` does not exist or you do not have access to it."}
    ws = await connect(http, provider, "model=voxgate-local")
    created = (await recv_until(ws, "session.created"))[0]
    assert created["session"]["model"] == "voxgate-local"
    await ws.close()


# -- full voice turn -------------------------------------------------------------

async def test_voice_turn_with_server_vad(http, provider):
    """jfk.flac streamed at 8× real time: VAD, transcript, spoken reply."""
    ws = await connect(http, provider)
    created = (await recv_until(ws, "session.created"))[0]
    session = created["session"]
    assert session["object"] == "realtime.session"
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    # jfk pauses for ~0.7 s mid-sentence: a longer silence keeps it one turn.
    await send(ws, type="session.update", event_id="evt_upd", session={
        "type": "realtime",
        "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 1000},
                            "transcription": {"model": "whisper-1"}}}})
    await recv_until(ws, "session.updated")
    pcm = load_pcm16(SPEECH / "jfk.flac") + bytes(48000 * 3 // 2)  # + 1.5 s of silence
    streaming = asyncio.ensure_future(stream(ws, pcm, speed=8.0))
    events = await recv_until(ws, "response.done")
    await streaming
    t = types(events)
    assert t.index("input_audio_buffer.speech_started") < t.index("input_audio_buffer.speech_stopped") \
        < t.index("input_audio_buffer.committed") < t.index("response.created")
    started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
    stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    assert started["item_id"] == stopped["item_id"] and 0 <= started["audio_start_ms"] < 1000
    assert 10000 < stopped["audio_end_ms"] < 12500
    transcription = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert transcription["item_id"] == stopped["item_id"] and transcription["content_index"] == 0
    assert "country" in transcription["transcript"]
    assert transcription["usage"]["type"] == "duration" and transcription["usage"]["seconds"] > 9
    for name in ("response.output_item.added", "response.content_part.added", "response.output_audio.delta",
                 "response.output_audio_transcript.delta", "response.output_audio.done",
                 "response.output_audio_transcript.done", "response.content_part.done",
                 "response.output_item.done"):
        assert name in t, name
    assert audio_bytes(events) > 48000 // 2  # more than 0.5 s of 24 kHz PCM16
    done = events[-1]["response"]
    assert done["status"] == "completed"
    check_usage(done)
    assert done["usage"]["input_token_details"]["audio_tokens"] > 0
    transcript = next(e for e in events if e["type"] == "response.output_audio_transcript.done")["transcript"]
    assert transcript.startswith("You said:") and done["output"][0]["content"][0]["transcript"] == transcript
    await ws.close()


async def test_openai_sdk_manual_commit_pcmu():
    """The official SDK against the provider: G.711 μ-law both ways, no VAD,
    manual commit, response.create."""
    p = VoiceProvider(VoiceSettings())
    await p.start("127.0.0.1", 0)
    port = int(p.url.split(":")[2].split("/")[0])
    client = AsyncOpenAI(api_key="x", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
    try:
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.session.update(session={
                "type": "realtime",
                "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": None,
                                    "transcription": {"model": "whisper-1"}},
                          "output": {"format": {"type": "audio/pcmu"}}}})
            speech8k = resample_pcm16(load_pcm16(SPEECH / "goforward-16k-s16le.raw", 16000), 16000, 8000)
            ulaw = ulaw_encode(speech8k)
            for i in range(0, len(ulaw), 1600):
                await conn.input_audio_buffer.append(audio=base64.b64encode(ulaw[i:i + 1600]).decode())
            await conn.input_audio_buffer.commit()
            await conn.response.create()
            seen, audio = [], 0
            async with asyncio.timeout(TIMEOUT_S):
                async for event in conn:
                    seen.append(event)
                    if event.type == "response.output_audio.delta":
                        audio += len(base64.b64decode(event.delta))
                    if event.type == "response.done":
                        break
            t = [e.type for e in seen]
            assert t[0] == "session.created" and "session.updated" in t and "input_audio_buffer.committed" in t
            assert "input_audio_buffer.speech_started" not in t
            transcript = next(e for e in seen if e.type == "conversation.item.input_audio_transcription.completed")
            assert "forward" in transcript.transcript
            assert audio > 8000 // 2  # > 0.5 s of 8 kHz G.711 (1 byte per sample)
            assert seen[-1].response.status == "completed" and seen[-1].response.usage.total_tokens > 0
    finally:
        await p.stop()


# -- text turns, cancel, items ----------------------------------------------------

async def test_text_turn_audio_and_text_modalities(http, provider):
    ws = await connect(http, provider)
    await recv_until(ws, "session.created")
    await send(ws, type="conversation.item.create",
               item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello there"}]})
    added = (await recv_until(ws, "conversation.item.done"))
    assert added[0]["type"] == "conversation.item.added" and added[0]["item"]["role"] == "user"
    t0 = time.perf_counter()
    await send(ws, type="response.create")
    events = await recv_until(ws, "response.done")
    assert audio_bytes(events) > 24000  # > 0.5 s
    assert time.perf_counter() - t0 < 5 * SLOW
    assert next(e for e in events if e["type"] == "response.output_audio_transcript.done")["transcript"] \
        == "Hello! How can I help you today?"
    check_usage(events[-1]["response"])

    await send(ws, type="conversation.item.create",
               item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go north"}]})
    await send(ws, type="response.create", response={"output_modalities": ["text"], "instructions": "Be terse."})
    events = await recv_until(ws, "response.done")
    t = types(events)
    assert "response.output_audio.delta" not in t and "response.output_text.delta" in t
    done_text = next(e for e in events if e["type"] == "response.output_text.done")["text"]
    assert done_text == "You said: go north. I heard 2 words."
    assert events[-1]["response"]["output_modalities"] == ["text"]
    await ws.close()


async def test_response_cancel_and_item_ops(http, provider):
    ws = await connect(http, provider)
    await recv_until(ws, "session.created")
    await send(ws, type="response.cancel", event_id="evt_c1")
    err = (await recv_until(ws, "error"))[-1]["error"]
    assert err["code"] == "response_cancel_not_active" and err["event_id"] == "evt_c1"

    await send(ws, type="conversation.item.create", item={
        "id": "item_u1", "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": " ".join(["long words"] * 40)}]})
    await recv_until(ws, "conversation.item.done")
    await send(ws, type="response.create")
    created = (await recv_until(ws, "response.created"))[-1]
    await send(ws, type="response.cancel")
    events = await recv_until(ws, "response.done")
    done = events[-1]["response"]
    assert done["id"] == created["response"]["id"] and done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    await send(ws, type="response.cancel")
    assert (await recv_until(ws, "error"))[-1]["error"]["code"] == "response_cancel_not_active"

    await send(ws, type="conversation.item.retrieve", item_id="item_u1")
    got = (await recv_until(ws, "conversation.item.retrieved"))[-1]
    assert got["item"]["id"] == "item_u1" and got["item"]["content"][0]["type"] == "input_text"
    await send(ws, type="conversation.item.delete", item_id="item_u1")
    assert (await recv_until(ws, "conversation.item.deleted"))[-1]["item_id"] == "item_u1"
    await send(ws, type="conversation.item.delete", item_id="item_u1", event_id="evt_d2")
    err = (await recv_until(ws, "error"))[-1]["error"]
    assert err["code"] == "item_not_found" and err["event_id"] == "evt_d2"
    await send(ws, type="output_audio_buffer.clear")
    await recv_until(ws, "output_audio_buffer.cleared")
    await ws.close()


async def test_truncate_assistant_item(http, provider):
    ws = await connect(http, provider)
    await recv_until(ws, "session.created")
    await send(ws, type="response.create")
    done = (await recv_until(ws, "response.done"))[-1]["response"]
    item_id = done["output"][0]["id"]
    await send(ws, type="conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=300)
    assert (await recv_until(ws, "conversation.item.truncated"))[-1] | {"event_id": None} == {
        "type": "conversation.item.truncated", "item_id": item_id, "content_index": 0, "audio_end_ms": 300,
        "event_id": None}
    await ws.close()


# -- protocol errors ----------------------------------------------------------------

async def test_malformed_events_keep_the_session(http, provider):
    ws = await connect(http, provider)
    await recv_until(ws, "session.created")
    await ws.send_str("{not json")
    assert (await recv_until(ws, "error"))[-1]["error"]["code"] == "invalid_json"
    await send(ws, type="no.such.event", event_id="evt_x")
    err = (await recv_until(ws, "error"))[-1]["error"]
    assert (err["type"], err["code"], err["param"], err["event_id"]) == \
        ("invalid_request_error", "invalid_value", "type", "evt_x")
    await send(ws, event_id="evt_y")
    assert (await recv_until(ws, "error"))[-1]["error"]["code"] == "missing_required_parameter"
    await send(ws, type="input_audio_buffer.append", audio="***not base64***")
    assert (await recv_until(ws, "error"))[-1]["error"]["code"] == "invalid_base64"
    await send(ws, type="input_audio_buffer.append", audio=12)
    assert (await recv_until(ws, "error"))[-1]["error"]["code"] == "invalid_value"
    await send(ws, type="session.update", session={"type": "realtime", "audio": {"output": {"speed": "fast"}}})
    assert (await recv_until(ws, "error"))[-1]["error"]["param"] == "session.audio.output.speed"
    await send(ws, type="input_audio_buffer.commit")
    assert (await recv_until(ws, "error"))[-1]["error"]["code"] == "input_audio_buffer_commit_empty"
    await send(ws, type="input_audio_buffer.clear")
    await recv_until(ws, "input_audio_buffer.cleared")
    await send(ws, type="session.update", session={"type": "realtime", "instructions": "still here"})
    assert (await recv_until(ws, "session.updated"))[-1]["session"]["instructions"] == "still here"
    await ws.close()


# -- echo mode ------------------------------------------------------------------------

async def test_echo_mode_returns_exact_chunks(http, provider):
    ws = await connect(http, provider, "model=gpt-realtime&voxgate_fault=echo")
    await recv_until(ws, "session.created")
    pcm = load_pcm16(SPEECH / "goforward-16k-s16le.raw")
    sent = [base64.b64encode(pcm[i:i + CHUNK]).decode() for i in range(0, len(pcm), CHUNK)]
    for b64 in sent:
        await send(ws, type="input_audio_buffer.append", audio=b64)
    await send(ws, type="input_audio_buffer.commit")
    events = await recv_until(ws, "response.done")
    assert [e["delta"] for e in events if e["type"] == "response.output_audio.delta"] == sent
    t = types(events)
    assert t[0] == "response.created" and "input_audio_buffer.committed" in t
    assert "input_audio_buffer.speech_started" not in t
    assert events[-1]["response"]["status"] == "completed"
    assert events[-1]["response"]["usage"]["output_token_details"]["audio_tokens"] > 0
    await ws.close()


async def test_echo_responder_setting_without_models(http):
    p = VoiceProvider(VoiceSettings(responder="echo"))
    await p.start("127.0.0.1", 0)
    try:
        ws = await http.ws_connect(p.url, headers=AUTH)
        await recv_until(ws, "session.created")
        await send(ws, type="input_audio_buffer.append", audio=base64.b64encode(b"\x01\x02" * 100).decode())
        delta = (await recv_until(ws, "response.output_audio.delta"))[-1]
        assert base64.b64decode(delta["delta"]) == b"\x01\x02" * 100
        await send(ws, type="input_audio_buffer.clear")
        await recv_until(ws, "response.done")
        await ws.close()
    finally:
        await p.stop()


# -- faults -----------------------------------------------------------------------------

async def test_fault_server_error_after_first_response(http, provider):
    ws = await connect(http, provider, "model=gpt-realtime&voxgate_fault=server_error")
    await recv_until(ws, "session.created")
    await send(ws, type="response.create", response={"output_modalities": ["text"]})
    await recv_until(ws, "response.done")
    err = (await recv_until(ws, "error"))[-1]["error"]
    assert err["type"] == "server_error"
    await send(ws, type="input_audio_buffer.clear")  # still open
    await recv_until(ws, "input_audio_buffer.cleared")
    await ws.close()


async def test_fault_server_error_timed_via_header(http, provider):
    ws = await connect(http, provider, headers={**AUTH, "X-Voxgate-Fault": "server_error:50"})
    events = await recv_until(ws, "error")
    assert types(events) == ["session.created", "error"] and events[-1]["error"]["type"] == "server_error"
    await ws.close()


async def test_fault_drop_aborts_without_close_frame(http, provider):
    ws = await connect(http, provider, "model=gpt-realtime&voxgate_fault=drop:100")
    await recv_until(ws, "session.created")
    t0 = time.perf_counter()
    msg = await asyncio.wait_for(ws.receive(), TIMEOUT_S)
    assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    assert ws.close_code == 1006 or ws.close_code is None  # abnormal closure: no close frame
    assert time.perf_counter() - t0 < 2 * SLOW


async def test_fault_eof_after_first_response_done(http, provider):
    """``eof``: the first ``response.done`` arrives whole, then the TCP
    connection ends without a close frame."""
    ws = await connect(http, provider, "model=gpt-realtime&voxgate_fault=eof")
    await recv_until(ws, "session.created")
    await send(ws, type="response.create", response={"output_modalities": ["text"]})
    done = (await recv_until(ws, "response.done"))[-1]
    assert done["response"]["status"] == "completed"
    msg = await asyncio.wait_for(ws.receive(), TIMEOUT_S)
    assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), msg
    assert msg.type != aiohttp.WSMsgType.CLOSE  # no close frame


async def test_fault_eof_after_nth_response(http, provider):
    ws = await connect(http, provider, "model=gpt-realtime&voxgate_fault=eof:2")
    await recv_until(ws, "session.created")
    for _ in range(2):
        await send(ws, type="response.create", response={"output_modalities": ["text"]})
        await recv_until(ws, "response.done")
    msg = await asyncio.wait_for(ws.receive(), TIMEOUT_S)
    assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), msg


async def test_fault_fail_responses(http, provider):
    """``fail_responses``: every response ends ``failed`` with a
    ``server_error`` in ``status_details`` and no output, in the GA shape
    (every event validated with the SDK's models); the session goes on."""
    ws = await connect(http, provider, "model=gpt-realtime&voxgate_fault=fail_responses")
    await recv_until(ws, "session.created")
    await send(ws, type="session.update", session={"type": "realtime",
                                                    "audio": {"input": {"turn_detection": None}}})
    await recv_until(ws, "session.updated")
    await stream(ws, load_pcm16(SPEECH / "jfk.flac")[: 24000 * 2 * 2], speed=0)
    await send(ws, type="input_audio_buffer.commit")
    await recv_until(ws, "input_audio_buffer.committed")
    for _ in range(2):
        await send(ws, type="response.create")
        events = await recv_until(ws, "response.done")
        assert "response.created" in types(events) and audio_bytes(events) == 0
        assert not [e for e in events if e["type"].startswith(("response.output_", "response.content_part"))]
        response = events[-1]["response"]
        assert response["status"] == "failed" and response["output"] == []
        assert response["status_details"] == {
            "type": "failed",
            "error": {"type": "server_error", "code": "server_error",
                      "message": "The server had an error while processing your request (injected fault)."},
        }
        assert response["usage"]["output_tokens"] == 0
    await send(ws, type="input_audio_buffer.clear")  # still open
    await recv_until(ws, "input_audio_buffer.cleared")
    await ws.close()


async def test_fault_stall_goes_silent_with_the_connection_open(http, provider):
    ws = await connect(http, provider, "model=gpt-realtime&voxgate_fault=stall:50", autoping=False)
    await recv_until(ws, "session.created")
    await asyncio.sleep(0.2)
    await send(ws, type="input_audio_buffer.clear")
    await ws.ping()
    with pytest.raises(TimeoutError):  # no answer, no pong, no close
        await asyncio.wait_for(ws.receive(), 0.5)
    assert not ws.closed
    await ws.close()


def test_parse_new_faults():
    assert parse_faults("eof").eof_after == 1 and parse_faults("eof:3").eof_after == 3
    assert parse_faults("fail_responses,echo") == Faults(fail_responses=True, echo=True)
    assert parse_faults("stall").stall_ms == 1000 and parse_faults("stall:5").stall_ms == 5
    with pytest.raises(ValueError, match="at least 1"):
        parse_faults("eof:0")


async def test_fault_close_code(http, provider):
    ws = await connect(http, provider, "model=gpt-realtime&voxgate_fault=close:4001")
    await recv_until(ws, "session.created")
    msg = await asyncio.wait_for(ws.receive(), TIMEOUT_S)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4001


async def test_fault_delay_created(http, provider):
    t0 = time.perf_counter()
    ws = await connect(http, provider, "model=gpt-realtime&voxgate_fault=delay_created:300")
    await recv_until(ws, "session.created")
    assert time.perf_counter() - t0 >= 0.3
    await ws.close()


async def test_fault_via_session_update(http, provider):
    ws = await connect(http, provider)
    await recv_until(ws, "session.created")
    await send(ws, type="session.update", session={"type": "realtime", "voxgate_fault": "echo"})
    await recv_until(ws, "session.updated")
    await send(ws, type="input_audio_buffer.append", audio="AAAA")
    assert (await recv_until(ws, "response.output_audio.delta"))[-1]["delta"] == "AAAA"
    await send(ws, type="session.update", session={"type": "realtime", "voxgate_fault": "close:4002"})
    msg = await asyncio.wait_for(ws.receive(), TIMEOUT_S)
    while msg.type == aiohttp.WSMsgType.TEXT:
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT_S)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4002


async def test_faults_ignored_when_disabled(http):
    p = VoiceProvider(VoiceSettings(faults_enabled=False))
    await p.start("127.0.0.1", 0)
    try:
        ws = await http.ws_connect(p.url + "?voxgate_fault=close:4001", headers=AUTH)
        await recv_until(ws, "session.created")
        await send(ws, type="session.update", session={"type": "realtime", "voxgate_fault": "drop:0"})
        await recv_until(ws, "session.updated")
        await asyncio.sleep(0.1)
        await send(ws, type="input_audio_buffer.clear")
        await recv_until(ws, "input_audio_buffer.cleared")
        await ws.close()
        # echo is a responder mode, honoured even with faults disabled
        ws = await http.ws_connect(p.url + "?voxgate_fault=echo,server_error:0", headers=AUTH)
        await recv_until(ws, "session.created")
        chunk = base64.b64encode(bytes(960)).decode()
        await send(ws, type="input_audio_buffer.append", audio=chunk)
        delta = (await recv_until(ws, "response.output_audio.delta"))[-1]
        assert delta["delta"] == chunk
        await send(ws, type="input_audio_buffer.clear")
        events = await recv_until(ws, "input_audio_buffer.cleared")
        assert "error" not in [e["type"] for e in events]
        await ws.close()
    finally:
        await p.stop()


async def test_bad_fault_spec_is_400(http, provider):
    async with http.get(provider.url + "?voxgate_fault=explode", headers=AUTH) as r:
        assert r.status == 400 and (await r.json())["error"]["param"] == "voxgate_fault"


# -- barge-in and session end ---------------------------------------------------------------

async def test_barge_in_cancels_response(http, provider):
    ws = await connect(http, provider)
    await recv_until(ws, "session.created")
    await send(ws, type="conversation.item.create", item={
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "tell me a story"}]})
    await send(ws, type="response.create")
    await recv_until(ws, "response.created")
    speech = load_pcm16(SPEECH / "goforward-16k-s16le.raw")
    streaming = asyncio.ensure_future(stream(ws, speech, speed=8.0))
    events = await recv_until(ws, "response.done")
    await streaming
    assert "input_audio_buffer.speech_started" in types(events)
    assert events[-1]["response"]["status"] == "cancelled"
    assert events[-1]["response"]["status_details"]["reason"] == "turn_detected"
    await ws.close()


async def test_client_close_stops_session_work(http, provider):
    ws = await connect(http, provider)
    await recv_until(ws, "session.created")
    await send(ws, type="response.create")
    await recv_until(ws, "response.created")
    await ws.close()
    async with asyncio.timeout(5 * SLOW):
        while provider.sessions:
            await asyncio.sleep(0.01)


# -- chat responder, browser auth ------------------------------------------------------------

@pytest_asyncio.fixture
async def fake_chat():
    """An OpenAI-compatible chat-completions server: ``/ok/chat/completions``
    answers, ``/broken/chat/completions`` fails with 500. Yields (base_url, requests)."""
    from aiohttp import web

    requests: list[dict[str, Any]] = []

    async def ok(request: web.Request) -> web.Response:
        requests.append(await request.json())
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": "Ahoy from the model."}}]})

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/ok/chat/completions", ok)
    app.router.add_post("/broken/chat/completions", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", requests
    await runner.cleanup()


@pytest.mark.parametrize("path,expected", [("ok", "Ahoy from the model."),
                                           ("broken", "You said: tell me about ships. I heard 4 words.")])
async def test_chat_responder_and_fallback(http, fake_chat, path, expected):
    base, requests = fake_chat
    p = VoiceProvider(VoiceSettings(responder="chat", chat_url=f"{base}/{path}", chat_model="tiny"))
    await p.start("127.0.0.1", 0)
    try:
        ws = await http.ws_connect(p.url, headers=AUTH)
        await recv_until(ws, "session.created")
        await send(ws, type="session.update", session={"type": "realtime", "instructions": "Talk like a pirate."})
        await send(ws, type="conversation.item.create", item={
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "tell me about ships"}]})
        await send(ws, type="response.create", response={"output_modalities": ["text"]})
        events = await recv_until(ws, "response.done")
        assert next(e for e in events if e["type"] == "response.output_text.done")["text"] == expected
        if path == "ok":
            assert requests[-1]["model"] == "tiny"
            assert requests[-1]["messages"] == [{"role": "system", "content": "Talk like a pirate."},
                                                {"role": "user", "content": "tell me about ships"}]
        await ws.close()
    finally:
        await p.stop()


async def test_browser_subprotocol_auth(http, provider):
    ws = await http.ws_connect(provider.url + "?model=gpt-realtime",
                               protocols=("realtime", "openai-insecure-api-key.ek_123"))
    assert ws.protocol == "realtime"
    await recv_until(ws, "session.created")
    await ws.close()


async def test_stop_closes_sessions_with_going_away(http):
    p = VoiceProvider(VoiceSettings())
    await p.start("127.0.0.1", 0)
    ws = await http.ws_connect(p.url, headers=AUTH)
    await recv_until(ws, "session.created")
    await stream(ws, load_pcm16(SPEECH / "goforward-16k-s16le.raw"), speed=0)  # mid-turn: STT pending
    await p.stop()
    msg = await asyncio.wait_for(ws.receive(), TIMEOUT_S)
    while msg.type == aiohttp.WSMsgType.TEXT:
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT_S)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
    assert not p.sessions


def test_exports():
    import voxgate.voice as voice

    for name in voice.__all__:
        assert getattr(voice, name) is not None

"""Provider failures end to end over WebSocket: a client through voxgate's
relay to the fault-injecting local provider (its own process, loopback),
each session's record read back from the store. A provider that drops the
connection (no close frame) is recorded as what happened — close code 1006,
``closed_by: "upstream"``, "provider connection lost" — and the client gets
an ``error`` event then a 1011 close; a session whose every response fails
records the failed responses and no audio out, and is not billable
(issue 20, items 2 and 4, and Tests)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import orjson

from tests.conftest import SLOW
from voxgate.proxy.upstream import PROVIDER_LOST, PROVIDER_RESET, PROVIDER_TIMEOUT, upstream_end
from voxgate.proxy.ws_relay import SESSION_ID_HEADER

CHUNK = 24000 * 2 // 50  # 20 ms of 24 kHz PCM16


async def connect(http: aiohttp.ClientSession, server, fault: str) -> tuple[aiohttp.ClientWebSocketResponse, str]:
    ws = await http.ws_connect(f"{server.ws_url}?model=gpt-realtime&voxgate_fault={fault}",
                               headers={"Authorization": f"Bearer {server.key}"})
    return ws, ws._response.headers[SESSION_ID_HEADER]


async def send(ws: aiohttp.ClientWebSocketResponse, **event: Any) -> None:
    await ws.send_str(orjson.dumps(event).decode())


async def until(ws: aiohttp.ClientWebSocketResponse, etype: str) -> list[dict[str, Any]]:
    seen = []
    async with asyncio.timeout(30 * SLOW):
        while True:
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.TEXT, f"connection ended before {etype}: {msg}"
            seen.append(orjson.loads(msg.data))
            if seen[-1]["type"] == etype:
                return seen


async def rest(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    """Every event until the connection ends."""
    events = []
    async with asyncio.timeout(10 * SLOW):
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                events.append(orjson.loads(msg.data))
    return events


async def append(ws: aiohttp.ClientWebSocketResponse, pcm: bytes) -> None:
    for i in range(0, len(pcm), CHUNK):
        await send(ws, type="input_audio_buffer.append", audio=base64.b64encode(pcm[i:i + CHUNK]).decode())


async def test_provider_eof_mid_session_is_1006_provider_connection_lost(server, http):
    """The provider answers one response, then its TCP connection ends with
    no close frame: recorded 1006 / upstream / "provider connection lost"
    (not aiohttp's 1000 and "Cannot write to closing transport"); the
    client gets an ``error`` event, then close 1011."""
    ws, sid = await connect(http, server, "eof")
    await until(ws, "session.created")
    await send(ws, type="response.create", response={"output_modalities": ["text"]})
    done = (await until(ws, "response.done"))[-1]
    assert done["response"]["status"] == "completed"
    events = await rest(ws)
    assert ws.close_code == 1011
    assert [e["type"] for e in events if e["type"] != "rate_limits.updated"] == ["error"], events
    err = events[-1]["error"]
    assert (err["type"], err["code"]) == ("server_error", "upstream_closed")
    assert "1006" in err["message"] and PROVIDER_LOST in err["message"]
    record = await server.session(sid)
    m = record.measurements
    assert (m.closed_by, m.close_code, m.close_reason) == ("upstream", 1006, PROVIDER_LOST), m
    assert m.responses == m.responses_completed == 1
    assert m.provider_errors == 1 and m.provider_error.startswith("upstream_closed: code 1006")
    assert (record.billable, record.reason) == (False, "provider_error")


async def test_provider_abort_mid_session_is_1006(server, http):
    """The provider's socket aborted (``drop``: no close frame, unsent data
    discarded) while the client streams audio: 1006 too, lost or reset."""
    ws, sid = await connect(http, server, "drop:400")
    await until(ws, "session.created")
    await append(ws, bytes(CHUNK * 5))
    events = await rest(ws)
    assert ws.close_code == 1011 and events[-1]["type"] == "error"
    m = (await server.session(sid)).measurements
    assert (m.closed_by, m.close_code) == ("upstream", 1006), m
    assert m.close_reason in (PROVIDER_LOST, PROVIDER_RESET), m.close_reason


async def test_every_response_failed_records_failures_and_no_audio_out(server, http, jfk_pcm):
    """The user speaks 6 s; each ``response.done`` comes back ``failed``
    with a ``server_error`` in ``status_details`` and no audio. The relay
    records the audio in, the responses (none completed), no audio out, and
    an orderly client close; the failed responses make the session a
    provider error, not billable."""
    ws, sid = await connect(http, server, "fail_responses")
    await until(ws, "session.created")
    await send(ws, type="session.update", session={"type": "realtime",
                                                    "audio": {"input": {"turn_detection": None}}})
    await until(ws, "session.updated")
    await append(ws, jfk_pcm[: 24000 * 2 * 6])
    await send(ws, type="input_audio_buffer.commit")
    await until(ws, "input_audio_buffer.committed")
    for _ in range(3):
        await send(ws, type="response.create")
        events = await until(ws, "response.done")
        assert not [e for e in events if e["type"] == "response.output_audio.delta"]
        response = events[-1]["response"]
        assert response["status"] == "failed"
        assert response["status_details"]["error"]["type"] == "server_error"
    await ws.close()
    record = await server.session(sid)
    m = record.measurements
    assert (m.closed_by, m.close_code) == ("client", 1000)
    assert abs(m.audio_in_ms - 6000) <= 20
    assert m.audio_out_ms == 0
    assert (m.responses, m.responses_completed) == (3, 0)
    assert m.event_counts.get("response.done") == 3
    # failed responses are provider errors (issue 20, item 2): not billable
    assert (m.responses_failed, m.provider_errors) == (3, 3)
    assert (record.billable, record.reason) == (False, "provider_error")


async def test_provider_that_stops_answering_pings_is_a_keepalive_timeout(make_server, http):
    """The provider goes silent with its TCP connection open (``stall``):
    the keepalive ends the session, recorded 1006 / upstream / "provider
    keepalive timeout: …"; the client gets an ``error`` event, then 1011."""
    server = await make_server(relay={"ping_interval_s": 0.2})
    ws, sid = await connect(http, server, "stall:100")
    await until(ws, "session.created")
    events = await rest(ws)
    assert ws.close_code == 1011 and events[-1]["type"] == "error"
    assert PROVIDER_TIMEOUT in events[-1]["error"]["message"]
    record = await server.session(sid)
    m = record.measurements
    assert (m.closed_by, m.close_code) == ("upstream", 1006), m
    assert m.close_reason.startswith(PROVIDER_TIMEOUT + ": no pong in"), m.close_reason
    assert (record.billable, record.reason) == (False, "provider_error")


def _msg(kind: aiohttp.WSMsgType, data: Any = None, extra: str | None = None) -> aiohttp.WSMessage:
    return aiohttp.WSMessage(kind, data, extra)


class _Upstream:
    def __init__(self, exc: BaseException | None = None) -> None:
        self._exc = exc

    def exception(self) -> BaseException | None:
        return self._exc


def test_upstream_end_names_each_way_a_provider_connection_ends():
    """``upstream_end``: a close frame's own code and reason; without one,
    1006 and why — lost (EOF, even with aiohttp's failed write of its close
    frame), reset, keepalive timeout — and a protocol error keeps its code."""
    ws: Any = _Upstream()
    WS = aiohttp.WSMsgType
    assert upstream_end(ws, _msg(WS.CLOSE, 4321, "bye")) == (4321, "bye")
    assert upstream_end(ws, _msg(WS.CLOSE, 1000, "")) == (1000, None)
    assert upstream_end(ws, _msg(WS.CLOSED)) == (1006, PROVIDER_LOST)
    written: Any = _Upstream(aiohttp.ClientConnectionResetError("Cannot write to closing transport"))
    assert upstream_end(written, _msg(WS.CLOSED)) == (1006, PROVIDER_LOST)
    assert upstream_end(ws, _msg(WS.ERROR, ConnectionResetError(104, "reset by peer"))) == (1006, PROVIDER_RESET)
    assert upstream_end(ws, _msg(WS.ERROR, aiohttp.ServerTimeoutError("No PONG received after 20 seconds"))) == (
        1006, f"{PROVIDER_TIMEOUT}: No PONG received after 20 seconds")
    code, reason = upstream_end(ws, _msg(WS.ERROR, aiohttp.WebSocketError(1009, "message too big")))
    assert code == 1009 and reason == "provider protocol error: message too big"

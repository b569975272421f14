"""One load-test session over WebSocket (``GET /v1/realtime``), with a bare
aiohttp client: light enough to run hundreds of sessions from one process.

The session follows its :class:`~voxgate.loadtest.plan.SessionPlan` (the
script of each kind is in :mod:`voxgate.loadtest.plan`): connect (asking the
provider for the plan's ``voxgate_fault``), wait for ``session.created``,
stream the plan's audio in real time (one 20 ms ``input_audio_buffer.append``
every 20 ms, each in the format of :func:`format_schedule`), wait for the
echo of every chunk (and the ``error`` event, the failed response or the
provider's drop its kind expects), then close with 1000, or for ``vanish``
abort the TCP connection. A ``text_blip`` session chats in text instead.

The client counts what it sent and received itself: each append's bytes
divided by the rate of the format it was sent in (PCM16 24 kHz 48 bytes per
ms, G.711 8), each delta's by the output format the provider's last
``session.created`` / ``session.updated`` named, and the responses that
completed.

A refused upgrade's JSON body names the refusal (``error.code``); aiohttp's
``ws_connect`` drops that body, so the client session must carry
:func:`refusal_trace`, which keeps it for the session that was refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType

from voxgate.loadtest.audio import FORMAT_CHUNK_BYTES, Clip, tag_of
from voxgate.loadtest.plan import CHUNK_MS, TEXT_RESPONSES, SessionPlan
from voxgate.loadtest.result import ADMITTED, FAILED, REFUSED, SessionResult, error_of
from voxgate.proxy.ws_relay import SESSION_ID_HEADER

__all__ = ["run_ws_session", "refusal_trace", "output_format_of", "format_schedule", "REFUSAL_STATUSES",
           "ECHO_WAIT_S"]

REFUSAL_STATUSES = frozenset({401, 403, 429})
"""HTTP statuses that mean voxgate refused the session."""
ECHO_WAIT_S = 10.0
"""How long to wait, after the last chunk, for the echoes (and error event), in s."""
_APPEND_HEAD = '{"type":"input_audio_buffer.append","audio":"'
_CHUNK_S = CHUNK_MS / 1000
_BYTES_PER_MS = {"audio/pcm": 48.0, "audio/pcmu": 8.0, "audio/pcma": 8.0}  # 24 kHz PCM16, 8 kHz G.711
_REFUSAL_BODY: ContextVar[list[bytes] | None] = ContextVar("refusal_body", default=None)


def refusal_trace() -> aiohttp.TraceConfig:
    """A trace for the load test's ``aiohttp.ClientSession(trace_configs=[…])``:
    it reads the body of a refused upgrade (HTTP 4xx) so that
    :func:`run_ws_session` can report the refusal's error code."""

    async def keep_body(_session: Any, _ctx: Any, params: aiohttp.TraceRequestEndParams) -> None:
        box = _REFUSAL_BODY.get()
        if box is not None and 400 <= params.response.status < 500:
            box.append(await params.response.read())

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(keep_body)
    return trace



async def run_ws_session(
    http: aiohttp.ClientSession,
    realtime_url: str,
    key: str,
    plan: SessionPlan,
    clip: Clip,
    *,
    model: str = "gpt-realtime",
    faults: bool = True,
    connect_timeout_s: float = 10.0,
    clock=time.perf_counter,
) -> SessionResult:
    """Run one session; never raises for network or protocol failures (they
    become ``outcome="failed"``), only for cancellation.

    Args:
        realtime_url: ``ws://host:port/v1/realtime`` (voxgate, or the echo
            provider itself for a baseline).
        faults: send ``voxgate_fault`` (off: plain sessions, e.g. when the
            provider has faults disabled and runs with ``responder="echo"``).
    """
    res = SessionResult(plan.index, plan.kind, "websocket")
    params = {"model": model}
    if faults and plan.fault:
        params["voxgate_fault"] = plan.fault
    t0 = clock()
    res.started_s = t0
    refusal_body: list[bytes] = []
    token = _REFUSAL_BODY.set(refusal_body)
    try:
        ws = await http.ws_connect(
            realtime_url, params=params, headers={"Authorization": f"Bearer {key}"},
            autoping=True, max_msg_size=16 * 1024 * 1024, compress=0,
            timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
        )
    except aiohttp.WSServerHandshakeError as exc:
        res.http_status = exc.status
        res.outcome = REFUSED if exc.status in REFUSAL_STATUSES else FAILED
        res.error_code, message = error_of(refusal_body[0] if refusal_body else None)
        res.error = f"HTTP {exc.status} {res.error_code}: {message}" if res.error_code else \
            " ".join(filter(None, (f"HTTP {exc.status}", message)))
        if exc.headers and exc.headers.get("Retry-After"):
            res.error += f" (Retry-After {exc.headers['Retry-After']} s)"
        res.ended_s = clock()
        return res
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        res.error = f"connect: {type(exc).__name__}: {exc}"[:200]
        res.ended_s = clock()
        return res
    finally:
        _REFUSAL_BODY.reset(token)
    res.session_id = _response_headers(ws).get(SESSION_ID_HEADER)
    try:
        await _drive(ws, res, plan, clip, t0, connect_timeout_s, clock)
    except (TimeoutError, aiohttp.ClientError, OSError, ConnectionError) as exc:
        res.outcome = FAILED
        res.error = res.error or f"{type(exc).__name__}: {exc}"[:200]
    finally:
        if not ws.closed and plan.kind != "vanish":
            try:
                await ws.close()
            except (aiohttp.ClientError, OSError, ConnectionError):
                pass
        res.ended_s = clock()
    return res


_FORMATS = {"audio/pcm": {"type": "audio/pcm", "rate": 24000},
            "audio/pcmu": {"type": "audio/pcmu"}, "audio/pcma": {"type": "audio/pcma"}}
_BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
_SWITCH = {"format_pcmu": "audio/pcmu", "format_pcma": "audio/pcma"}


def output_format_of(session: Any) -> str | None:
    """The output format type (``audio/pcm``, ``audio/pcmu``, ``audio/pcma``)
    a ``session.created`` / ``session.updated`` session object sets (GA
    ``audio.output.format`` or beta ``output_audio_format``), None if none."""
    if not isinstance(session, dict):
        return None
    audio = session.get("audio")
    out = audio.get("output") if isinstance(audio, dict) else None
    fmt = out.get("format") if isinstance(out, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") in FORMAT_CHUNK_BYTES:
        return str(fmt["type"])
    beta = session.get("output_audio_format")
    return _BETA_FORMATS.get(beta) if isinstance(beta, str) else None


def format_schedule(plan: SessionPlan) -> list[tuple[int, str]]:
    """``[(first chunk, format), …]`` of a session's appends: PCM16 24 kHz
    throughout, except ``format_pcmu`` / ``format_pcma``, whose middle third
    is in G.711 (a ``session.update`` before its first chunk and another,
    back to PCM16, before the last third)."""
    fmt = _SWITCH.get(plan.kind)
    if fmt is None or plan.chunks < 3:
        return [(0, "audio/pcm")]
    return [(0, "audio/pcm"), (plan.chunks // 3, fmt), (2 * plan.chunks // 3, "audio/pcm")]


def _format_update(fmt: str) -> str:
    f = _FORMATS[fmt]
    return orjson.dumps({"type": "session.update", "session": {
        "type": "realtime", "audio": {"input": {"format": f}, "output": {"format": f}}}}).decode()


_VAD_OFF = orjson.dumps({"type": "session.update", "session": {
    "type": "realtime", "audio": {"input": {"turn_detection": None}}}}).decode()


class _Waits:
    """What the receiver has seen, for the script to wait on."""

    def __init__(self) -> None:
        self.created = asyncio.Event()
        self.error = asyncio.Event()  # a provider error: error event or a failed response
        self.echoed = asyncio.Event()
        self.done: asyncio.Queue[str] = asyncio.Queue()  # response.done statuses


async def _drive(ws: aiohttp.ClientWebSocketResponse, res: SessionResult, plan: SessionPlan,
                 clip: Clip, t0: float, connect_timeout_s: float, clock) -> None:
    waits = _Waits()
    sent_at = [0.0] * plan.chunks
    state: dict[str, Any] = {"in_bytes": 0, "out_bytes": 0, "done_sending": False, "out_format": "audio/pcm"}

    def check_echoed() -> None:
        if state["done_sending"] and state["out_bytes"] >= state["in_bytes"]:
            waits.echoed.set()

    async def receive() -> None:
        rtt = res.rtt_ms
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                break
            now = clock()
            res.events_received += 1
            event: dict[str, Any] = orjson.loads(msg.data)
            etype = event.get("type")
            if etype == "response.output_audio.delta":
                delta: str = event.get("delta", "")
                n = len(delta) * 3 // 4 - (delta.count("=", len(delta) - 2) if delta else 0)
                state["out_bytes"] += n
                res.audio_out_ms += n / _BYTES_PER_MS[state["out_format"]]
                seq = tag_of(delta)
                if seq is not None and seq < len(sent_at) and sent_at[seq]:
                    rtt.append((now - sent_at[seq]) * 1000.0)
                check_echoed()
            elif etype in ("session.created", "session.updated"):
                fmt = output_format_of(event.get("session"))
                if fmt is not None:
                    state["out_format"] = fmt
                if etype == "session.created":
                    if res.connect_ms is None:
                        res.connect_ms = (now - t0) * 1000.0
                    waits.created.set()
            elif etype == "response.done":
                response = event.get("response") or {}
                status = str(response.get("status"))
                if status == "completed":
                    res.responses_completed += 1
                elif status == "failed":
                    details = response.get("status_details") or {}
                    err = details.get("error") if isinstance(details, dict) else None
                    if not isinstance(err, dict) or err.get("type") != "invalid_request_error":
                        res.provider_error_seen = True
                        waits.error.set()
                waits.done.put_nowait(status)
            elif etype == "error":
                err = event.get("error") or {}
                if isinstance(err, dict) and err.get("type") != "invalid_request_error":
                    res.provider_error_seen = True
                    waits.error.set()

    async def until(what: Awaitable[Any]) -> bool:
        """Wait for ``what`` (at most :data:`ECHO_WAIT_S`); False if the
        connection ended or the time ran out first."""
        task = asyncio.ensure_future(what)
        await asyncio.wait((task, receiver), timeout=ECHO_WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return False
        return True

    receiver = asyncio.create_task(receive())
    try:
        waiter = asyncio.create_task(waits.created.wait())
        await asyncio.wait((waiter, receiver), timeout=connect_timeout_s,
                           return_when=asyncio.FIRST_COMPLETED)
        if not waits.created.is_set():
            waiter.cancel()
            res.error = ("closed before session.created" if receiver.done()
                         else f"no session.created within {connect_timeout_s} s")
            return
        send_str = ws.send_str
        if not plan.echo:
            await send_str(_VAD_OFF)  # no turn detection: responses only when asked
            res.events_sent += 1
        if plan.kind == "text_blip":
            if not await _text_chat(ws, res, clip, waits, until):
                return
            res.outcome = ADMITTED
            return
        start = clock()
        schedule = dict(format_schedule(plan))
        fmt = "audio/pcm"
        for seq in range(plan.chunks):
            delay = start + seq * _CHUNK_S - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -_CHUNK_S:
                res.underruns += 1  # the sender fell more than a chunk behind real time
            if seq in schedule and schedule[seq] != fmt:
                fmt = schedule[seq]
                # the switch, and at once an append in the new format: no
                # waiting for session.updated (voxgate must count it as sent)
                await send_str(_format_update(fmt))
                res.events_sent += 1
            sent_at[seq] = clock()
            await send_str(_APPEND_HEAD + clip.chunk_b64(seq, fmt) + '"}')
            res.events_sent += 1
            size = FORMAT_CHUNK_BYTES[fmt]
            state["in_bytes"] += size
            res.audio_in_ms += size / _BYTES_PER_MS[fmt]
            if receiver.done():
                res.error = "connection closed while streaming"
                return
        state["done_sending"] = True
        if plan.echo:
            check_echoed()
            if not await until(waits.echoed.wait()):
                res.error = f"echo incomplete: {state['out_bytes']} of {state['in_bytes']} bytes back"
                return
        if plan.kind == "failed_responses":
            await send_str('{"type":"response.create"}')
            res.events_sent += 1
            if not await until(waits.done.get()) or not waits.error.is_set():
                res.error = "no failed response.done from the provider"
                return
        if plan.kind in ("provider_error", "late_error") and not await until(waits.error.wait()):
            res.error = "no error event from the provider"
            return
        if plan.kind == "provider_eof":
            await send_str('{"type":"input_audio_buffer.commit"}')
            res.events_sent += 1
            await asyncio.wait((receiver,), timeout=ECHO_WAIT_S)
            if not receiver.done():
                res.error = "the provider's connection did not end"
                return
        if plan.kind == "vanish":
            transport = ws_transport(ws)
            if transport is None:
                res.error = "cannot reach the TCP transport to abort it"
                return
            transport.abort()  # vanish: no close frame, no FIN handshake
        res.outcome = ADMITTED
    finally:
        if not receiver.done():
            if plan.kind != "vanish" and res.outcome == ADMITTED:
                # Close politely, then let the receiver see the close.
                try:
                    await ws.close()
                except (aiohttp.ClientError, OSError, ConnectionError):
                    pass
            receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
        res.close_code = ws.close_code


async def _text_chat(ws: aiohttp.ClientWebSocketResponse, res: SessionResult, clip: Clip, waits: _Waits,
                     until: Callable[[Awaitable[Any]], Awaitable[bool]]) -> bool:
    """A ``text_blip`` session: :data:`TEXT_RESPONSES` rounds of a user text
    item and a text-only response, each waited for, and one 20 ms append
    after the first. False (with ``res.error``) if a response did not
    complete."""
    for i in range(TEXT_RESPONSES):
        item = {"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": f"Hello, this is message {i + 1}."}]}}
        await ws.send_str(orjson.dumps(item).decode())
        await ws.send_str('{"type":"response.create","response":{"output_modalities":["text"]}}')
        res.events_sent += 2
        got = await until(waits.done.get())
        if not got:
            res.error = f"no response.done for text response {i + 1}"
            return False
        if i == 0:  # the blip: one 20 ms append in a text chat
            await ws.send_str(_APPEND_HEAD + clip.chunk_b64(0) + '"}')
            res.events_sent += 1
            res.audio_in_ms += CHUNK_MS
    if res.responses_completed != TEXT_RESPONSES:
        res.error = f"{res.responses_completed} of {TEXT_RESPONSES} text responses completed"
        return False
    return True


def _response_headers(ws: aiohttp.ClientWebSocketResponse) -> Any:
    # aiohttp keeps the upgrade response private; its headers carry the id.
    response = getattr(ws, "_response", None)
    return response.headers if response is not None else {}


def ws_transport(ws: aiohttp.ClientWebSocketResponse) -> asyncio.Transport | None:
    """The socket's transport (to abort it without a close frame, ``vanish``)."""
    writer = getattr(ws, "_writer", None)
    transport = getattr(writer, "transport", None)
    if transport is None:
        response = getattr(ws, "_response", None)
        conn = getattr(response, "connection", None)
        transport = getattr(conn, "transport", None)
    return transport

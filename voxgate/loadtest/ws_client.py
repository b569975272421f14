"""One load-test session over WebSocket (``GET /v1/realtime``), with a bare
aiohttp client: light enough to run hundreds of sessions from one process.

The session follows its :class:`~voxgate.loadtest.plan.SessionPlan`: connect
(asking the provider for the plan's ``voxgate_fault``, which always includes
``echo``), wait for ``session.created``, stream the plan's audio in real
time (one 20 ms ``input_audio_buffer.append`` every 20 ms), wait for the
echo of every chunk (and, for ``provider_error``, for the ``error`` event),
then close with 1000, or for ``vanish`` abort the TCP connection.

A refused upgrade's JSON body names the refusal (``error.code``); aiohttp's
``ws_connect`` drops that body, so the client session must carry
:func:`refusal_trace`, which keeps it for the session that was refused.
"""

from __future__ import annotations

import asyncio
import time
from contextvars import ContextVar
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType

from voxgate.loadtest.audio import Clip, tag_of
from voxgate.loadtest.plan import CHUNK_MS, SessionPlan
from voxgate.loadtest.result import ADMITTED, FAILED, REFUSED, SessionResult, error_of
from voxgate.proxy.ws_relay import SESSION_ID_HEADER

__all__ = ["run_ws_session", "refusal_trace", "REFUSAL_STATUSES", "ECHO_WAIT_S"]

REFUSAL_STATUSES = frozenset({401, 403, 429})
"""HTTP statuses that mean voxgate refused the session."""
ECHO_WAIT_S = 10.0
"""How long to wait, after the last chunk, for the echoes (and error event), in s."""
_APPEND_HEAD = '{"type":"input_audio_buffer.append","audio":"'
_CHUNK_S = CHUNK_MS / 1000
_BYTES_PER_MS = 48  # 24 kHz PCM16
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
    if faults:
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


async def _drive(ws: aiohttp.ClientWebSocketResponse, res: SessionResult, plan: SessionPlan,
                 clip: Clip, t0: float, connect_timeout_s: float, clock) -> None:
    created = asyncio.Event()
    error_seen = asyncio.Event()
    echoed = asyncio.Event()
    sent_at = [0.0] * plan.chunks
    state = {"in_bytes": 0, "out_bytes": 0, "done_sending": False}

    def check_echoed() -> None:
        if state["done_sending"] and state["out_bytes"] >= state["in_bytes"]:
            echoed.set()

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
                res.audio_out_ms += n / _BYTES_PER_MS
                seq = tag_of(delta)
                if seq is not None and seq < len(sent_at) and sent_at[seq]:
                    rtt.append((now - sent_at[seq]) * 1000.0)
                check_echoed()
            elif etype == "session.created":
                if res.connect_ms is None:
                    res.connect_ms = (now - t0) * 1000.0
                created.set()
            elif etype == "error":
                err = event.get("error") or {}
                if isinstance(err, dict) and err.get("type") != "invalid_request_error":
                    res.provider_error_seen = True
                    error_seen.set()

    receiver = asyncio.create_task(receive())
    try:
        waiter = asyncio.create_task(created.wait())
        await asyncio.wait((waiter, receiver), timeout=connect_timeout_s,
                           return_when=asyncio.FIRST_COMPLETED)
        if not created.is_set():
            waiter.cancel()
            res.error = ("closed before session.created" if receiver.done()
                         else f"no session.created within {connect_timeout_s} s")
            return
        start = clock()
        send_str = ws.send_str
        for seq in range(plan.chunks):
            delay = start + seq * _CHUNK_S - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -_CHUNK_S:
                res.underruns += 1  # the sender fell more than a chunk behind real time
            sent_at[seq] = clock()
            await send_str(_APPEND_HEAD + clip.chunk_b64(seq) + '"}')
            res.events_sent += 1
            state["in_bytes"] += 960
            res.audio_in_ms += CHUNK_MS
            if receiver.done():
                res.error = "connection closed while streaming"
                return
        state["done_sending"] = True
        check_echoed()
        waits = [asyncio.create_task(echoed.wait())]
        if plan.kind == "provider_error":
            waits.append(asyncio.create_task(error_seen.wait()))
        all_waits = asyncio.ensure_future(asyncio.gather(*waits))
        await asyncio.wait((all_waits, receiver), timeout=ECHO_WAIT_S,
                           return_when=asyncio.FIRST_COMPLETED)
        all_waits.cancel()
        await asyncio.gather(all_waits, return_exceptions=True)
        if not echoed.is_set():
            res.error = (f"echo incomplete: {state['out_bytes']} of {state['in_bytes']} bytes back")
            return
        if plan.kind == "provider_error" and not error_seen.is_set():
            res.error = "no error event from the provider"
            return
        if plan.kind == "vanish":
            transport = _transport(ws)
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


def _response_headers(ws: aiohttp.ClientWebSocketResponse) -> Any:
    # aiohttp keeps the upgrade response private; its headers carry the id.
    response = getattr(ws, "_response", None)
    return response.headers if response is not None else {}


def _transport(ws: aiohttp.ClientWebSocketResponse) -> asyncio.Transport | None:
    writer = getattr(ws, "_writer", None)
    transport = getattr(writer, "transport", None)
    if transport is None:
        response = getattr(ws, "_response", None)
        conn = getattr(response, "connection", None)
        transport = getattr(conn, "transport", None)
    return transport

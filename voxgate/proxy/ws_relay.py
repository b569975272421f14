"""The WebSocket relay: ``GET /v1/realtime?model=…`` (WebSocket upgrade).

A thin shell: authenticate and admit before the upgrade (refusals are HTTP
401/403/429 with an OpenAI-style JSON body), open the upstream WebSocket with
the server's own key while the client's upgrade completes, then relay frames
both ways unchanged, feeding the session meter each event as
``voxgate.metering.events.classify`` types it. Three exceptions, shared with
the WebRTC bridge (``voxgate.proxy.events``): an ephemeral key's session
config is applied before the client's first event, so ``session.created``
carries it (``KeySession``); the provider's ``rate_limits.updated`` is
dropped, and the customer's own (its plan's figures) follows
``session.created`` and each ``response.done``. Client events that cannot be relayed (malformed JSON, unknown
type, invalid base64 audio, too large) are answered with an ``error`` event
and the session goes on, as OpenAI's server does
(https://platform.openai.com/docs/api-reference/realtime-server-events/error).

Closes propagate: a client close closes the upstream with the same code (if
sendable) and vice versa; an abnormal upstream close reaches the client as
1011 with an ``error`` event first. voxgate itself ends a session on idle
timeout and maximum duration (1000, with the reason), and on shutdown (1001).
The session is finished (verdict written, concurrency slot freed) before the
client's close handshake completes.

Keepalive: one watchdog per session pings a side that has been quiet for
``relay.ping_interval_s`` and ends the session (1006 on that side) when such a
ping stays unanswered for another interval; busy sessions send no pings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType, web

from voxgate.errors import (
    MalformedEvent,
    NotFound,
    ServiceUnavailable,
    UpstreamError,
    VoxgateError,
    error_event,
)
from voxgate.metering.events import classify
from voxgate.metering.meter import CLIENT, SERVER, UPSTREAM
from voxgate.proxy.auth import authenticate, session_model
from voxgate.proxy.events import (
    RATE_LIMITS,
    KeySession,
    customer_rate_limits,
    parse_client_event,
    pin_session_model,
    utf8_len,
)
from voxgate.proxy.gateway import ActiveSession, Gateway, monotonic_ms
from voxgate.proxy.keys import CONNECTOR, GATEWAY
from voxgate.proxy.upstream import UpstreamConnector, UpstreamRefused

__all__ = ["realtime_websocket", "SESSION_ID_HEADER", "CALL_ATTACH"]

log = logging.getLogger("voxgate.relay")

SESSION_ID_HEADER = "X-Voxgate-Session-Id"
# ``GET /v1/realtime?call_id=…``: the handler that attaches a socket to a
# WebRTC call (set by ``voxgate.proxy.webrtc.setup``).
CALL_ATTACH = web.AppKey("call_attach", object)
# After these upstream events the client gets the customer's rate_limits.updated.
_RATE_LIMITS_AFTER = frozenset({"session.created", "response.done"})
# RFC 6455 §7.4: codes an endpoint may send in a Close frame.
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def sendable(code: int | None, fallback: int = 1011) -> int:
    """A close code that may go on the wire (1005/1006/1015 may not)."""
    if code is not None and (code in _SENDABLE or 3000 <= code <= 4999):
        return code
    return fallback


async def realtime_websocket(request: web.Request) -> web.StreamResponse:
    """Handle ``GET /v1/realtime``.

    Raises (rendered as JSON by the error middleware, before any upgrade):
        AuthenticationError, EphemeralKeyExpired, PermissionDenied (401/403),
        RateLimited, QuotaExceeded, ConcurrencyLimited (429),
        InvalidRequest (400: not a WebSocket upgrade).
    """
    gw: Gateway = request.app[GATEWAY]
    connector: UpstreamConnector = request.app[CONNECTOR]
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise MalformedEvent(
            "GET /v1/realtime expects a WebSocket upgrade", code="websocket_upgrade_required"
        )
    if "call_id" in request.query:
        attach = request.app.get(CALL_ATTACH)
        if attach is None:
            raise NotFound("WebRTC calls are not served here", param="call_id")
        return await attach(request)  # type: ignore[operator]
    principal = await authenticate(request, gw.store, allow_ephemeral=True)
    ek_session: dict[str, Any] = principal.ephemeral.session if principal.ephemeral else {}
    upstream = gw.settings.upstream
    model = session_model(principal, request.query.get("model") or None, upstream.default_model,
                          upstream.allowed_models)
    active = await gw.admit(principal, "websocket", model)
    try:
        relay = Relay(gw, connector, active, request, model, ek_session)
        return await relay.run()
    finally:
        await gw.finish(active)


class Relay:
    """One relayed WebSocket session."""

    def __init__(
        self,
        gw: Gateway,
        connector: UpstreamConnector,
        active: ActiveSession,
        request: web.Request,
        model: str,
        ek_session: dict[str, Any],
    ) -> None:
        self.gw = gw
        self.connector = connector
        self.active = active
        self.meter = active.meter
        self.request = request
        self.model = model
        session = {"type": "realtime", **ek_session}
        session.pop("model", None)
        self.key_session = KeySession(session if ek_session else None)
        relay = gw.settings.relay
        self.max_bytes = relay.max_message_bytes
        self.idle_timeout_s = relay.idle_timeout_s
        self.max_session_s = relay.max_session_s
        self.ping_s = relay.ping_interval_s or None
        self.last_activity = time.monotonic()
        # When each side last sent anything (events, pings, pongs): keepalive
        # pings go only to a side that has been quiet for ping_s.
        self.client_rx = self.upstream_rx = self.last_activity
        self._ping_sent: dict[str, float] = {}
        self.client: web.WebSocketResponse | None = None
        self.upstream: aiohttp.ClientWebSocketResponse | None = None
        self._closing_by: str | None = None
        self.upstream_close_code: int | None = None
        self.client_close_code: int | None = None

    async def run(self) -> web.StreamResponse:
        upstream_task = asyncio.create_task(
            self.connector.connect(self.model, dict(self.request.query), keepalive=False)
        )
        client = web.WebSocketResponse(
            protocols=("realtime",),
            # Keepalive is the watchdog's (see _keepalive): aiohttp's heartbeat
            # would reschedule a timer for every message received.
            heartbeat=None,
            autoping=False,
            timeout=5.0,
            # Accept up to twice the limit so an oversized event can be
            # answered with an error event instead of a 1009 close.
            max_msg_size=self.max_bytes * 2,
            compress=False,
            autoclose=False,  # the close is answered once the session is finished
        )
        client.headers[SESSION_ID_HEADER] = self.active.record.id
        self.client = client
        self.active.close = self._close_from_outside
        try:
            await client.prepare(self.request)
        except BaseException:
            upstream_task.cancel()
            raise
        self.meter.accepted(monotonic_ms())
        try:
            self.upstream = await upstream_task
        except UpstreamRefused as exc:
            self.meter.upstream_refused(monotonic_ms(), exc.message)
            await self._fail_client(exc, 1008)
            return client
        except UpstreamError as exc:
            log.warning("session %s: %s", self.active.record.id, exc.message)
            self.meter.upstream_connect_failed(monotonic_ms(), exc.message)
            await self._fail_client(exc, 1011)
            return client
        except asyncio.CancelledError:
            upstream_task.cancel()
            raise
        try:
            await self._relay()
        finally:
            if not self.upstream.closed:
                await self.upstream.close()
        return client

    async def _relay(self) -> None:
        assert self.client is not None and self.upstream is not None
        if self.key_session.update is not None:
            await self.upstream.send_str(self.key_session.update)
        c2u = asyncio.create_task(self._client_to_upstream(), name="client->upstream")
        u2c = asyncio.create_task(self._upstream_to_client(), name="upstream->client")
        started = time.monotonic()
        next_ping = started + (self.ping_s or float("inf"))
        try:
            while True:
                now = time.monotonic()
                deadline = min(started + self.max_session_s,
                               self.last_activity + self.idle_timeout_s, next_ping)
                done, _ = await asyncio.wait(
                    (c2u, u2c), timeout=max(0.05, deadline - now),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if done:
                    break
                now = time.monotonic()
                if now >= started + self.max_session_s:
                    await self._server_close(1000, "maximum session duration reached")
                    break
                if now >= self.last_activity + self.idle_timeout_s:
                    await self._server_close(1000, "idle timeout")
                    break
                if now >= next_ping:
                    assert self.ping_s is not None
                    next_ping = now + self.ping_s
                    if not await self._keepalive(now):
                        break
        finally:
            for task in (c2u, u2c):
                if not task.done():
                    task.cancel()
            await asyncio.gather(c2u, u2c, return_exceptions=True)
            await self._close_both()

    async def _keepalive(self, now: float) -> bool:
        """Ping each side that has sent nothing for ``ping_s``; a side that has
        sent nothing, not even a pong, since a ping at least ``ping_s`` old is
        gone (RFC 6455 §5.5.2: a Ping may serve to verify that the peer is
        still responsive). Returns False when a side is gone (the session
        then ends with close code 1006 on that side)."""
        assert self.client is not None and self.upstream is not None and self.ping_s
        for side, ws, rx in ((CLIENT, self.client, self.client_rx),
                             (UPSTREAM, self.upstream, self.upstream_rx)):
            sent = self._ping_sent.get(side)
            if sent is not None and rx < sent:  # a ping is unanswered
                if now - sent >= self.ping_s:
                    self._end(side, 1006, f"keepalive timeout: no pong in {now - sent:.1f} s")
                    return False
            elif now - rx >= self.ping_s:
                self._ping_sent[side] = now
                try:
                    await ws.ping()
                except (ConnectionError, RuntimeError):
                    pass  # the reader sees the connection end
        return True

    async def _client_to_upstream(self) -> None:
        client, upstream, meter = self.client, self.upstream, self.meter
        assert client is not None and upstream is not None
        max_bytes = self.max_bytes
        code: int | None = None
        while True:
            msg = await client.receive()
            self.client_rx = now = time.monotonic()
            if msg.type is WSMsgType.TEXT:
                data: str = msg.data
                n = utf8_len(data)
                self.last_activity = now
                try:
                    event, etype = parse_client_event(data, max_bytes)
                except VoxgateError as err:
                    await self._reject(err, n)
                    continue
                if etype == "session.update" and (
                        pinned := pin_session_model(event, self.model)) is not None:
                    data = orjson.dumps(pinned).decode()
                await upstream.send_str(data)
                meter.record(classify(CLIENT, etype, n, event))
            elif msg.type is WSMsgType.PING:
                await client.pong(msg.data)
            elif msg.type is WSMsgType.PONG:
                pass
            elif msg.type is WSMsgType.BINARY:
                self.last_activity = now
                await self._reject(MalformedEvent(
                    "binary messages are not supported; send JSON text events",
                    code="invalid_event"), len(msg.data))
            else:  # CLOSE (its code is msg.data), CLOSING, CLOSED, ERROR
                code = msg.data if msg.type is WSMsgType.CLOSE else client.close_code
                break
        self.client_close_code = code
        self._end(CLIENT, code, None)

    async def _upstream_to_client(self) -> None:
        client, upstream, meter = self.client, self.upstream, self.meter
        assert client is not None and upstream is not None
        key_session = self.key_session
        code: int | None = None
        reason: str | None = None
        while True:
            msg = await upstream.receive()
            self.upstream_rx = now = time.monotonic()
            if msg.type is WSMsgType.TEXT:
                data: str = msg.data
                self.last_activity = now
                event: dict[str, Any] | None
                try:
                    event = orjson.loads(data)
                    etype = event["type"]  # type: ignore[index]
                except (orjson.JSONDecodeError, TypeError, KeyError):
                    event, etype = None, None
                if not isinstance(etype, str):  # not ours to judge; relayed as is
                    event, etype = None, "unknown"
                if key_session.pending:
                    for held in key_session.upstream(etype, event, data):
                        await self._deliver(*held)
                else:
                    await self._deliver(etype, event, data)
            elif msg.type is WSMsgType.PING:
                await upstream.pong(msg.data)
            elif msg.type is WSMsgType.PONG:
                pass
            elif msg.type is WSMsgType.BINARY:
                self.last_activity = now
                meter.record(classify(UPSTREAM, "binary", len(msg.data)))
                await client.send_bytes(msg.data)
            elif msg.type is WSMsgType.CLOSE:
                # The code the provider sent, even if replying to it fails.
                code, reason = msg.data, msg.extra or None
                break
            else:  # CLOSING, CLOSED, ERROR: the connection ended without a close frame
                code = upstream.close_code
                exc = upstream.exception()
                if exc is not None:
                    reason = f"{type(exc).__name__}: {exc}"
                break
        self.upstream_close_code = code
        self._end(UPSTREAM, code, reason)

    async def _deliver(self, etype: str, event: dict[str, Any] | None, data: str) -> None:
        """One upstream event to the client, metered. The provider's
        ``rate_limits.updated`` (the operator's own limits) is dropped; after
        ``session.created`` and each ``response.done`` the client gets its
        plan's instead."""
        assert self.client is not None
        if etype == RATE_LIMITS:
            return
        self.meter.record(classify(UPSTREAM, etype, utf8_len(data), event),
                          monotonic_ms() if etype == "session.created" else 0.0)
        await self.client.send_str(data)
        if etype in _RATE_LIMITS_AFTER:
            limits = await customer_rate_limits(self.gw, self.active)
            if limits is not None:
                await self.client.send_str(limits)

    def _end(self, by: str, code: int | None, reason: str | None) -> None:
        if self._closing_by is None:
            self._closing_by = by
            self.meter.closed(by, code, reason, monotonic_ms())

    async def _close_both(self) -> None:
        """Close whichever side is still open, with a meaningful code. The
        session is finished (verdict written, concurrency slot freed) before
        the client's close completes, so a client that reconnects at once is
        never refused for its own previous session."""
        client, upstream = self.client, self.upstream
        assert client is not None and upstream is not None
        by = self._closing_by
        if not upstream.closed:
            if by == CLIENT:
                await upstream.close(code=sendable(self.client_close_code, 1000),
                                     message=b"client closed")
            else:
                await upstream.close()
        await self.gw.finish(self.active)
        if client.closed:
            return
        if by == CLIENT:  # answer the client's close frame with its own code
            await client.close(code=sendable(self.client_close_code, 1000))
        elif by == UPSTREAM:
            code = self.upstream_close_code
            if code in (1000, 1001):
                await client.close(code=code, message=b"upstream closed the session")
            else:
                err = UpstreamError(
                    f"the voice provider closed the connection (code {code})",
                    code="upstream_closed")
                try:
                    await client.send_str(error_event(err))
                except (ConnectionError, RuntimeError):
                    pass
                await client.close(code=sendable(code, 1011), message=b"upstream connection lost")
        else:
            await client.close()

    async def _server_close(self, code: int, reason: str) -> None:
        self._end(SERVER, code, reason)
        assert self.client is not None and self.upstream is not None
        await self.client.close(code=code, message=reason.encode())
        await self.upstream.close(code=code, message=reason.encode())

    async def _close_from_outside(self, code: int, reason: str) -> None:
        if self.client is None or self.upstream is None:
            return
        if code == 1001:  # shutdown: an error event says why before the close frame
            try:
                await self.client.send_str(error_event(ServiceUnavailable(reason)))
            except (ConnectionError, RuntimeError):
                pass
        await self._server_close(code, reason)

    async def _reject(self, err: VoxgateError, nbytes: int) -> None:
        assert self.client is not None
        self.meter.client_rejected(nbytes)
        await self.client.send_str(error_event(err))

    async def _fail_client(self, err: VoxgateError, code: int) -> None:
        """The upstream could not be opened: tell the client, close it."""
        client = self.client
        assert client is not None
        self.meter.closed(SERVER, code, err.message, monotonic_ms())
        try:
            await client.send_str(error_event(err))
        except (ConnectionError, RuntimeError):
            pass
        await client.close(code=code, message=err.message[:120].encode())


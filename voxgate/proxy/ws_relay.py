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
1011 with an ``error`` event first. A provider connection that ends
without a close frame (EOF, reset) is recorded as what it is: close code
1006, ``closed_by: "upstream"``, reason "provider connection lost" (or
"provider connection reset", "provider keepalive timeout: …";
``voxgate.proxy.upstream.upstream_end``). voxgate itself ends a session on idle
timeout and maximum duration (1000, with the reason), and on shutdown (1001).
The session is finished (verdict written, concurrency slot freed) before the
client's close handshake completes — unless that takes longer than 0.6 s
(the database or Redis slow or down): the close is answered then, and the
record lands when it can.

No close waits on a dependency: when one side ends, the other socket is
closed and the relay tasks cancelled, then waited for at most
``TASKS_STOP_S`` (a task that swallowed its cancellation — redis-py can —
is left to end on its closed socket); the customer's ``rate_limits.updated``
is read within ``RATE_LIMITS_WAIT_S`` (else skipped), the upstream's and the
client's close handshakes and the wait for the record are bounded too, so a
close is answered and recorded within a second whatever Redis, the database
or the provider do (the client is read from its upgrade on: a close while
the provider's handshake is under way ends the session at once).

Fencing: a frame received once the session's lease is no longer provably
valid (``ActiveSession.valid_until``) is not relayed; the gateway fences the
session (``error`` event ``lease_expired``, then close 1011).

Keepalive: one watchdog per session pings a side that has been quiet for
``relay.ping_interval_s`` and ends the session (1006 on that side) when such a
ping stays unanswered for another interval; busy sessions send no pings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

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
from voxgate.proxy.upstream import (
    PROVIDER_TIMEOUT,
    UpstreamConnector,
    UpstreamRefused,
    upstream_end,
)

__all__ = ["realtime_websocket", "SESSION_ID_HEADER", "CALL_ATTACH", "within", "bounded",
           "rate_limits_within", "stop_tasks", "closing_error", "LEASE_EXPIRED",
           "RATE_LIMITS_WAIT_S", "TASKS_STOP_S", "close_unused_upstream", "close_reason",
           "upstream_closed_error"]

log = logging.getLogger("voxgate.relay")

SESSION_ID_HEADER = "X-Voxgate-Session-Id"
# ``GET /v1/realtime?call_id=…``: the handler that attaches a socket to a
# WebRTC call (set by ``voxgate.proxy.webrtc.setup``).
CALL_ATTACH = web.AppKey("call_attach", object)
# After these upstream events the client gets the customer's rate_limits.updated.
_RATE_LIMITS_AFTER = frozenset({"session.created", "response.done"})
# Bounds on what a close awaits (s); together under the one second in which a
# close is answered and recorded.
RATE_LIMITS_WAIT_S = 1.0
"""Longest wait for the customer's ``rate_limits.updated`` figures (Redis,
the database); past it the event is skipped."""
TASKS_STOP_S = 0.1
"""How long a relay task gets to end once cancelled and its socket closed."""
_PEER_CLOSE_S = 0.25  # a peer's answer to voxgate's close frame; then the TCP connection is dropped
_RECORD_WAIT_S = 0.6  # the session's record, before the client's close is answered anyway
LEASE_EXPIRED = "lease_expired"
"""``error.code`` of the event sent before a fenced session's 1011 close."""
T = TypeVar("T")
# RFC 6455 §7.4: codes an endpoint may send in a Close frame.
_DATA_FRAMES = frozenset({WSMsgType.TEXT, WSMsgType.BINARY})  # what a relay forwards
_OPEN_FRAMES = _DATA_FRAMES | {WSMsgType.PING, WSMsgType.PONG}  # frames of a socket still open
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def sendable(code: int | None, fallback: int = 1011) -> int:
    """A close code that may go on the wire (1005/1006/1015 may not)."""
    if code is not None and (code in _SENDABLE or 3000 <= code <= 4999):
        return code
    return fallback


def close_reason(text: str) -> bytes:
    """``text`` as a close frame's reason: UTF-8, cut to the 123 bytes a
    close frame has room for (RFC 6455 §5.5), on a character boundary."""
    return text.encode()[:123].decode("utf-8", "ignore").encode()


def close_unused_upstream(task: asyncio.Future[aiohttp.ClientWebSocketResponse]) -> None:
    """Done callback of an upstream connect given up on: a socket it
    opened all the same is closed."""
    if not task.cancelled() and task.exception() is None:
        closing = asyncio.ensure_future(task.result().close())
        closing.add_done_callback(_consume)


def _consume(task: asyncio.Future[Any]) -> None:
    """Done callback of a task nobody awaits any more: its outcome is read
    (no "exception was never retrieved"), an unexpected failure logged."""
    if not task.cancelled():
        exc = task.exception()
        if exc is not None and not isinstance(exc, (ConnectionError, RuntimeError)):
            log.warning("abandoned task %s failed: %s: %s", task.get_name() if isinstance(
                task, asyncio.Task) else task, type(exc).__name__, exc)


async def within(aw: Awaitable[T], timeout_s: float) -> tuple[bool, T | None]:
    """``aw`` run as a task of its own, waited for at most ``timeout_s``
    seconds → (True, its result), or (False, None) when it took longer: it
    is then cancelled and left to end (nothing waits on a dependency that
    swallows its cancellation). Cancelling the caller cancels ``aw`` too and
    is always honoured. Raises what ``aw`` raised."""
    task = asyncio.ensure_future(aw)
    try:
        await asyncio.wait((task,), timeout=timeout_s)
    finally:
        if not task.done():
            task.cancel()
            task.add_done_callback(_consume)
    if not task.done():
        return False, None
    return True, task.result()


async def bounded(aw: Awaitable[T], timeout_s: float) -> tuple[bool, T | None]:
    """``within`` for an awaitable that honours cancellation (aiohttp's
    sends and closes, the gateway's shielded ``finish``): awaited in the
    caller's task under ``asyncio.timeout``, no task of its own (the close
    path of every session runs several)."""
    try:
        async with asyncio.timeout(timeout_s):
            return True, await aw
    except TimeoutError:
        return False, None


async def rate_limits_within(gw: Gateway, active: ActiveSession) -> str | None:
    """The customer's ``rate_limits.updated`` (``customer_rate_limits``) as
    JSON text, or None when it cannot be had within ``RATE_LIMITS_WAIT_S``
    (logged; the session goes on without it). The first (after
    ``session.created``) needs no call: admission's figures are at hand."""
    if active.admitted is not None:
        return await customer_rate_limits(gw, active)
    done, limits = await within(customer_rate_limits(gw, active), RATE_LIMITS_WAIT_S)
    if not done:
        log.warning("session %s: no rate_limits.updated: no figures within %g s",
                    active.record.id, RATE_LIMITS_WAIT_S)
    return limits


async def stop_tasks(tasks: Iterable[asyncio.Task], timeout_s: float = TASKS_STOP_S) -> None:
    """Cancel ``tasks`` and wait at most ``timeout_s`` seconds for them to
    end; one still running after that (it swallowed its cancellation) is
    logged and left to end on its own. Their exceptions are read, never
    raised."""
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=timeout_s)
    for task in tasks:
        if task.done():
            _consume(task)
        else:
            log.warning("task %s ignored its cancellation; left to end", task.get_name())
            task.add_done_callback(_consume)


def closing_error(code: int, reason: str) -> VoxgateError | None:
    """The ``error`` event's error sent before voxgate closes a session with
    ``code`` (None for 1000): 1001 (shutdown) ``service_unavailable``, 1011
    (fenced: the lease is no longer valid) ``lease_expired``, any other
    ``session_closed``; all ``server_error``."""
    if code == 1000:
        return None
    if code == 1001:
        return ServiceUnavailable(reason)
    return VoxgateError(reason, code=LEASE_EXPIRED if code == 1011 else "session_closed")


def upstream_closed_error(code: int | None, reason: str | None) -> UpstreamError:
    """The ``error`` event's error sent to the client before the 1011 close
    that follows an abnormal upstream close."""
    why = f": {reason}" if reason else ""
    return UpstreamError(f"the voice provider closed the connection (code {code}){why}",
                         code="upstream_closed")


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
        self.upstream_close_reason: str | None = None
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
        self.active.transport_open = self._transport_open
        try:
            await client.prepare(self.request)
        except BaseException:
            upstream_task.cancel()
            raise
        self.meter.accepted(monotonic_ms())
        # The client is read while the upstream connects: a close then ends
        # the session at once instead of after the provider's handshake.
        first: asyncio.Task[aiohttp.WSMessage] = asyncio.ensure_future(client.receive())
        try:
            await asyncio.wait((upstream_task, first), return_when=asyncio.FIRST_COMPLETED)
            if not upstream_task.done() and first.result().type not in _OPEN_FRAMES:
                upstream_task.cancel()
                upstream_task.add_done_callback(close_unused_upstream)
                await self._client_left_early(first.result())
                return client
            self.upstream = await upstream_task
        except UpstreamRefused as exc:
            first.cancel()
            self.meter.upstream_refused(monotonic_ms(), exc.message)
            await self._fail_client(exc, 1008)
            return client
        except UpstreamError as exc:
            first.cancel()
            log.warning("session %s: %s", self.active.record.id, exc.message)
            self.meter.upstream_connect_failed(monotonic_ms(), exc.message)
            await self._fail_client(exc, 1011)
            return client
        except asyncio.CancelledError:
            upstream_task.cancel()
            upstream_task.add_done_callback(close_unused_upstream)
            first.cancel()
            raise
        try:
            await self._relay(first)
        finally:
            if not self.upstream.closed:
                await bounded(self.upstream.close(), _PEER_CLOSE_S)
        return client

    def _transport_open(self) -> bool:
        """Whether the client's or the upstream's socket is still open."""
        client, upstream = self.client, self.upstream
        return ((client is not None and not client.closed)
                or (upstream is not None and not upstream.closed))

    async def _client_left_early(self, msg: aiohttp.WSMessage) -> None:
        """The client closed (or its connection ended) before the upstream
        was open: record the close, finish the session, answer the close."""
        client = self.client
        assert client is not None
        code = msg.data if msg.type is WSMsgType.CLOSE else client.close_code
        self.client_close_code = code
        self._end(CLIENT, code, None)
        await bounded(self.gw.finish(self.active), _RECORD_WAIT_S)
        if not client.closed:
            await self._close_client(sendable(code, 1000))

    async def _relay(self, first: asyncio.Future[aiohttp.WSMessage]) -> None:
        """Relay both ways until one side ends; ``first`` is the client's
        first frame (perhaps still to come)."""
        assert self.client is not None and self.upstream is not None
        if self.key_session.update is not None:
            await self.upstream.send_str(self.key_session.update)
        c2u = asyncio.create_task(self._client_to_upstream(first), name="client->upstream")
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
            # Neither task is trusted to honour its cancellation: the
            # upstream is closed first (a receive() on it returns), the
            # tasks get TASKS_STOP_S, and the session is finished and the
            # client answered whatever they do.
            for task in (c2u, u2c):
                task.cancel()
            await self._close_upstream()
            await stop_tasks((c2u, u2c))
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
                    reason = f"keepalive timeout: no pong in {now - sent:.1f} s"
                    if side == UPSTREAM:
                        reason = f"{PROVIDER_TIMEOUT}: no pong in {now - sent:.1f} s"
                        self.upstream_close_code, self.upstream_close_reason = 1006, reason
                    self._end(side, 1006, reason)
                    return False
            elif now - rx >= self.ping_s:
                self._ping_sent[side] = now
                try:
                    await ws.ping()
                except (ConnectionError, RuntimeError):
                    pass  # the reader sees the connection end
        return True

    async def _client_to_upstream(self, first: asyncio.Future[aiohttp.WSMessage] | None) -> None:
        client, upstream, meter = self.client, self.upstream, self.meter
        assert client is not None and upstream is not None
        max_bytes = self.max_bytes
        code: int | None = None
        active = self.active
        while True:
            if first is not None:
                msg, first = await first, None
            else:
                msg = await client.receive()
            self.client_rx = now = time.monotonic()
            if now >= active.valid_until and msg.type in _DATA_FRAMES:
                await self._fence()
                return
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
        active = self.active
        while True:
            msg = await upstream.receive()
            self.upstream_rx = now = time.monotonic()
            if now >= active.valid_until and msg.type in _DATA_FRAMES:
                await self._fence()
                return
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
            else:
                # CLOSE: the code the provider sent, even if replying to it
                # fails; CLOSING, CLOSED, ERROR: the connection ended without
                # a close frame (1006, "provider connection lost", …)
                code, reason = upstream_end(upstream, msg)
                break
        self.upstream_close_code, self.upstream_close_reason = code, reason
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
            limits = await rate_limits_within(self.gw, self.active)
            if limits is not None:
                await self.client.send_str(limits)

    async def _fence(self) -> None:
        """A frame came in once the session's lease was no longer provably
        valid (``ActiveSession.valid_until``): it is not relayed; the gateway
        records the close, sends the client an ``error`` event
        (``lease_expired``), closes 1011 and finishes the session."""
        await self.gw.fence(self.active)

    def _end(self, by: str, code: int | None, reason: str | None) -> None:
        if self._closing_by is None:
            self._closing_by = by
            self.meter.closed(by, code, reason, monotonic_ms())

    async def _close_upstream(self) -> None:
        """Close the upstream if still open (the client's close code when
        the client closed), waiting at most ``_PEER_CLOSE_S`` for the
        provider's answer; then the connection is dropped."""
        upstream = self.upstream
        assert upstream is not None
        if upstream.closed:
            return
        if self._closing_by == CLIENT:
            closing = upstream.close(code=sendable(self.client_close_code, 1000),
                                     message=b"client closed")
        else:
            closing = upstream.close()
        await bounded(closing, _PEER_CLOSE_S)

    async def _close_client(self, code: int, message: bytes = b"") -> None:
        """Close the client's socket, waiting at most ``_PEER_CLOSE_S`` for
        its answer (none is awaited when the client closed first)."""
        assert self.client is not None
        try:
            await bounded(self.client.close(code=code, message=message), _PEER_CLOSE_S)
        except (ConnectionError, RuntimeError):
            pass

    async def _close_both(self) -> None:
        """Close whichever side is still open, with a meaningful code. The
        session is finished (verdict written, concurrency slot freed) before
        the client's close completes, so a client that reconnects at once is
        never refused for its own previous session — unless recording takes
        longer than ``_RECORD_WAIT_S`` (the database or Redis slow or down):
        the close is answered then and the record lands when it can."""
        client = self.client
        assert client is not None
        by = self._closing_by
        await self._close_upstream()
        recorded, _ = await bounded(self.gw.finish(self.active), _RECORD_WAIT_S)
        if not recorded:
            log.warning("session %s: close answered before the session was finished (record "
                        "and lease not done within %g s)", self.active.record.id, _RECORD_WAIT_S)
        if client.closed:
            return
        if by == CLIENT:  # answer the client's close frame with its own code
            await self._close_client(sendable(self.client_close_code, 1000))
        elif by == UPSTREAM:
            code = self.upstream_close_code
            if code in (1000, 1001):
                await self._close_client(code, b"upstream closed the session")
            else:
                err = upstream_closed_error(code, self.upstream_close_reason)
                try:
                    await bounded(client.send_str(error_event(err)), _PEER_CLOSE_S)
                except (ConnectionError, RuntimeError):
                    pass
                await self._close_client(sendable(code, 1011), b"upstream connection lost")
        else:
            await self._close_client(1000)

    async def _server_close(self, code: int, reason: str) -> None:
        self._end(SERVER, code, reason)
        assert self.client is not None and self.upstream is not None
        message = close_reason(reason)
        await asyncio.gather(self._close_client(code, message),
                             within(self.upstream.close(code=code, message=message),
                                    _PEER_CLOSE_S), return_exceptions=True)

    async def _close_from_outside(self, code: int, reason: str) -> None:
        """End the session from outside (shutdown 1001, fencing 1011): an
        ``error`` event says why before the close frame, for every code but
        1000 (``closing_error``)."""
        if self.client is None or self.upstream is None:
            return
        err = closing_error(code, reason)
        if err is not None and not self.client.closed:
            try:
                await bounded(self.client.send_str(error_event(err)), _PEER_CLOSE_S)
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
            await bounded(client.send_str(error_event(err)), _PEER_CLOSE_S)
        except (ConnectionError, RuntimeError):
            pass
        await self._close_client(code, close_reason(err.message))


"""The WebSocket relay: ``GET /v1/realtime?model=…`` (WebSocket upgrade).

A thin shell: authenticate and admit before the upgrade (refusals are HTTP
401/403/429 with an OpenAI-style JSON body), open the upstream WebSocket with
the server's own key while the client's upgrade completes, then relay frames
both ways unchanged. What to forward, meter and answer and when to close is
decided by the session's sans-I/O relay core (``voxgate.proxy.relay``,
shared with the WebRTC calls); this module reads the sockets, feeds it and
performs its actions. Three exceptions to "unchanged": an ephemeral key's
session config is applied before the client's first event, so
``session.created`` carries it (``KeySession``); the provider's
``rate_limits.updated`` is dropped, and the customer's own (its plan's
figures) follows ``session.created`` and each ``response.done``. Client
events that cannot be relayed (malformed JSON, unknown type, invalid base64
audio, too large) are answered with an ``error`` event and the session goes
on, as OpenAI's server does
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
from collections.abc import Awaitable, Iterable
from typing import Any, Protocol, TypeVar

import aiohttp
from aiohttp import WSMsgType, web

from voxgate.errors import MalformedEvent, NotFound, UpstreamError, UpstreamRefused
from voxgate.metering.meter import CLIENT, UPSTREAM
from voxgate.proxy.auth import authenticate, session_model
from voxgate.proxy.events import customer_rate_limits
from voxgate.proxy.gateway import ActiveSession, Gateway, monotonic_ms
from voxgate.proxy.keys import CONNECTOR, GATEWAY
from voxgate.proxy.relay import (
    CLOSING,
    LEASE_EXPIRED,
    SERVER,
    Accepted,
    Action,
    ClientClosed,
    ClientMessage,
    CloseClient,
    CloseUpstream,
    End,
    Fence,
    Finish,
    Heard,
    Ping,
    RelayConfig,
    RelayCore,
    SendClient,
    SendRateLimits,
    SendUpstream,
    Tick,
    UpstreamClosed,
    UpstreamFailed,
    UpstreamMessage,
    UpstreamOpened,
    close_reason,
    closing_error,
    sendable,
    upstream_closed_error,
)
from voxgate.proxy.upstream import UpstreamConnector, upstream_end

__all__ = ["realtime_websocket", "SESSION_ID_HEADER", "CALL_ATTACH", "within", "bounded",
           "rate_limits_within", "stop_tasks", "pump", "Shell", "closing_error", "LEASE_EXPIRED",
           "RATE_LIMITS_WAIT_S", "TASKS_STOP_S", "close_unused_upstream", "close_reason",
           "upstream_closed_error", "sendable"]

log = logging.getLogger("voxgate.relay")

SESSION_ID_HEADER = "X-Voxgate-Session-Id"
# ``GET /v1/realtime?call_id=…``: the handler that attaches a socket to a
# WebRTC call (set by ``voxgate.proxy.webrtc.setup``).
CALL_ATTACH = web.AppKey("call_attach", object)
# Bounds on what a close awaits (s); together under the one second in which a
# close is answered and recorded.
RATE_LIMITS_WAIT_S = 1.0
"""Longest wait for the customer's ``rate_limits.updated`` figures (Redis,
the database); past it the event is skipped."""
TASKS_STOP_S = 0.1
"""How long a relay task gets to end once cancelled and its socket closed."""
_PEER_CLOSE_S = 0.25  # a peer's answer to voxgate's close frame; then the TCP connection is dropped
_RECORD_WAIT_S = 0.6  # the session's record, before the client's close is answered anyway
T = TypeVar("T")
_DATA_FRAMES = frozenset({WSMsgType.TEXT, WSMsgType.BINARY})  # what a relay forwards
_OPEN_FRAMES = _DATA_FRAMES | {WSMsgType.PING, WSMsgType.PONG}  # frames of a socket still open


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


class Shell(Protocol):
    """What ``pump`` needs of a relay shell: the closing actions the core
    returned while its tasks ran (``_closing``), and how the shell performs
    actions, closes with them, or closes a session that ended elsewhere."""

    _closing: list[Any]

    async def _perform(self, actions: list[Any]) -> bool: ...
    async def _close(self, actions: list[Any]) -> None: ...
    async def _close_unfinished(self) -> None: ...


async def pump(shell: Shell, core: RelayCore, tasks: tuple[asyncio.Task, asyncio.Task]) -> None:
    """Run a shell's two reader ``tasks`` (client → upstream, upstream →
    client) until either ends, feeding the core a ``Tick`` whenever its
    next timer is due (idle timeout, maximum duration, keepalive); then
    close. Neither task is trusted to honour its cancellation: the upstream
    is closed first (a receive() on it returns), the tasks get
    ``TASKS_STOP_S``, and the session is finished and the client answered
    whatever they do. Shared by the WebSocket relay and the Twilio shell."""
    try:
        while True:
            due = core.next_timer_ms()
            timeout = None if due is None else max(0.05, (due - monotonic_ms()) / 1000.0)
            done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if done or not await shell._perform(core.feed(Tick(monotonic_ms()))):
                break
    finally:
        for task in tasks:
            task.cancel()
        closing, shell._closing = shell._closing, []
        while closing and isinstance(closing[0], CloseUpstream):
            await shell._close(closing[:1])
            closing = closing[1:]
        await stop_tasks(tasks)
        if closing:
            await shell._close(closing)
        else:  # the session ended elsewhere (closed from outside) or a task failed
            await shell._close_unfinished()


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
    """One relayed WebSocket session: the sockets and tasks around the
    session's :class:`~voxgate.proxy.relay.RelayCore`."""

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
        self.request = request
        self.model = model
        relay = gw.settings.relay
        self.max_bytes = relay.max_message_bytes
        self.core = RelayCore(RelayConfig(
            model=model, max_bytes=relay.max_message_bytes, key_session=ek_session or None,
            idle_timeout_ms=relay.idle_timeout_s * 1000.0,
            max_session_ms=(active.plan.session_limit_s(relay.max_session_s) or 0) * 1000.0 or None,
            models=active.plan.models,
            ping_ms=relay.ping_interval_s * 1000.0 or None,
        ), active.meter, active)
        self.client: web.WebSocketResponse | None = None
        self.upstream: aiohttp.ClientWebSocketResponse | None = None
        # The closing actions a reader or the timer met (performed once the
        # relay tasks are stopped).
        self._closing: list[Action] = []

    async def run(self) -> web.StreamResponse:
        upstream_task = asyncio.create_task(
            self.connector.connect(self.model, dict(self.request.query), keepalive=False,
                                   api_key=self.active.provider_key)
        )
        client = web.WebSocketResponse(
            protocols=("realtime",),
            # Keepalive is the core's (RelayConfig.ping_ms): aiohttp's
            # heartbeat would reschedule a timer for every message received.
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
        core = self.core
        core.feed(Accepted(monotonic_ms()))
        # The client is read while the upstream connects: a close then ends
        # the session at once instead of after the provider's handshake.
        first: asyncio.Task[aiohttp.WSMessage] = asyncio.ensure_future(client.receive())
        try:
            await asyncio.wait((upstream_task, first), return_when=asyncio.FIRST_COMPLETED)
            if not upstream_task.done() and first.result().type not in _OPEN_FRAMES:
                upstream_task.cancel()
                upstream_task.add_done_callback(close_unused_upstream)
                msg = first.result()
                code = msg.data if msg.type is WSMsgType.CLOSE else client.close_code
                await self._close(core.feed(ClientClosed(monotonic_ms(), code)))
                return client
            self.upstream = await upstream_task
        except (UpstreamRefused, UpstreamError) as exc:
            first.cancel()
            if not isinstance(exc, UpstreamRefused):
                log.warning("session %s: %s", self.active.record.id, exc.message)
            await self._close(core.feed(UpstreamFailed(monotonic_ms(), exc)))
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

    async def _relay(self, first: asyncio.Future[aiohttp.WSMessage]) -> None:
        """Relay both ways until one side ends; ``first`` is the client's
        first frame (perhaps still to come)."""
        core = self.core
        await self._perform(core.feed(UpstreamOpened(monotonic_ms())))
        c2u = asyncio.create_task(self._client_to_upstream(first), name="client->upstream")
        u2c = asyncio.create_task(self._upstream_to_client(), name="upstream->client")
        await pump(self, core, (c2u, u2c))

    async def _client_to_upstream(self, first: asyncio.Future[aiohttp.WSMessage] | None) -> None:
        client, core = self.client, self.core
        assert client is not None
        while True:
            if first is not None:
                msg, first = await first, None
            else:
                msg = await client.receive()
            now = monotonic_ms()
            kind = msg.type
            if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                actions = core.feed(ClientMessage(now, msg.data))
            elif kind is WSMsgType.PING:
                core.feed(Heard(now, CLIENT))
                await client.pong(msg.data)
                continue
            elif kind is WSMsgType.PONG:
                core.feed(Heard(now, CLIENT))
                continue
            else:  # CLOSE (its code is msg.data), CLOSING, CLOSED, ERROR
                code = msg.data if kind is WSMsgType.CLOSE else client.close_code
                actions = core.feed(ClientClosed(now, code))
            if not await self._perform(actions) or core.done:
                return

    async def _upstream_to_client(self) -> None:
        upstream, core = self.upstream, self.core
        assert upstream is not None
        while True:
            msg = await upstream.receive()
            now = monotonic_ms()
            kind = msg.type
            if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                actions = core.feed(UpstreamMessage(now, msg.data))
            elif kind is WSMsgType.PING:
                core.feed(Heard(now, UPSTREAM))
                await upstream.pong(msg.data)
                continue
            elif kind is WSMsgType.PONG:
                core.feed(Heard(now, UPSTREAM))
                continue
            else:
                # CLOSE: the code the provider sent, even if replying to it
                # fails; CLOSING, CLOSED, ERROR: the connection ended without
                # a close frame (1006, "provider connection lost", …)
                actions = core.feed(UpstreamClosed(now, *upstream_end(upstream, msg)))
            if not await self._perform(actions) or core.done:
                return

    async def _perform(self, actions: list[Action]) -> bool:
        """Perform a live session's actions. False when the relaying stops:
        a fence, or the session's end (its closing actions are kept for
        ``_relay`` to perform once the relay tasks are stopped)."""
        client, upstream = self.client, self.upstream
        assert client is not None and upstream is not None
        for i, action in enumerate(actions):
            if isinstance(action, CLOSING):
                self._closing = actions[i:]
                return False
            if isinstance(action, SendUpstream):
                await upstream.send_str(action.data)
            elif isinstance(action, SendClient):
                if isinstance(action.data, str):
                    await client.send_str(action.data)
                else:
                    await client.send_bytes(action.data)
            elif isinstance(action, SendRateLimits):
                limits = await rate_limits_within(self.gw, self.active)
                if limits is not None:
                    await client.send_str(limits)
            elif isinstance(action, Ping):
                try:
                    await (client if action.side == CLIENT else upstream).ping()
                except (ConnectionError, RuntimeError):
                    pass  # the reader sees the connection end
            elif isinstance(action, Fence):
                # The frame is not relayed; the gateway records the close,
                # sends the client an ``error`` event (``lease_expired``),
                # closes 1011 (through _close_from_outside) and finishes.
                await self.gw.fence(self.active)
                return False
        return True

    async def _close(self, actions: list[Action]) -> None:
        """Perform the actions that end a session, each bounded, none
        raising: an ``error`` event, the closes (a server close closes both
        sides at once), the session's finish (before the client's close is
        answered, unless recording takes longer than ``_RECORD_WAIT_S``: the
        database or Redis slow or down)."""
        client, upstream = self.client, self.upstream
        assert client is not None
        i = 0
        while i < len(actions):
            action = actions[i]
            i += 1
            if isinstance(action, SendClient):
                if not client.closed and isinstance(action.data, str):
                    try:
                        await bounded(client.send_str(action.data), _PEER_CLOSE_S)
                    except (ConnectionError, RuntimeError):
                        pass
            elif isinstance(action, CloseClient):
                message = close_reason(action.reason)
                nxt = actions[i] if i < len(actions) else None
                if isinstance(nxt, CloseUpstream) and upstream is not None:
                    i += 1  # voxgate's own close: both sides at once
                    await asyncio.gather(
                        self._close_client(action.code, message),
                        within(upstream.close(code=nxt.code, message=close_reason(nxt.reason)),
                               _PEER_CLOSE_S), return_exceptions=True)
                elif not client.closed:
                    await self._close_client(action.code, message)
            elif isinstance(action, CloseUpstream):
                if upstream is not None and not upstream.closed:
                    await bounded(upstream.close(code=action.code,
                                                 message=action.reason.encode()), _PEER_CLOSE_S)
            elif isinstance(action, Finish):
                recorded, _ = await bounded(self.gw.finish(self.active), _RECORD_WAIT_S)
                if not recorded:
                    log.warning("session %s: close answered before the session was finished "
                                "(record and lease not done within %g s)",
                                self.active.record.id, _RECORD_WAIT_S)

    async def _close_unfinished(self) -> None:
        """The relay stopped with no closing actions of its own: the session
        was closed from outside (that close is under way), or a relay task
        failed. The upstream is closed, the session finished, the client
        closed 1000 if nothing closes it."""
        upstream = self.upstream
        if upstream is not None and not upstream.closed:
            await bounded(upstream.close(), _PEER_CLOSE_S)
        await self._close([Finish()])
        if not self.core.done:
            await self._close([CloseClient(1000, "")])

    async def _close_client(self, code: int, message: bytes = b"") -> None:
        """Close the client's socket, waiting at most ``_PEER_CLOSE_S`` for
        its answer (none is awaited when the client closed first)."""
        assert self.client is not None
        try:
            await bounded(self.client.close(code=code, message=message), _PEER_CLOSE_S)
        except (ConnectionError, RuntimeError):
            pass

    async def _close_from_outside(self, code: int, reason: str) -> None:
        """End the session from outside (shutdown 1001, fencing 1011): an
        ``error`` event says why before the close frame, for every code but
        1000 (``closing_error``)."""
        if self.client is None or self.upstream is None:
            return
        await self._close(self.core.feed(End(monotonic_ms(), SERVER, code, reason, explain=True)))

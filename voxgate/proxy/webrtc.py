"""WebRTC calls, as OpenAI's Realtime WebRTC interface serves them.

Routes (https://platform.openai.com/docs/guides/realtime-webrtc):

- ``POST /v1/realtime/calls`` — the SDP offer, either raw
  (``Content-Type: application/sdp``, an ephemeral key or API key) or the
  "unified interface" (``multipart/form-data`` with an ``sdp`` part and an
  optional JSON ``session`` part, a project API key) → ``201`` with the SDP
  answer and ``Location: /v1/realtime/calls/rtc_…``.
- ``POST /v1/realtime/calls/{call_id}/hangup``, ``DELETE /v1/realtime/calls/{call_id}``
- ``GET  /v1/realtime/calls/{call_id}`` — the call's session record.
- ``GET  /v1/realtime/ice_servers`` — STUN/TURN servers with fresh TURN
  credentials (also added to minted client secrets as ``ice_servers``).
- ``GET  /v1/realtime?call_id=rtc_…`` (WebSocket, via ``ws_relay``) — sideband
  control of an active call with a key of its project
  (https://platform.openai.com/docs/guides/realtime-server-controls).

With several processes (Redis admission) a hang-up or sideband attach of a
call held by another process is routed to it (``voxgate.proxy.cluster``).

Browsers post the offer as OpenAI's guide does, before ICE gathering: an
offer without candidates is answered with voxgate's own, and the client's
addresses are learnt from its checks (peer-reflexive). CORS for these routes
is ``voxgate.proxy.cors``.

A call is a thin shell around the same pieces as a WebSocket session: the
offer is validated first, then ``Gateway.admit`` (transport ``webrtc``);
voxgate answers with its own aiortc peer connection and opens the provider's
WebSocket with ``UpstreamConnector``. The ``oai-events`` data channel carries
JSON events both ways; the browser's Opus audio is bridged to
``input_audio_buffer.append`` and the provider's audio deltas to the outgoing
track (they are not sent on the channel). Hang-up, peer close, data channel
close, upstream close, ICE failure or timeout, lost consent and a client that
has sent nothing for ``consent_grace_s`` (closed tab, crash, network gone)
end the call; ``Gateway.finish`` runs once, on every path. Connect latency
runs from the offer to the call being ready both ways (ICE, DTLS, data
channel, upstream ``session.created``), not to the client's first audio.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType, web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from voxgate.errors import (
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    UpstreamError,
    VoxgateError,
    dependency_error,
    error_event,
    new_event_id,
)
from voxgate.metering.events import classify
from voxgate.metering.meter import CLIENT, SERVER, SHUTDOWN, UPSTREAM
from voxgate.proxy import rtc_ice, rtp_audio, rtp_pump, tokens
from voxgate.proxy.auth import authenticate, session_model
from voxgate.proxy.events import (
    AUDIO_APPEND,
    RATE_LIMITS,
    KeySession,
    parse_client_event,
    pin_session_model,
    utf8_len,
)
from voxgate.proxy.gateway import ActiveSession, Gateway, monotonic_ms
from voxgate.proxy.http import json_response
from voxgate.proxy.keys import CLUSTER, CONNECTOR, GATEWAY, SETTINGS
from voxgate.proxy.media import InboundAudio, OutputAudioTrack
from voxgate.proxy.rtc_sdp import InvalidSdp, Offer, announce_address, check_offer
from voxgate.proxy.turn import client_ice_servers, server_ice_servers
from voxgate.proxy.upstream import UpstreamConnector, UpstreamRefused, upstream_end
from voxgate.proxy.ws_relay import (
    CALL_ATTACH,
    SESSION_ID_HEADER,
    bounded,
    close_unused_upstream,
    closing_error,
    rate_limits_within,
    stop_tasks,
    upstream_closed_error,
)

__all__ = ["setup", "Call", "CALLS", "call_id_of", "session_id_of", "CALL_PREFIX", "sideband"]

log = logging.getLogger("voxgate.webrtc")

CALL_PREFIX = "rtc_"
CALLS = web.AppKey("webrtc_calls", dict)
DATA_CHANNEL = "oai-events"
_OUT_AUDIO = frozenset({"response.output_audio.delta", "response.audio.delta"})
_OUT_AUDIO_DONE = frozenset({"response.output_audio.done", "response.audio.done"})
_UPSTREAM_ENDS = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})
_MAX_PENDING_EVENTS = 2000  # upstream events held until the data channel opens
_PEER_CLOSE_S = 0.25  # the upstream's or a sideband's answer to voxgate's close frame


def call_id_of(session_id: str) -> str:
    """``sess_<hex>`` → ``rtc_<hex>``: the call id names its session."""
    return CALL_PREFIX + session_id.split("_", 1)[1]


def session_id_of(call_id: str) -> str | None:
    if not call_id.startswith(CALL_PREFIX) or len(call_id) <= len(CALL_PREFIX):
        return None
    return "sess_" + call_id[len(CALL_PREFIX):]


def setup(app: web.Application) -> None:
    """Add the call routes and the ``ice_servers`` hook of minted keys."""
    rtc_ice.install()
    app[CALLS] = {}
    app[tokens.ICE_SERVERS_HOOK] = _ice_servers_hook
    app.router.add_post("/v1/realtime/calls", create_call)
    app.router.add_get("/v1/realtime/calls/{call_id}", get_call)
    app.router.add_post("/v1/realtime/calls/{call_id}/hangup", hangup_call)
    app.router.add_delete("/v1/realtime/calls/{call_id}", hangup_call)
    app.router.add_get("/v1/realtime/ice_servers", ice_servers)
    app[CALL_ATTACH] = sideband
    app.on_shutdown.append(_close_calls)


# -- handlers ------------------------------------------------------------------


async def create_call(request: web.Request) -> web.Response:
    """``POST /v1/realtime/calls``.

    Raises (rendered as JSON):
        AuthenticationError, EphemeralKeyExpired, PermissionDenied (401/403);
        InvalidSdp (400: not SDP, no audio m-line, no Opus), InvalidRequest
        (400: other content types, a bad ``session`` part, ``model_mismatch``
        / ``model_not_allowed``); RateLimited,
        QuotaExceeded, ConcurrencyLimited (429); ServiceUnavailable (503:
        draining, Redis or the database down, media cannot be set up).
    """
    offer_ms = monotonic_ms()
    gw: Gateway = request.app[GATEWAY]
    ctype = request.content_type
    if ctype == "multipart/form-data":
        principal = await authenticate(request, gw.store, allow_ephemeral=False)
        text, session = await _read_multipart(request)
    elif ctype == "application/sdp":
        principal = await authenticate(request, gw.store, allow_ephemeral=True)
        text = await request.text()
        session = dict(principal.ephemeral.session) if principal.ephemeral else {}
    else:
        await authenticate(request, gw.store, allow_ephemeral=True)
        raise InvalidRequest(
            f"unsupported Content-Type {ctype!r}: send the SDP offer as application/sdp "
            "or multipart/form-data with an 'sdp' part", code="unsupported_content_type")
    part_model = session.get("model") if ctype == "multipart/form-data" else None
    upstream = gw.settings.upstream
    model = session_model(principal,
                          request.query.get("model") or (
                              part_model if isinstance(part_model, str) else None),
                          upstream.default_model, upstream.allowed_models)
    offer = check_offer(text)
    active = await gw.admit(principal, "webrtc", model)
    active.meter.accepted(offer_ms)
    try:
        call = Call(gw, request.app[CONNECTOR], active, offer, model, session,
                    dict(request.query), offer_ms)
    except BaseException:
        await gw.finish(active)
        raise
    try:
        answer = await call.answer()
    except BaseException as exc:
        await call.abort(f"answer failed: {type(exc).__name__}: {exc}")
        if isinstance(exc, VoxgateError):
            raise
        if (unavailable := dependency_error(exc)) is not None or isinstance(exc, OSError):
            # aiortc could not set up media (no UDP port, an internal error): not the offer's fault
            raise (unavailable or ServiceUnavailable("WebRTC media cannot be set up now")) from exc
        if isinstance(exc, Exception):
            raise InvalidSdp(f"cannot answer the SDP offer: {exc}", param="sdp") from exc
        raise
    calls: dict[str, Call] = request.app[CALLS]
    calls[call.id] = call
    call.start(on_done=lambda: calls.pop(call.id, None))
    return web.Response(
        status=201, text=answer, content_type="application/sdp",
        headers={"Location": f"/v1/realtime/calls/{call.id}",
                 SESSION_ID_HEADER: active.record.id},
    )


async def sideband(request: web.Request) -> web.StreamResponse:
    """``GET /v1/realtime?call_id=rtc_…`` (WebSocket): attach the app's
    server to an active call, as OpenAI's server-side controls
    (https://platform.openai.com/docs/guides/realtime-server-controls).
    Needs a project API key of the call's project. No admission and no new
    session: the socket's events are metered as the call's. The socket is
    closed with 1000 and a reason when the call ends.

    Raises (before the upgrade, as JSON):
        AuthenticationError (401: no key, an ephemeral key), PermissionDenied
        (403: a key of another project), NotFound (404: unknown or ended call).
    """
    gw: Gateway = request.app[GATEWAY]
    principal = await authenticate(request, gw.store, allow_ephemeral=False)
    call_id = request.query.get("call_id", "")
    call: Call | None = request.app[CALLS].get(call_id)
    cluster = request.app.get(CLUSTER)
    if call is None and cluster is not None:  # held by another process?
        remote = await cluster.attach(call_id, principal.project.id)
        ws = web.WebSocketResponse(protocols=("realtime",), heartbeat=20.0,
                                   max_msg_size=gw.settings.relay.max_message_bytes)
        ws.headers[SESSION_ID_HEADER] = remote.session_id
        await ws.prepare(request)
        await remote.run(ws)
        return ws
    if call is None or call.done:
        raise NotFound(f"no active call {call_id!r}", param="call_id")
    if call.active.record.project_id != principal.project.id:
        raise PermissionDenied(f"call {call_id!r} belongs to another project", param="call_id")
    ws = web.WebSocketResponse(protocols=("realtime",), heartbeat=20.0,
                               max_msg_size=gw.settings.relay.max_message_bytes)
    ws.headers[SESSION_ID_HEADER] = call.active.record.id
    await ws.prepare(request)
    await call.attach(ws)
    return ws


async def hangup_call(request: web.Request) -> web.Response:
    """``POST /v1/realtime/calls/{call_id}/hangup`` and ``DELETE …/{call_id}``:
    end the call and wait until its session is recorded."""
    call_id, principal = await _call_principal(request)
    call: Call | None = request.app[CALLS].get(call_id)
    cluster = request.app.get(CLUSTER)
    if call is None and cluster is not None:  # held by another process?
        await cluster.hangup(call_id, principal.project.id)
        return web.Response(status=200)
    if call is None or call.active.record.project_id != principal.project.id:
        raise NotFound(f"no active call {call_id!r}", param="call_id")
    await call.hangup()
    return web.Response(status=200)


async def get_call(request: web.Request) -> web.Response:
    """``GET /v1/realtime/calls/{call_id}``: the call's session record
    (``SessionRecord.to_api()``), for a key of the call's project."""
    call_id, principal = await _call_principal(request)
    sid = session_id_of(call_id)
    record = await request.app[GATEWAY].store.get_session(sid) if sid else None
    if record is None or record.project_id != principal.project.id:
        raise NotFound(f"no call {call_id!r}", param="call_id")
    return json_response({"call_id": call_id, **record.to_api()})


async def ice_servers(request: web.Request) -> web.Response:
    """``GET /v1/realtime/ice_servers`` (ephemeral key) →
    ``{"ice_servers": [{"urls", "username", "credential"}]}``."""
    gw: Gateway = request.app[GATEWAY]
    principal = await authenticate(request, gw.store, allow_ephemeral=True, allow_api_key=False)
    return json_response({"ice_servers": client_ice_servers(gw.settings.webrtc,
                                                            principal.project.id)})


def _ice_servers_hook(app: web.Application, project_id: str) -> list[dict[str, Any]]:
    return client_ice_servers(app[SETTINGS].webrtc, project_id)


async def _call_principal(request: web.Request):
    principal = await authenticate(request, request.app[GATEWAY].store, allow_ephemeral=True)
    return request.match_info["call_id"], principal


async def _read_multipart(request: web.Request) -> tuple[str, dict[str, Any]]:
    """The ``sdp`` and optional ``session`` parts of the unified interface."""
    sdp: str | None = None
    session: dict[str, Any] = {}
    try:
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, aiohttp.BodyPartReader):
                continue
            if part.name == "sdp":
                sdp = await part.text()
            elif part.name == "session":
                raw = await part.read()
                try:
                    value = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise InvalidRequest(f"the 'session' part is not valid JSON: {exc}",
                                         code="invalid_json", param="session") from exc
                if not isinstance(value, dict):
                    raise InvalidRequest("the 'session' part must be a JSON object",
                                         param="session")
                session = value
    except (ValueError, AssertionError) as exc:
        raise InvalidRequest(f"invalid multipart body: {exc}") from exc
    if sdp is None:
        raise InvalidSdp("the multipart body has no 'sdp' part", param="sdp")
    return sdp, session


async def _close_calls(app: web.Application) -> None:
    calls: dict[str, Call] = app[CALLS]
    await asyncio.gather(*(c.hangup(SERVER, 1001, SHUTDOWN)
                           for c in list(calls.values())), return_exceptions=True)


# -- the call ---------------------------------------------------------------------


class Call:
    """One WebRTC call: voxgate's peer connection, the upstream WebSocket,
    and the bridge between them. ``answer()`` then ``start()``; the call
    then runs until one side ends it, and finishes its session."""

    def __init__(
        self,
        gw: Gateway,
        connector: UpstreamConnector,
        active: ActiveSession,
        offer: Offer,
        model: str,
        session: dict[str, Any],
        query: dict[str, str],
        offer_ms: float,
    ) -> None:
        self.gw = gw
        self.offer_ms = offer_ms
        self.connector = connector
        self.active = active
        self.meter = active.meter
        self.offer = offer
        self.model = model
        config = {k: v for k, v in session.items() if k != "model"}
        # the key's config, in session.created (formats: see _media_session)
        self.key_session = KeySession(_media_session({"type": "realtime", **config})
                                      if config else None)
        self.query = query
        self.settings = gw.settings.webrtc
        self.max_bytes = gw.settings.relay.max_message_bytes
        self.id = call_id_of(active.record.id)
        self.pc = RTCPeerConnection(RTCConfiguration(
            iceServers=server_ice_servers(self.settings),
            iceTransportPolicy=RTCIceTransportPolicy(self.settings.ice_transport_policy),
        ))
        self.track = OutputAudioTrack(on_event=self._audio_event)
        self.channel: Any = None
        self.upstream: aiohttp.ClientWebSocketResponse | None = None
        self._upstream_task: asyncio.Task | None = None
        self._upstream_open = asyncio.Event()
        self._ice_connected = asyncio.Event()
        self._done = asyncio.Event()
        self._ended_by: str | None = None
        self._tasks: set[asyncio.Task] = set()
        # client events from the data channel or an attached sideband socket,
        # each with where its own error events go back to
        self._client_queue: asyncio.Queue[tuple[str | bytes, Callable[[str], None]] | None] = (
            asyncio.Queue())
        self._sidebands: dict[web.WebSocketResponse, asyncio.Queue[str | None]] = {}
        self._last_seen_ms: float | None = None  # the client's last datagram
        self._ready = False  # connect latency taken
        self._pending: list[str] = []
        self._response_id: str | None = None  # response in progress upstream
        self._dropped: set[str | None] = set()  # responses whose audio was cleared
        self._inbound: InboundAudio | None = None  # the browser's audio, once its track is in
        self._rtp_in: rtp_audio.InboundRtp | None = None  # its RTP's fast path
        self._consent_timer: asyncio.TimerHandle | None = None
        self._consent_lost = False
        self._runner: asyncio.Task | None = None
        self.active.close = self._close_from_outside
        self.active.transport_open = self._transport_open
        self.active.extra["call_id"] = self.id

    # -- signalling ------------------------------------------------------

    async def answer(self) -> str:
        """Apply the offer, gather on the configured host addresses and
        return the SDP answer (public address announced)."""
        pc = self.pc
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("iceconnectionstatechange", self._on_ice_state)
        pc.on("connectionstatechange", self._on_connection_state)
        self._upstream_task = asyncio.create_task(
            self.connector.connect(self.model, self.query), name=f"{self.id} upstream connect")
        await pc.setRemoteDescription(RTCSessionDescription(self.offer.sdp, "offer"))
        if self.offer.candidate_types:
            # No trickle ICE (as OpenAI): an offer with candidates holds every
            # one there is, so ICE can fail as soon as its checks do.
            for transceiver in pc.getTransceivers():
                await transceiver.receiver.transport.transport.addRemoteCandidate(None)
            if pc.sctp is not None:
                await pc.sctp.transport.transport.addRemoteCandidate(None)
        # An offer without candidates (OpenAI's guide posts ``offer.sdp``
        # before gathering) is the usual browser flow: the client's addresses
        # are learnt from its connectivity checks as peer-reflexive
        # candidates (RFC 8445 §7.3.1.3), and ``ice_timeout_s`` bounds it.
        rtp_pump.pump_sender(pc.addTrack(self.track), self.track)
        answer = await pc.createAnswer()
        with rtc_ice.host_addresses(self.settings.host_addresses):
            await pc.setLocalDescription(answer)
        return announce_address(pc.localDescription.sdp, self.settings.public_address)

    def start(self, on_done=None) -> None:
        self._runner = asyncio.create_task(self._run(on_done), name=f"{self.id} call")

    async def abort(self, reason: str) -> None:
        """The offer could not be answered: close what was opened, finish."""
        self.meter.closed(SERVER, None, reason, monotonic_ms())
        if self._upstream_task is not None:
            self._upstream_task.cancel()
            try:
                ws = await self._upstream_task
                await ws.close()
            except BaseException:  # noqa: BLE001 - cancelled or failed: nothing open
                pass
        await self.pc.close()
        await self.gw.finish(self.active)

    async def hangup(self, by: str = CLIENT, code: int | None = 1000,
                     reason: str = "hangup") -> None:
        """End the call and wait until its session is recorded."""
        self._end(by, code, reason)
        if self._runner is not None:
            await asyncio.shield(self._runner)

    @property
    def done(self) -> bool:
        """The call has ended (it may still be tearing down)."""
        return self._done.is_set()

    def _transport_open(self) -> bool:
        """Whether the client's peer connection or the upstream's socket is
        still open (``ActiveSession.transport_open``)."""
        upstream = self.upstream
        return (self.pc.connectionState != "closed"
                or (upstream is not None and not upstream.closed))

    async def _close_from_outside(self, code: int, reason: str) -> None:
        """End the call from outside (shutdown 1001, fencing 1011): for
        every code but 1000 an ``error`` event (``closing_error``) says why
        on the data channel and sidebands first."""
        err = closing_error(code, reason)
        if err is not None:
            self._send_event(error_event(err))
            channel = self.channel
            # up to 0.5 s for it to leave (the data channel's buffer, the
            # sidebands' queues) before the peer connection closes
            for _ in range(20):
                if ((channel is None or channel.readyState != "open" or not channel.bufferedAmount)
                        and all(queue.empty() for queue in self._sidebands.values())):
                    break
                await asyncio.sleep(0.025)
        self._end(SERVER, code, reason)

    def _end(self, by: str, code: int | None, reason: str | None,
             at_ms: float | None = None) -> None:
        """End the call (first caller wins); ``at_ms`` is when it really
        ended, if earlier than now (the client's last sign of life)."""
        if self._ended_by is None:
            self._ended_by = by
            self.meter.closed(by, code, reason, monotonic_ms() if at_ms is None else at_ms)
        self._done.set()

    # -- lifecycle ---------------------------------------------------------

    async def _run(self, on_done) -> None:
        try:
            await self._connect_upstream()
            if not self._done.is_set():
                self._spawn(self._upstream_to_client(), "upstream->client")
                self._spawn(self._client_to_upstream(), "client->upstream")
                self._spawn(self._ice_watchdog(), "ice watchdog")
                try:
                    await asyncio.wait_for(self._done.wait(), self.gw.settings.relay.max_session_s)
                except TimeoutError:
                    self._end(SERVER, 1000, "maximum session duration reached")
        except Exception:  # noqa: BLE001 - the call must still be finished
            log.exception("call %s failed", self.id)
            self._end(SERVER, 1011, "internal error")
        finally:
            await self._teardown()
            if on_done is not None:
                on_done()

    async def _connect_upstream(self) -> None:
        task = self._upstream_task
        assert task is not None
        if not task.done():
            # a hang-up (any end) while the provider's handshake is under
            # way ends the call at once; the teardown gives up the connect
            ended = asyncio.ensure_future(self._done.wait())
            try:
                await asyncio.wait((task, ended), return_when=asyncio.FIRST_COMPLETED)
            finally:
                ended.cancel()
            if not task.done():
                return
        try:
            self.upstream = await task
        except UpstreamRefused as exc:
            self.meter.upstream_refused(monotonic_ms(), exc.message)
            self._send_event(error_event(exc))
            self._end(SERVER, 1008, exc.message)
            return
        except UpstreamError as exc:
            log.warning("call %s: %s", self.id, exc.message)
            self.meter.upstream_connect_failed(monotonic_ms(), exc.message)
            self._send_event(error_event(exc))
            self._end(SERVER, 1011, exc.message)
            return
        if self.key_session.update is not None:
            await self.upstream.send_str(self.key_session.update)
        self._upstream_open.set()

    async def _teardown(self) -> None:
        """Stop the bridge and finish the session. No task is trusted to
        honour its cancellation (a dependency may swallow it): the upstream
        is closed first, so its reader ends whatever it awaited, the tasks
        get ``TASKS_STOP_S``, and every close handshake is bounded."""
        self._end(SERVER, None, "call ended")
        if self._consent_timer is not None:
            self._consent_timer.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        self._client_queue.put_nowait(None)
        try:
            if self.upstream is not None and not self.upstream.closed:
                await bounded(self.upstream.close(code=1000, message=b"call ended"),
                             _PEER_CLOSE_S)
            elif self.upstream is None and self._upstream_task is not None:
                self._upstream_task.cancel()
                self._upstream_task.add_done_callback(close_unused_upstream)
        except Exception:  # noqa: BLE001
            log.exception("call %s: closing the upstream", self.id)
        await stop_tasks(tasks)
        reason = ("call ended: " + (self.meter.measurements().close_reason or ""))[:120]
        code = 1001 if self.meter.measurements().close_code == 1001 else 1000  # 1001: shutdown
        await asyncio.gather(*(bounded(ws.close(code=code, message=reason.encode()), _PEER_CLOSE_S)
                               for ws in list(self._sidebands)), return_exceptions=True)
        try:
            self.track.stop()
            await asyncio.wait_for(self.pc.close(), 5)
        except Exception:  # noqa: BLE001
            log.exception("call %s: closing", self.id)
        finally:
            await self.gw.finish(self.active)

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=f"{self.id} {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- sideband control ------------------------------------------------

    async def attach(self, ws: web.WebSocketResponse) -> None:
        """Run an attached (prepared) sideband WebSocket until it or the call
        closes: it receives every server event the data channel does, and
        its client events go upstream as the browser's do, metered as part
        of this session; errors about its own events come back to it only."""
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._sidebands[ws] = queue
        writer = self._spawn(self._sideband_writer(ws, queue), "sideband writer")
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    self._client_queue.put_nowait((msg.data, queue.put_nowait))
                elif msg.type is WSMsgType.BINARY:
                    self.meter.client_rejected(len(msg.data))
                    queue.put_nowait(error_event(InvalidRequest(
                        "binary frames are not supported: send JSON events as text",
                        code="invalid_event")))
                else:
                    break
        finally:
            self._sidebands.pop(ws, None)
            queue.put_nowait(None)
            writer.cancel()

    async def _sideband_writer(self, ws: web.WebSocketResponse,
                               queue: asyncio.Queue[str | None]) -> None:
        while (data := await queue.get()) is not None:
            if ws.closed:
                return
            try:
                await ws.send_str(data)
            except ConnectionError:
                return

    # -- ICE / DTLS ----------------------------------------------------------

    def _on_ice_state(self) -> None:
        state = self.pc.iceConnectionState
        now = monotonic_ms()
        self.meter.ice_state(state, now)
        if state in ("connected", "completed"):
            if self._consent_timer is not None:
                self._consent_timer.cancel()
                self._consent_timer = None
            if not self._ice_connected.is_set():
                self._ice_connected.set()
                self._record_pair()
                self._watch_consent()
                self._watch_liveness()
                self._check_ready()
        elif state in ("failed", "disconnected") or (state == "closed" and self._consent_lost):
            if not self._ice_connected.is_set():
                self._ice_failed(f"iceConnectionState {state}")
            elif self._consent_timer is None:
                self._consent_timer = asyncio.get_running_loop().call_later(
                    self.settings.consent_grace_s, self._consent_expired, state)

    def _consent_expired(self, state: str) -> None:
        """End the call ``consent_grace_s`` after ICE consent was lost, its
        duration ending at the client's last datagram (as the liveness
        watchdog does)."""
        self._end(CLIENT, None, f"ICE consent lost (iceConnectionState {state})",
                  at_ms=self._last_seen_ms)

    def _watch_consent(self) -> None:
        """Tell lost consent from a hang-up. aiortc reports both as
        ``closed`` (no ``disconnected`` state): when consent expires
        (RFC 7675 §5.1) aioice's consent task itself closes the connection,
        so its ``close`` is wrapped to note which task called it."""
        try:
            conn = self._ice_connection()
            consent_task = conn._query_consent_task
            close = conn.close
        except AttributeError:
            return

        async def closing() -> None:
            if consent_task is not None and asyncio.current_task() is consent_task:
                self._consent_lost = True
            await close()

        conn.close = closing

    def _watch_liveness(self) -> None:
        """Note the time of every datagram the client sends on the call's
        ICE connection (its connectivity and consent checks, answers to
        voxgate's, DTLS, SRTP/SRTCP, SCTP; relayed ones through TURN too) and
        end the call ``consent_grace_s`` after the last one. A browser keeps
        sending while it lives, silent or not (RTP or Opus DTX frames, RTCP
        reports, STUN checks every few seconds); a closed tab, a crashed
        browser or a dropped network sends nothing. aioice only notices
        after its 30 s consent expiry (RFC 7675 §5.1), so voxgate wraps each
        of the connection's ``StunProtocol.datagram_received``."""
        conn = self._ice_connection()
        protocols = getattr(conn, "_protocols", None)
        if not protocols:
            return
        self._last_seen_ms = monotonic_ms()

        def wrap(received: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
            def seen(data: Any, addr: Any) -> None:
                self._last_seen_ms = monotonic_ms()
                rtp = self._rtp_in
                if rtp is None or not rtp(data):
                    received(data, addr)
            return seen

        for protocol in protocols:
            protocol.datagram_received = wrap(protocol.datagram_received)
        self._spawn(self._liveness_watchdog(), "liveness")

    async def _liveness_watchdog(self) -> None:
        grace_ms = self.settings.consent_grace_s * 1000
        interval_s = min(0.5, self.settings.consent_grace_s / 4)
        while True:
            await asyncio.sleep(interval_s)
            last = self._last_seen_ms
            if self._consent_timer is not None:
                continue  # consent is lost: its own timer ends the call, with the reason
            if last is not None and monotonic_ms() - last > grace_ms:
                self._end(CLIENT, None, f"client gone: nothing received for "
                          f"{self.settings.consent_grace_s:g} s", at_ms=last)
                return

    def _check_ready(self) -> None:
        """Take the connect latency once the call can carry media both ways:
        ICE and DTLS connected, the data channel open (when offered) and the
        upstream's ``session.created`` in; the client's audio plays no part."""
        if self._ready or not self._ice_connected.is_set() or not self.meter.connected:
            return
        if self.meter.measurements().dtls_connected_ms is None:
            return
        if self.offer.has_data_channel and (
                self.channel is None or self.channel.readyState != "open"):
            return
        self._ready = True
        self.meter.media_ready(monotonic_ms())

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            self.meter.dtls_connected(monotonic_ms())
            self._check_ready()
        elif state in ("failed", "closed") and self._ice_connected.is_set():
            if self.pc.iceConnectionState in ("failed", "disconnected"):
                return  # the grace timer decides
            self._peer_gone(f"peer connection {state}")

    def _peer_gone(self, reason: str) -> None:
        """The peer closed the data channel or the connection: the call is
        over, unless ICE consent was lost (then the grace timer decides)."""
        if not self._consent_lost:
            self._end(CLIENT, None, reason)

    async def _ice_watchdog(self) -> None:
        elapsed_s = (monotonic_ms() - self.offer_ms) / 1000
        try:
            await asyncio.wait_for(self._ice_connected.wait(),
                                   max(0.0, self.settings.ice_timeout_s - elapsed_s))
        except TimeoutError:
            self._ice_failed(f"ICE not connected within {self.settings.ice_timeout_s:g} s "
                             f"(state {self.pc.iceConnectionState})")

    def _ice_failed(self, detail: str) -> None:
        turn, why = self._relay_required()
        self.meter.ice_failed(f"{detail}; {why}" if why else detail, turn=turn)
        self._end(SERVER, None, detail)

    def _relay_required(self) -> tuple[bool, str]:
        """Whether relay was required or the only way (a TURN failure)."""
        if self.settings.ice_transport_policy == "relay":
            local = self._local_candidate_types()
            if "relay" not in local:
                return True, "voxgate's TURN allocation failed (relay policy)"
            return True, "voxgate's relay policy"
        types = self.offer.candidate_types
        if types and all(t == "relay" for t in types):
            return True, "the client offered only relay candidates"
        if not types and self.settings.turn_urls and not self._remote_candidate_types():
            # Nothing offered and no check ever arrived: with TURN handed out,
            # the relay was the only way left (a client whose allocation failed).
            return True, "no client candidate offered or learnt (its TURN allocation failed)"
        return False, ""

    def _ice_connection(self):
        for transceiver in self.pc.getTransceivers():
            return transceiver.receiver.transport.transport._connection
        sctp = self.pc.sctp
        return sctp.transport.transport._connection if sctp is not None else None

    def _local_candidate_types(self) -> set[str]:
        try:
            conn = self._ice_connection()
            return {c.type for c in conn.local_candidates} if conn is not None else set()
        except AttributeError:
            return set()

    def _remote_candidate_types(self) -> set[str]:
        try:
            conn = self._ice_connection()
            return {c.type for c in conn.remote_candidates} if conn is not None else set()
        except AttributeError:
            return set()

    def _record_pair(self) -> None:
        """The nominated pair's candidate types (aioice ``Connection._nominated``)."""
        try:
            conn = self._ice_connection()
            pair = conn._nominated.get(1) if conn is not None else None
        except AttributeError:
            pair = None
        if pair is not None:
            self.meter.candidate_pair(pair.local_candidate.type, pair.remote_candidate.type)

    # -- media -------------------------------------------------------------

    def _on_track(self, track) -> None:
        """The browser's audio: its receiver decodes each packet on the
        event loop as it arrives (``rtp_audio.decode_inline``), into 40 ms
        chunks of PCM16 24 kHz for the provider."""
        if track.kind != "audio" or self._inbound is not None:
            return
        receiver = next(t.receiver for t in self.pc.getTransceivers()
                        if t.receiver.track is track)
        self._inbound = InboundAudio(chunk_ms=40)
        inline = rtp_audio.decode_inline(receiver, self._inbound.feed, self._inbound.end)
        self._rtp_in = rtp_audio.receive_inline(receiver, inline)
        self._spawn(self._inbound_audio(self._inbound), "inbound audio")

    async def _inbound_audio(self, audio: InboundAudio) -> None:
        """Browser audio → ``input_audio_buffer.append`` (40 ms of PCM16 24 kHz)."""
        await self._upstream_open.wait()
        while (chunk := await audio.next()) is not None:
            await self._append(chunk)

    async def _flush_inbound(self) -> None:
        """Before ``input_audio_buffer.commit``: append all the browser audio
        received so far, the part short of a chunk included."""
        if self._inbound is not None:
            await self._inbound.flush()

    async def _append(self, pcm: bytes) -> None:
        upstream = self.upstream
        if upstream is None or upstream.closed:
            return
        if time.monotonic() >= self.active.valid_until:
            await self.gw.fence(self.active)
            return
        b64 = base64.b64encode(pcm).decode()
        event = {"type": AUDIO_APPEND, "audio": b64}
        data = orjson.dumps(event).decode()
        await upstream.send_str(data)
        self.meter.record(classify(CLIENT, AUDIO_APPEND, len(data), event))

    def _drop_output(self) -> None:
        """Barge-in, ``response.cancel``, ``output_audio_buffer.clear``: drop
        the queued audio at once and ignore the rest of that response's."""
        self._dropped.add(self._response_id)
        self.track.clear()

    def _audio_event(self, etype: str, response_id: str | None) -> None:
        self._send_event(orjson.dumps(
            {"type": etype, "event_id": new_event_id(), "response_id": response_id}).decode())

    # -- events --------------------------------------------------------------

    def _on_datachannel(self, channel) -> None:
        if channel.label != DATA_CHANNEL or self.channel is not None:
            return
        self.channel = channel
        channel.on("message", lambda data: self._client_queue.put_nowait(
            (data, self._send_channel)))
        channel.on("close", lambda: self._peer_gone("data channel closed"))
        channel.on("open", self._check_ready)
        pending, self._pending = self._pending, []
        for data in pending:
            self._send_channel(data)
        self._check_ready()

    def _send_event(self, data: str) -> None:
        """A server event to the client's data channel and every attached
        sideband socket."""
        self._send_channel(data)
        for queue in self._sidebands.values():
            queue.put_nowait(data)

    def _send_channel(self, data: str) -> None:
        channel = self.channel
        if channel is None:
            if len(self._pending) < _MAX_PENDING_EVENTS:
                self._pending.append(data)
            return
        if channel.readyState == "open":
            try:
                channel.send(data)
            except Exception:  # noqa: BLE001 - a closing channel; the call is ending
                log.warning("call %s: cannot send an event on the data channel", self.id)

    async def _client_to_upstream(self) -> None:
        await self._upstream_open.wait()
        upstream, meter = self.upstream, self.meter
        assert upstream is not None
        while True:
            item = await self._client_queue.get()
            if item is None:
                return
            data, reply = item
            if time.monotonic() >= self.active.valid_until:
                await self.gw.fence(self.active)
                return
            n = utf8_len(data)
            try:
                event, etype = parse_client_event(data, self.max_bytes)
            except VoxgateError as err:
                meter.client_rejected(n)
                reply(error_event(err))
                continue
            if etype == "output_audio_buffer.clear":
                # WebRTC-only (the provider's WebSocket does not know it):
                # voxgate owns the output buffer.
                meter.record(classify(CLIENT, etype, n, event))
                self._drop_output()
                if self._response_id is not None:
                    await upstream.send_str(orjson.dumps({"type": "response.cancel"}).decode())
                continue
            if etype == "response.cancel":
                self._drop_output()
            elif etype == "session.update" and isinstance(event.get("session"), dict):
                event = pin_session_model(event, self.model) or event
                event["session"] = _media_session(event["session"])
                data = orjson.dumps(event).decode()
            elif etype == "input_audio_buffer.commit":
                await self._flush_inbound()
            await upstream.send_str(data if isinstance(data, str) else data.decode())
            meter.record(classify(CLIENT, etype, n, event))

    async def _upstream_to_client(self) -> None:
        upstream, meter = self.upstream, self.meter
        assert upstream is not None
        active = self.active
        while True:
            msg = await upstream.receive()
            if msg.type in _UPSTREAM_ENDS:
                break
            if time.monotonic() >= active.valid_until:
                await self.gw.fence(active)
                return
            if msg.type is not WSMsgType.TEXT:
                if msg.type is WSMsgType.BINARY:
                    meter.record(classify(UPSTREAM, "binary", len(msg.data)))
                continue  # PING/PONG: aiohttp answers pings (autoping)
            data: str = msg.data
            event: dict[str, Any] | None
            try:
                event = orjson.loads(data)
                etype = event["type"]  # type: ignore[index]
            except (orjson.JSONDecodeError, TypeError, KeyError):
                event, etype = None, None
            if not isinstance(etype, str):  # not ours to judge; relayed as is
                event, etype = None, "unknown"
            if self.key_session.pending:
                for held in self.key_session.upstream(etype, event, data):
                    await self._upstream_event(*held)
            else:
                await self._upstream_event(etype, event, data)
        # a close frame's code and reason; without one, 1006 and why
        # ("provider connection lost", "provider connection reset", …)
        code, reason = upstream_end(upstream, msg)
        if code not in (1000, 1001) and self._ended_by is None:
            self._send_event(error_event(upstream_closed_error(code, reason)))
        self._end(UPSTREAM, code, reason)

    async def _upstream_event(self, etype: str, event: dict[str, Any] | None, data: str) -> None:
        """One upstream event: audio deltas to the track, the rest to the
        data channel (and sidebands), metered. The provider's
        ``rate_limits.updated`` is dropped; after ``session.created`` and
        each ``response.done`` the client gets its plan's instead."""
        meter, track = self.meter, self.track
        if event is None:
            meter.record(classify(UPSTREAM, etype, utf8_len(data)))
            self._send_event(data)
            return
        if etype == RATE_LIMITS:
            return
        if etype in _OUT_AUDIO:
            meter.record(classify(UPSTREAM, etype, utf8_len(data), event))
            delta = event.get("delta")
            rid = event.get("response_id")
            if isinstance(delta, str) and delta and rid not in self._dropped:
                try:
                    track.push(base64.b64decode(delta), rid)
                except (binascii.Error, ValueError):
                    log.warning("call %s: undecodable audio delta", self.id)
            return  # audio goes out as media, not on the channel
        now = monotonic_ms()
        if etype == "session.created":
            meter.upstream_ready(now)
            self._check_ready()
        meter.record(classify(UPSTREAM, etype, utf8_len(data), event), now)
        if etype == "input_audio_buffer.speech_started":
            self._drop_output()
        elif etype == "response.created":
            response = event.get("response")
            self._response_id = response.get("id") if isinstance(response, dict) else None
        elif etype in _OUT_AUDIO_DONE:
            track.audio_done(event.get("response_id"))
        elif etype == "response.done":
            response = event.get("response")
            rid = response.get("id") if isinstance(response, dict) else None
            track.audio_done(rid)
            if rid == self._response_id:
                self._response_id = None
        if etype.startswith("output_audio_buffer."):
            return  # voxgate reports its own output buffer
        self._send_event(data)
        if etype == "session.created" or etype == "response.done":
            limits = await rate_limits_within(self.gw, self.active)
            if limits is not None:
                self._send_event(limits)


def _media_session(session: dict[str, Any]) -> dict[str, Any]:
    """A session config without audio formats: on a call the media is Opus
    and voxgate bridges PCM16 24 kHz, whatever the client asks."""
    audio = session.get("audio")
    if isinstance(audio, dict):
        audio = {side: ({k: v for k, v in cfg.items() if k != "format"}
                        if isinstance(cfg, dict) else cfg) for side, cfg in audio.items()}
        session = {**session, "audio": audio}
    return {k: v for k, v in session.items()
            if k not in ("input_audio_format", "output_audio_format")}

"""One WebRTC call: voxgate's aiortc peer connection, the provider's
WebSocket, and the bridge between them (the ``oai-events`` data channel,
sideband sockets, the browser's audio in, the provider's audio out).

A shell around the session's relay core (``voxgate.proxy.relay``, media
mode): the data channel's and sidebands' messages, the browser's audio and
the provider's frames are fed to it, and its actions performed (events to
the channel and sidebands, audio to the outgoing track). The call's own
lifecycle stays here: the offer's answer, the ICE/DTLS watch (ICE failure
or timeout, lost consent, a client that has gone silent), the maximum
duration (the plan's ``max_session_s``, or ``relay.max_session_s`` if
shorter: OpenAI's ``session_expired`` error event on ``oai-events`` and the
sidebands, then the call is hung up, recorded ``closed_by: "server"``,
reason ``max_session_s``), hang-up and teardown. ``Call.answer()`` then
``start()``; the call runs until one side ends it, and finishes its session
(``Gateway.finish``) once, on every path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType, web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from voxgate.errors import UpstreamError, UpstreamRefused, new_event_id
from voxgate.metering.meter import CLIENT, SERVER
from voxgate.proxy.gateway import ActiveSession, Gateway, monotonic_ms
from voxgate.proxy.relay import (
    Accepted,
    Action,
    AudioDone,
    ClearAudio,
    ClientAudio,
    ClientMessage,
    CloseClient,
    End,
    Fence,
    FlushInput,
    PlayAudio,
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
)
from voxgate.proxy.upstream import UpstreamConnector, upstream_end
from voxgate.proxy.webrtc import ice, rtp_in, rtp_pump
from voxgate.proxy.webrtc.media import InboundAudio, OutputAudioTrack
from voxgate.proxy.webrtc.sdp import Offer, announce_address
from voxgate.proxy.webrtc.turn import server_ice_servers
from voxgate.proxy.ws_relay import bounded, close_unused_upstream, rate_limits_within, stop_tasks

__all__ = ["Call", "CALLS", "call_id_of", "session_id_of", "CALL_PREFIX", "media_session"]

log = logging.getLogger("voxgate.webrtc")

CALL_PREFIX = "rtc_"
CALLS = web.AppKey("webrtc_calls", dict)
DATA_CHANNEL = "oai-events"
_UPSTREAM_ENDS = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})
_MAX_PENDING_EVENTS = 2000  # upstream events held until the data channel opens
_PEER_CLOSE_S = 0.25  # the upstream's or a sideband's answer to voxgate's close frame


def call_id_of(session_id: str) -> str:
    """``sess_<hex>`` → ``rtc_<hex>``: the call id names its session."""
    return CALL_PREFIX + session_id.split("_", 1)[1]


def session_id_of(call_id: str) -> str | None:
    """``rtc_<hex>`` → ``sess_<hex>``; None for a string that is no call id."""
    if not call_id.startswith(CALL_PREFIX) or len(call_id) <= len(CALL_PREFIX):
        return None
    return "sess_" + call_id[len(CALL_PREFIX):]


def media_session(session: dict[str, Any]) -> dict[str, Any]:
    """A session config without audio formats: on a call the media is Opus
    and voxgate bridges PCM16 24 kHz, whatever the client asks."""
    audio = session.get("audio")
    if isinstance(audio, dict):
        audio = {side: ({k: v for k, v in cfg.items() if k != "format"}
                        if isinstance(cfg, dict) else cfg) for side, cfg in audio.items()}
        session = {**session, "audio": audio}
    return {k: v for k, v in session.items()
            if k not in ("input_audio_format", "output_audio_format")}


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
        # the key's config (its model aside), in session.created; the audio
        # formats are voxgate's (media_session); the plan's limits (issue 21,
        # item 4): its maximum duration (or the relay's, if shorter) and models
        limit_s = active.plan.session_limit_s(gw.settings.relay.max_session_s)
        self.core = RelayCore(RelayConfig(
            model=model, max_bytes=gw.settings.relay.max_message_bytes,
            key_session=session if set(session) - {"model"} else None,
            media=True, rewrite_session=media_session,
            max_session_ms=limit_s * 1000.0 if limit_s else None,
            models=active.plan.models,
        ), active.meter, active)
        self.core.feed(Accepted(offer_ms))  # connect latency: offer → media ready
        self.query = query
        self.settings = gw.settings.webrtc
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
        self._tasks: set[asyncio.Task] = set()
        # client events from the data channel or an attached sideband socket,
        # each with where its own error events go back to
        self._client_queue: asyncio.Queue[tuple[str | bytes, Callable[[str], None]] | None] = (
            asyncio.Queue())
        self._sidebands: dict[web.WebSocketResponse, asyncio.Queue[str | None]] = {}
        self._last_seen_ms: float | None = None  # the client's last datagram
        self._ready = False  # connect latency taken
        self._pending: list[str] = []
        self._inbound: InboundAudio | None = None  # the browser's audio, once its track is in
        self._rtp_in: rtp_in.InboundRtp | None = None  # its RTP's fast path
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
            self.connector.connect(self.model, self.query, api_key=self.active.provider_key),
            name=f"{self.id} upstream connect")
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
        with ice.host_addresses(self.settings.host_addresses):
            await pc.setLocalDescription(answer)
        return announce_address(pc.localDescription.sdp, self.settings.public_address)

    def start(self, on_done=None) -> None:
        self._runner = asyncio.create_task(self._run(on_done), name=f"{self.id} call")

    async def abort(self, reason: str) -> None:
        """The offer could not be answered: close what was opened, finish."""
        self.core.feed(End(monotonic_ms(), SERVER, None, reason))
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
        await self._end_with(self.core.feed(End(monotonic_ms(), SERVER, code, reason,
                                                explain=True)))

    def _end(self, by: str, code: int | None, reason: str | None,
             at_ms: float | None = None) -> None:
        """End the call (the first end counts); ``at_ms`` is when it really
        ended, if earlier than now (the client's last sign of life)."""
        self._end_now(self.core.feed(End(monotonic_ms() if at_ms is None else at_ms,
                                         by, code, reason)))

    async def _end_with(self, actions: list[Action]) -> None:
        """Perform the actions that end the call: its ``error`` event, given
        up to 0.5 s to leave (the data channel's buffer, the sidebands'
        queues) before the call ends; the teardown closes the rest."""
        for action in actions:
            if isinstance(action, SendClient) and isinstance(action.data, str):
                self._send_event(action.data)
                channel = self.channel
                for _ in range(20):
                    if ((channel is None or channel.readyState != "open"
                         or not channel.bufferedAmount)
                            and all(queue.empty() for queue in self._sidebands.values())):
                        break
                    await asyncio.sleep(0.025)
        self._done.set()

    # -- lifecycle ---------------------------------------------------------

    async def _run(self, on_done) -> None:
        try:
            await self._connect_upstream()
            if not self._done.is_set():
                self._spawn(self._upstream_to_client(), "upstream->client")
                self._spawn(self._client_to_upstream(), "client->upstream")
                self._spawn(self._ice_watchdog(), "ice watchdog")
                await self._timers()
        except Exception:  # noqa: BLE001 - the call must still be finished
            log.exception("call %s failed", self.id)
            self._end(SERVER, 1011, "internal error")
        finally:
            await self._teardown()
            if on_done is not None:
                on_done()

    async def _timers(self) -> None:
        """Run until the call ends, feeding the core its timers
        (``RelayCore.next_timer_ms``): at the session's maximum duration (the
        plan's ``max_session_s``, or ``relay.max_session_s`` if shorter) the
        ``session_expired`` error event goes out on the data channel and the
        sidebands, then the call is hung up (``_end_with``)."""
        core = self.core
        while not self._done.is_set():
            due = core.next_timer_ms()
            timeout = None if due is None else max(0.0, (due - monotonic_ms()) / 1000.0)
            try:
                await asyncio.wait_for(self._done.wait(), timeout)
            except TimeoutError:
                actions = core.feed(Tick(monotonic_ms()))
                if core.done:
                    await self._end_with(actions)
                elif not await self._perform(actions):
                    return

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
        except (UpstreamRefused, UpstreamError) as exc:
            if not isinstance(exc, UpstreamRefused):
                log.warning("call %s: %s", self.id, exc.message)
            # the error event, then the call ends (1008 refused, 1011 unreachable)
            self._end_now(self.core.feed(UpstreamFailed(monotonic_ms(), exc)))
            return
        await self._perform(self.core.feed(UpstreamOpened(monotonic_ms())))
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
                if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                    # a binary frame is answered with an error (the core's)
                    self._client_queue.put_nowait((msg.data, queue.put_nowait))
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
        """Tell lost consent from a hang-up (``ice.watch_consent``)."""
        ice.watch_consent(self.pc, self._on_consent_lost)

    def _on_consent_lost(self) -> None:
        self._consent_lost = True

    def _watch_liveness(self) -> None:
        """Note the time of every datagram the client sends on the call's
        ICE connection (``ice.watch_datagrams``; the call's SRTP goes
        straight to its inbound fast path) and end the call
        ``consent_grace_s`` after the last one. A browser keeps sending
        while it lives, silent or not (RTP or Opus DTX frames, RTCP reports,
        STUN checks every few seconds); a closed tab, a crashed browser or a
        dropped network sends nothing. aioice only notices after its 30 s
        consent expiry (RFC 7675 §5.1)."""
        if ice.watch_datagrams(self.pc, self._datagram):
            self._last_seen_ms = monotonic_ms()
            self._spawn(self._liveness_watchdog(), "liveness")

    def _datagram(self, data: Any) -> bool:
        """A datagram from the client: noted; True when the inbound RTP fast
        path took it."""
        self._last_seen_ms = monotonic_ms()
        rtp = self._rtp_in
        return rtp is not None and rtp(data)

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
            if "relay" not in ice.candidate_types(self.pc, local=True):
                return True, "voxgate's TURN allocation failed (relay policy)"
            return True, "voxgate's relay policy"
        types = self.offer.candidate_types
        if types and all(t == "relay" for t in types):
            return True, "the client offered only relay candidates"
        if (not types and self.settings.turn_urls
                and not ice.candidate_types(self.pc, local=False)):
            # Nothing offered and no check ever arrived: with TURN handed out,
            # the relay was the only way left (a client whose allocation failed).
            return True, "no client candidate offered or learnt (its TURN allocation failed)"
        return False, ""

    def _record_pair(self) -> None:
        """The nominated pair's candidate types."""
        pair = ice.nominated_pair(self.pc)
        if pair is not None:
            self.meter.candidate_pair(*pair)

    # -- media -------------------------------------------------------------

    def _on_track(self, track) -> None:
        """The browser's audio: its receiver decodes each packet on the
        event loop as it arrives (``rtp_in.decode_inline``), into 40 ms
        chunks of PCM16 24 kHz for the provider."""
        if track.kind != "audio" or self._inbound is not None:
            return
        receiver = next(t.receiver for t in self.pc.getTransceivers()
                        if t.receiver.track is track)
        self._inbound = InboundAudio(chunk_ms=40)
        inline = rtp_in.decode_inline(receiver, self._inbound.feed, self._inbound.end)
        self._rtp_in = rtp_in.receive_inline(receiver, inline)
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
        await self._perform(self.core.feed(ClientAudio(monotonic_ms(), pcm)))

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
        core = self.core
        while True:
            item = await self._client_queue.get()
            if item is None:
                return
            data, reply = item
            if not await self._perform(core.feed(ClientMessage(monotonic_ms(), data, reply))):
                return

    async def _upstream_to_client(self) -> None:
        upstream, core = self.upstream, self.core
        assert upstream is not None
        while True:
            msg = await upstream.receive()
            if msg.type in _UPSTREAM_ENDS:
                break
            if msg.type is not WSMsgType.TEXT and msg.type is not WSMsgType.BINARY:
                continue  # PING/PONG: aiohttp answers pings (autoping)
            if not await self._perform(core.feed(UpstreamMessage(monotonic_ms(), msg.data))):
                return
            if not self._ready:
                self._check_ready()
        # a close frame's code and reason; without one, 1006 and why
        # ("provider connection lost", "provider connection reset", …)
        code, reason = upstream_end(upstream, msg)
        self._end_now(core.feed(UpstreamClosed(monotonic_ms(), code, reason)))

    async def _perform(self, actions: list[Action]) -> bool:
        """Perform the core's actions; False when the call stops relaying
        (fenced, or ended: the teardown closes the upstream and finishes)."""
        for action in actions:
            if isinstance(action, SendUpstream):
                upstream = self.upstream
                assert upstream is not None
                await upstream.send_str(action.data)
            elif isinstance(action, PlayAudio):
                self.track.push(action.audio, action.response_id)
            elif isinstance(action, SendClient):
                if isinstance(action.data, str):
                    reply = action.to
                    if callable(reply):
                        reply(action.data)  # an error answering that sender's event
                    else:
                        self._send_event(action.data)
            elif isinstance(action, AudioDone):
                self.track.audio_done(action.response_id)
            elif isinstance(action, ClearAudio):
                self.track.clear()
            elif isinstance(action, FlushInput):
                await self._flush_inbound()
            elif isinstance(action, SendRateLimits):
                limits = await rate_limits_within(self.gw, self.active)
                if limits is not None:
                    self._send_event(limits)
            elif isinstance(action, Fence):
                await self.gw.fence(self.active)
                return False
            elif isinstance(action, CloseClient):
                self._done.set()
                return False
        return True

    def _end_now(self, actions: list[Action]) -> None:
        """The call ends: its ``error`` event, if any, goes out; the
        teardown closes the rest."""
        for action in actions:
            if isinstance(action, SendClient) and isinstance(action.data, str):
                self._send_event(action.data)
        self._done.set()

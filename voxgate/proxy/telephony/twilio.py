"""Phone calls from Twilio: ``GET /v1/telephony/twilio`` (WebSocket), the
server end of a bidirectional Media Stream (TwiML ``<Connect><Stream>``),
bridged to the provider's Realtime WebSocket with ``audio/pcmu`` both ways.

A thin shell over the pure protocol of ``twilio_protocol``:

1. The upgrade: its ``X-Twilio-Signature`` and the URLs it may cover are
   kept (``call_auth.UpgradeSignature``), checked at ``start`` with the token
   of the project the key names, else the server-wide
   ``TelephonySettings.twilio_auth_token``; with a server-wide token, an
   upgrade without any signature gets HTTP 403 ``invalid_twilio_signature``
   at once.
2. ``connected`` (optional), then ``start`` within ``START_TIMEOUT_S``:
   the key from ``start.customParameters.authorization``
   (``Bearer <project API key or ephemeral key>``), an optional
   ``customParameters.session`` (a JSON session config: instructions, voice,
   tools; ``model`` picks the model, as does a ``model`` parameter) merged
   over an ephemeral key's own config; ``customParameters.voxgate_fault``
   goes to the local provider only (as the WebSocket route's query).
   Authentication, Twilio's signature (1008 ``invalid_twilio_signature``)
   and admission (rate,
   quota, concurrency: ``Gateway.admit``, ``transport="twilio"``) as for
   every session; a refusal closes the stream (1008, or 1013 for the
   transient refusals: rate, concurrency, service unavailable) with
   ``<code>: <message>`` as the close reason, logged and counted
   (``voxgate_admission_refusals_total``), the attempt written to the audit
   log (``call_auth.RefusalLog``), nothing billed.
3. The bridge, on the sans-I/O relay core (``voxgate.proxy.relay.RelayCore``,
   media mode): the upstream gets one ``session.update`` first (the config,
   the audio formats forced to ``audio/pcmu``; held and folded into
   ``session.created`` as for an ephemeral key's), then every ``media``
   payload as ``input_audio_buffer.append`` (the μ-law bytes unchanged),
   every ``dtmf`` digit as a user ``conversation.item.create``
   (``input_text`` ``"DTMF: <digit>"``); the provider's audio
   (``PlayAudio``) goes to Twilio as ``media`` frames of 20 ms
   (``FRAME_BYTES``; the μ-law bytes unchanged), each followed by a
   ``mark``; its other events are metered and go nowhere. On
   ``input_audio_buffer.speech_started`` (barge-in, ``ClearAudio``) with
   audio still queued at Twilio: ``clear`` to Twilio, then
   ``conversation.item.truncate`` upstream with ``audio_end_ms`` = the
   audio of that item Twilio has played, from the marks it echoed
   (``PlaybackTracker``); the rest of that response's audio is dropped.
4. The end: ``stop`` or a closed socket ends the upstream session (recorded
   ``closed_by: "client"``, 1000); an upstream close ends the stream (1000
   when the provider closed normally, else 1011 "upstream connection
   lost"); a protocol violation by the peer ends it (``closed_by:
   "server"``, 1003 for a binary frame, 1008 otherwise, reason ``twilio
   protocol error: <code>: <message>``); idle timeout as ``[relay]`` says;
   the maximum duration (the plan's ``max_session_s``, or
   ``relay.max_session_s`` if shorter) closes the stream 1000 with reason
   ``max_session_s`` (recorded ``closed_by: "server"``, the verdict the
   session's own). An ``error`` event the core would send a
   WebSocket client is dropped: the close reason says why.

Metering (by the core, as for every transport): connect latency =
``start`` received → upstream ``session.created``; duration = ``start`` →
the end; audio in/out from the μ-law bytes (8 000 bytes per second).
``call_sid`` and ``stream_sid`` are stored on the session
(``Store.set_session_call``). ``event_counts`` also counts ``twilio.dtmf``
and ``twilio.clear``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Any, NoReturn

import aiohttp
import orjson
from aiohttp import WSMsgType, web

from voxgate.errors import (
    MalformedEvent,
    PermissionDenied,
    UpstreamError,
    VoxgateError,
)
from voxgate.metering.meter import CLIENT, SERVER, SessionMeter
from voxgate.models import Principal, Project
from voxgate.proxy.auth import ip_allowed, resolve, session_model
from voxgate.proxy.gateway import ActiveSession, Gateway, monotonic_ms
from voxgate.proxy.keys import CONNECTOR, GATEWAY
from voxgate.proxy.relay import (
    CLOSING,
    Accepted,
    Action,
    ClearAudio,
    ClientAudio,
    ClientClosed,
    ClientMessage,
    CloseClient,
    CloseUpstream,
    End,
    Fence,
    Finish,
    PlayAudio,
    RelayConfig,
    RelayCore,
    SendUpstream,
    UpstreamClosed,
    UpstreamFailed,
    UpstreamMessage,
    UpstreamOpened,
)
from voxgate.proxy.telephony.call_auth import REFUSALS, UpgradeSignature
from voxgate.proxy.telephony.settings import TWILIO_AUTH_TOKEN, TWILIO_REFUSALS
from voxgate.proxy.telephony.twilio_protocol import (
    CLOSE_POLICY,
    Dtmf,
    Mark,
    Media,
    PlaybackTracker,
    Start,
    Stop,
    StreamState,
    TwilioProtocolError,
    bearer_from_parameters,
    clear_message,
    mark_message,
    media_message,
)
from voxgate.proxy.upstream import (
    LOCAL_PASSTHROUGH,
    UpstreamConnector,
    UpstreamRefused,
    upstream_end,
)
from voxgate.proxy.ws_relay import bounded, close_reason, pump

__all__ = ["TWILIO_PATH", "twilio_stream", "TwilioCall", "START_TIMEOUT_S", "TRANSPORT", "FRAME_BYTES",
           "session_config", "refusal_close_code", "dtmf_item"]

log = logging.getLogger("voxgate.telephony")

TWILIO_PATH = "/v1/telephony/twilio"
TRANSPORT = "twilio"
START_TIMEOUT_S = 10.0
"""Longest wait for Twilio's ``start`` after the upgrade, seconds."""
FRAME_BYTES = 160
"""Reply audio goes to Twilio in ``media`` frames of at most this many
μ-law bytes (20 ms, the size Twilio itself sends), each followed by a
``mark``."""
_PEER_CLOSE_S = 0.25  # a peer's answer to a close frame
_RECORD_WAIT_S = 0.6  # the session's record, before the stream's close is sent anyway
_TRANSIENT = frozenset({"rate_limit_exceeded", "concurrency_limit_exceeded",
                        "service_unavailable"})
_PCMU = {"type": "audio/pcmu"}


def refusal_close_code(err: VoxgateError) -> int:
    """The close code of a call refused at ``start``: 1013 (try again
    later, RFC 6455 §7.4.1 registry) for rate, concurrency and service
    unavailable refusals, 1008 (policy violation) for the rest."""
    return 1013 if err.code in _TRANSIENT else CLOSE_POLICY


def session_config(key_session: dict[str, Any], parameter: dict[str, Any]) -> dict[str, Any]:
    """The ``session`` of the first ``session.update``: an ephemeral key's
    config with the stream's ``customParameters.session`` over it (top-level
    fields replaced), ``type: "realtime"``, no ``model`` (pinned at
    admission), input and output formats ``audio/pcmu`` whatever was asked.
    A pure function."""
    session: dict[str, Any] = {**key_session, **parameter, "type": "realtime"}
    session.pop("model", None)
    audio = session.get("audio")
    audio = dict(audio) if isinstance(audio, dict) else {}
    for side in ("input", "output"):
        part = audio.get(side)
        audio[side] = {**(part if isinstance(part, dict) else {}), "format": dict(_PCMU)}
    session["audio"] = audio
    return session


def dtmf_item(digit: str) -> dict[str, Any]:
    """The ``conversation.item.create`` a DTMF digit becomes: a user message
    with one ``input_text`` part ``"DTMF: <digit>"``."""
    return {"type": "conversation.item.create",
            "item": {"type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": f"DTMF: {digit}"}]}}


def _parameter_session(params: dict[str, str]) -> dict[str, Any]:
    """``customParameters.session`` parsed.

    Raises:
        MalformedEvent: not a JSON object.
    """
    raw = params.get("session")
    if raw is None or not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise MalformedEvent("customParameters.session must be a JSON object (a session config)",
                             code="invalid_session", param="customParameters.session")
    return value


def _stream_urls(request: web.Request) -> list[str]:
    """The URLs Twilio may have signed for this upgrade: ``wss://`` and
    ``ws://`` on the ``Host`` the request came to (and the
    ``X-Forwarded-Host`` of a proxy), with the path and query."""
    hosts = [request.headers.get("X-Forwarded-Host"), request.host]
    urls = []
    for host in hosts:
        if host:
            for scheme in ("wss", "ws"):
                urls.append(f"{scheme}://{host.split(',')[0].strip()}{request.path_qs}")
    return urls


async def twilio_stream(request: web.Request) -> web.StreamResponse:
    """Handle ``GET /v1/telephony/twilio``.

    Raises (rendered as JSON by the error middleware, before any upgrade):
        InvalidRequest (400): not a WebSocket upgrade.
        PermissionDenied (403, ``invalid_twilio_signature``): a server-wide
            auth token is configured and ``X-Twilio-Signature`` is missing
            (a signature under another token is checked at ``start``, with
            the token of the call's project: ``call_auth``).
    """
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise MalformedEvent(f"GET {TWILIO_PATH} expects a WebSocket upgrade (Twilio Media "
                             "Streams)", code="websocket_upgrade_required")
    signed = UpgradeSignature(request.headers.get("X-Twilio-Signature"),
                              tuple(_stream_urls(request)), request.app.get(TWILIO_AUTH_TOKEN))
    if signed.refused_at_upgrade():
        log.warning("twilio stream from %s refused: no X-Twilio-Signature", request.remote)
        raise PermissionDenied("X-Twilio-Signature is missing: this server checks Twilio's "
                               "signature of every stream", code="invalid_twilio_signature")
    gw: Gateway = request.app[GATEWAY]
    ws = web.WebSocketResponse(
        heartbeat=gw.settings.relay.ping_interval_s or None,
        max_msg_size=gw.settings.relay.max_message_bytes,
        compress=False,
        autoclose=False,  # the close is answered once the session is finished
    )
    await ws.prepare(request)
    call = TwilioCall(gw, request.app[CONNECTOR], request, ws)
    call.signed = signed
    await call.run()
    return ws


class _Refused(Exception):
    """The stream ended before a session was admitted (already closed)."""


class TwilioCall:
    """One phone call: the Twilio socket, its session and upstream."""

    def __init__(self, gw: Gateway, connector: UpstreamConnector, request: web.Request,
                 ws: web.WebSocketResponse) -> None:
        self.gw = gw
        self.connector = connector
        self.request = request
        self.ws = ws
        self.state = StreamState()
        self.tracker = PlaybackTracker()
        self.active: ActiveSession | None = None
        self.meter: SessionMeter | None = None
        self.upstream: aiohttp.ClientWebSocketResponse | None = None
        self.model = ""
        self.core: RelayCore | None = None
        self._closing: list[Action] = []  # the closing actions, kept until the readers stop
        self._ready = False  # upstream session.created seen (connect latency recorded)
        self._items: dict[str | None, str] = {}  # response id → the item its audio belongs to
        self.key_session: dict[str, Any] = {}  # an ephemeral key's session config
        self.parameter_session: dict[str, Any] = {}  # customParameters.session
        # customParameters.voxgate_fault: passed to the local provider only
        # (``UpstreamConnector.target``), as the WebSocket route's query is
        self.upstream_query: dict[str, str] = {}
        self.signed = UpgradeSignature(None, ())  # the upgrade's X-Twilio-Signature
        self._refused_project: Project | None = None  # the project a refused call's key named

    # -- before admission ------------------------------------------------

    async def run(self) -> None:
        try:
            start, start_ms = await self._await_start()
            active = await self._admit(start)
        except _Refused:
            return
        self.active, self.meter = active, active.meter
        # a phone line is μ-law both ways from its first frame: the audio
        # Twilio streams before the provider's session.created (which waits
        # for the first session.update's answer) counts 8 bytes a ms, not
        # as the provider's default format
        active.meter.session_formats({"audio": {"input": {"format": dict(_PCMU)},
                                                "output": {"format": dict(_PCMU)}}})
        active.close = self._close_from_outside
        active.transport_open = self._transport_open
        try:
            await self._store_call(start)
            await self._bridge(start_ms)
        finally:
            if self.core is None or not self.core.done or active.finishing is None:
                await self._close_unfinished()  # a failure before or in the bridge

    async def _await_start(self) -> tuple[Start, float]:
        """Read ``connected`` (optional) and ``start``; returns ``start``
        and when it was received (monotonic ms).

        Raises:
            _Refused: the stream closed, broke the protocol or sent no
                ``start`` within ``START_TIMEOUT_S`` (the socket is closed).
        """
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    msg = await self.ws.receive()
            except TimeoutError:
                await self._refuse(CLOSE_POLICY, f"no start message within {START_TIMEOUT_S:g} s")
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                raise _Refused  # closed before start: nothing to record
            try:
                parsed = self.state.receive(msg.data)
            except TwilioProtocolError as err:
                await self._refuse(err.close_code, f"twilio protocol error: {err}")
            if isinstance(parsed, Start):
                return parsed, monotonic_ms()

    async def _refuse(self, code: int, reason: str) -> NoReturn:
        """Record the attempt in the audit log (``call_auth.RefusalLog``),
        then close the stream before any session exists (recorded once the
        peer sees the close); raises ``_Refused``."""
        start = self.state.start
        log.warning("twilio stream %s (call %s) refused: %s", self.state.stream_sid or "-",
                    start.call_sid if start else "-", reason)
        project = self._refused_project
        what, sep, message = reason.removeprefix("twilio protocol error: ").partition(": ")
        refusals = self.request.app.get(TWILIO_REFUSALS) or REFUSALS
        await refusals.record(
            self.gw.store, account_id=project.account_id if project else None,
            close_code=code, code=what if sep else None, message=message if sep else reason,
            call_sid=start.call_sid if start else None, stream_sid=self.state.stream_sid,
            account_sid=start.account_sid if start else None,
            project_id=project.id if project else None, remote=self.request.remote)
        await self._close_ws(code, reason)
        raise _Refused

    async def _admit(self, start: Start) -> ActiveSession:
        """Authenticate ``start``'s key and admit the session.

        Raises:
            _Refused: the key or the session config was refused, or
                admission said no (the stream is closed with the reason).
        """
        gw = self.gw
        try:
            params = start.custom_parameters
            principal = await self._principal(bearer_from_parameters(params))
            self._refused_project = principal.project
            # Twilio's signature of the upgrade, now that the key names the
            # project: its own token, else the server's (call_auth)
            self.signed.check(principal.project, gw.provider_keys)
            self.parameter_session = _parameter_session(params)
            self.upstream_query = {k: params[k] for k in LOCAL_PASSTHROUGH if k in params}
            requested = params.get("model") or self.parameter_session.get("model")
            upstream = gw.settings.upstream
            self.model = session_model(principal, requested if isinstance(requested, str)
                                       and requested else None,
                                       upstream.default_model, upstream.allowed_models)
            self.key_session = dict(principal.ephemeral.session) if principal.ephemeral else {}
        except VoxgateError as err:
            for hook in gw.on_refused:  # counted as admission's refusals are
                try:
                    hook(err)
                except Exception:  # noqa: BLE001 - hooks must not break the refusal
                    log.exception("gateway hook %r failed", hook)
            await self._refuse(refusal_close_code(err), f"{err.code or err.type}: {err.message}")
        try:
            return await gw.admit(principal, TRANSPORT, self.model)
        except VoxgateError as err:
            await self._refuse(refusal_close_code(err), f"{err.code or err.type}: {err.message}")

    async def _principal(self, key: str | None) -> Principal:
        principal = await resolve(self.gw.store, key, allow_ephemeral=True)
        # A project's IP allowlist applies to its API keys as on every route
        # (Twilio's media servers must be allowed); web origins do not: no
        # browser is involved.
        if principal.api_key is not None and not ip_allowed(self.request.remote,
                                                            principal.project.allowed_ips):
            raise PermissionDenied(
                f"this API key's project does not allow requests from {self.request.remote}",
                code="ip_not_allowed")
        return principal

    async def _store_call(self, start: Start) -> None:
        """``call_sid`` and ``stream_sid`` on the record and the stored row."""
        assert self.active is not None
        record = self.active.record
        record.call_sid, record.stream_sid = start.call_sid, start.stream_sid
        try:
            await self.gw.store.set_session_call(record.id, start.call_sid, start.stream_sid)
        except Exception as exc:  # noqa: BLE001 - the call goes on; the ids are in the log
            log.warning("session %s: call %s, stream %s not stored: %s: %s", record.id,
                        start.call_sid, start.stream_sid, type(exc).__name__, exc)

    # -- the bridge (on the relay core) -----------------------------------

    async def _bridge(self, start_ms: float) -> None:
        """Open the upstream and relay both ways through the relay core
        until the call ends; the session is finished and both sockets closed
        on every path."""
        active = self.active
        assert active is not None
        relay = self.gw.settings.relay
        # the plan's limits (issue 21, item 4): its maximum duration (or the
        # relay's, if shorter) and models
        limit_s = active.plan.session_limit_s(relay.max_session_s)
        core = self.core = RelayCore(RelayConfig(
            model=self.model, max_bytes=relay.max_message_bytes,
            # always set: the first session.update carries the audio formats
            key_session=session_config(self.key_session, self.parameter_session),
            media=True, idle_timeout_ms=relay.idle_timeout_s * 1000.0,
            max_session_ms=limit_s * 1000.0 if limit_s else None,
            models=active.plan.models), active.meter, active)
        core.feed(Accepted(start_ms))
        try:
            self.upstream = await self.connector.connect(self.model, self.upstream_query,
                                                         keepalive=True,
                                                         api_key=active.provider_key)
        except (UpstreamRefused, UpstreamError) as exc:
            if not isinstance(exc, UpstreamRefused):
                log.warning("session %s: %s", self._sid, exc.message)
            await self._close(core.feed(UpstreamFailed(monotonic_ms(), exc)))
            return
        await self._perform(core.feed(UpstreamOpened(monotonic_ms())))
        t2u = asyncio.create_task(self._twilio_to_upstream(), name="twilio->upstream")
        u2t = asyncio.create_task(self._upstream_to_twilio(), name="upstream->twilio")
        await pump(self, core, (t2u, u2t))  # as the WebSocket relay

    async def _twilio_to_upstream(self) -> None:
        ws, core, state = self.ws, self.core, self.state
        assert core is not None and self.meter is not None
        while True:
            msg = await ws.receive()
            now = monotonic_ms()
            if msg.type is not WSMsgType.TEXT and msg.type is not WSMsgType.BINARY:
                code = msg.data if msg.type is WSMsgType.CLOSE else ws.close_code
                actions = core.feed(ClientClosed(now, code))
            else:
                try:
                    parsed = state.receive(msg.data)
                except TwilioProtocolError as err:
                    self.meter.client_rejected(len(msg.data))
                    reason = f"twilio protocol error: {err}"
                    log.warning("session %s: %s", self._sid, reason)
                    actions = core.feed(End(now, SERVER, err.close_code, reason))
                else:
                    if isinstance(parsed, Media):
                        # strict base64 (checked); the μ-law bytes go up unchanged
                        actions = core.feed(ClientAudio(now, base64.b64decode(parsed.payload)))
                    elif isinstance(parsed, Mark):
                        self.tracker.echoed(parsed.name)
                        continue
                    elif isinstance(parsed, Dtmf):
                        _count(self.meter, "twilio.dtmf")
                        log.info("session %s: DTMF %s", self._sid, parsed.digit)
                        actions = core.feed(ClientMessage(
                            now, orjson.dumps(dtmf_item(parsed.digit)).decode()))
                    elif isinstance(parsed, Stop):
                        actions = core.feed(End(now, CLIENT, 1000, "stop: the stream ended"))
                    else:
                        continue
            if not await self._perform(actions) or core.done:
                return

    async def _upstream_to_twilio(self) -> None:
        upstream, core, meter = self.upstream, self.core, self.meter
        assert upstream is not None and core is not None and meter is not None
        while True:
            msg = await upstream.receive()
            now = monotonic_ms()
            item_id: str | None = None
            if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                actions = core.feed(UpstreamMessage(now, msg.data))
                if any(isinstance(a, PlayAudio) for a in actions):
                    item_id = _item_id(msg.data)
                if not self._ready and core.upstream_ready:
                    self._ready = True
                    meter.media_ready(now)  # connect latency: start → session.created
            else:
                actions = core.feed(UpstreamClosed(now, *upstream_end(upstream, msg)))
            if not await self._perform(actions, item_id) or core.done:
                return

    async def _perform(self, actions: list[Action], item_id: str | None = None) -> bool:
        """Perform a live call's actions. False when the relaying stops: a
        fence, or the call's end (its closing actions are kept for
        ``_bridge`` to perform once the relay tasks are stopped). The
        provider's other events (``SendClient``) and the plan's rate limits
        have no place on a phone line: dropped (metered by the core)."""
        upstream, ws = self.upstream, self.ws
        assert upstream is not None and self.active is not None
        sid = self.state.stream_sid
        assert sid is not None
        for i, action in enumerate(actions):
            if isinstance(action, CLOSING):
                self._closing = actions[i:]
                return False
            if isinstance(action, SendUpstream):
                await upstream.send_str(action.data)
            elif isinstance(action, PlayAudio):
                item = item_id or self._items.get(action.response_id) or action.response_id or "-"
                self._items[action.response_id] = item
                # in frames of 20 ms, each followed by its mark: what was
                # played is then known to 20 ms when the caller barges in
                audio = action.audio
                for off in range(0, len(audio), FRAME_BYTES):
                    frame = audio[off:off + FRAME_BYTES]
                    await ws.send_str(media_message(sid, base64.b64encode(frame).decode()))
                    await ws.send_str(mark_message(sid, self.tracker.sent(item, len(frame))))
            elif isinstance(action, ClearAudio):
                if not await self._barge_in(sid):
                    return False
            elif isinstance(action, Fence):
                await self.gw.fence(self.active)
                return False
        return True

    async def _barge_in(self, sid: str) -> bool:
        """The caller started speaking (``ClearAudio``): when reply audio is
        still queued at Twilio, ``clear`` it, then truncate that item
        upstream at the audio actually played (from the marks echoed)."""
        cut = self.tracker.clear()
        if cut is None:
            return True
        assert self.core is not None and self.meter is not None
        await self.ws.send_str(clear_message(sid))
        _count(self.meter, "twilio.clear")
        truncate = {"type": "conversation.item.truncate", "item_id": cut.item_id,
                    "content_index": 0, "audio_end_ms": cut.audio_end_ms}
        return await self._perform(self.core.feed(ClientMessage(
            monotonic_ms(), orjson.dumps(truncate).decode())))

    # -- the end ---------------------------------------------------------

    @property
    def _sid(self) -> str:
        return self.active.record.id if self.active is not None else "-"

    def _transport_open(self) -> bool:
        upstream = self.upstream
        return not self.ws.closed or (upstream is not None and not upstream.closed)

    async def _close_ws(self, code: int, reason: str) -> None:
        if self.ws.closed:
            return
        try:
            await bounded(self.ws.close(code=code, message=close_reason(reason)), _PEER_CLOSE_S)
        except (ConnectionError, RuntimeError):
            pass

    async def _close(self, actions: list[Action]) -> None:
        """Perform the actions that end a call, each bounded, none raising:
        the closes (Twilio's socket and the upstream at once when voxgate
        ends the call), the session's finish. An ``error`` event for the
        client (``SendClient``) is dropped: Twilio takes none; the close
        reason says why."""
        upstream = self.upstream
        for action in actions:
            if isinstance(action, CloseClient):
                await self._close_ws(action.code, action.reason)
            elif isinstance(action, CloseUpstream):
                if upstream is not None and not upstream.closed:
                    await bounded(upstream.close(code=action.code,
                                                 message=close_reason(action.reason)),
                                  _PEER_CLOSE_S)
            elif isinstance(action, Finish):
                assert self.active is not None
                recorded, _ = await bounded(self.gw.finish(self.active), _RECORD_WAIT_S)
                if not recorded:
                    log.warning("session %s: stream closed before the session was finished "
                                "(record and lease not done within %g s)", self._sid,
                                _RECORD_WAIT_S)

    async def _close_unfinished(self) -> None:
        """The relay stopped with no closing actions of its own: closed
        from outside (that close is under way), or a relay task failed. The
        upstream is closed, the session finished, Twilio's socket closed
        (1011 when nothing ended the session)."""
        upstream = self.upstream
        if upstream is not None and not upstream.closed:
            await bounded(upstream.close(), _PEER_CLOSE_S)
        await self._close([Finish()])
        if self.core is None or not self.core.done:
            await self._close_ws(1011, "internal error")

    async def _close_from_outside(self, code: int, reason: str) -> None:
        """End the call from outside (shutdown 1001, fencing 1011)."""
        if self.core is None:
            return
        await self._close(self.core.feed(End(monotonic_ms(), SERVER, code, reason,
                                             explain=True)))


def _item_id(data: str | bytes) -> str | None:
    """The ``item_id`` of an upstream audio delta (None when it has none)."""
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    item = event.get("item_id") if isinstance(event, dict) else None
    return item if isinstance(item, str) else None


def _count(meter: SessionMeter, name: str) -> None:
    counts = meter.measurements().event_counts
    counts[name] = counts.get(name, 0) + 1

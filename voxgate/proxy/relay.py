"""The relay core: one sans-I/O object per session that every relay shell
(the WebSocket relay, a WebRTC call, a phone stream) feeds and obeys.

Like ``websockets``' sans-I/O ``Protocol``, :class:`RelayCore` does no I/O,
reads no clock and starts no task: the shell reads its sockets, feeds the
core one typed event at a time (:meth:`RelayCore.feed`; every event carries
its own monotonic-ms timestamp ``at_ms``, ``voxgate.proxy.gateway.monotonic_ms``)
and performs the actions it returns, in order. The core holds the relay
rules of the OpenAI Realtime protocol
(https://platform.openai.com/docs/api-reference/realtime):

- client events are validated before they go upstream
  (``voxgate.proxy.events.parse_client_event``); a bad one is answered with
  an ``error`` event to its sender and not relayed
  (https://platform.openai.com/docs/api-reference/realtime-server-events/error);
- a client ``session.update`` cannot change the pinned model
  (``pin_session_model``); an ephemeral key's session config is applied
  before the client's first event (``KeySession``);
- the provider's ``rate_limits.updated`` is dropped; the customer's own
  follows ``session.created`` and each ``response.done`` (:class:`SendRateLimits`);
- what is metered: every relayed event, both ways, goes to the session's
  :class:`~voxgate.metering.meter.SessionMeter` (itself sans-I/O, fed
  here with each event's own timestamp), rejected client events as
  ``client_rejected``, how the session ended as ``closed``;
- fencing: a data frame at or past ``lease.valid_until`` is not relayed
  (:class:`Fence`);
- how a session ends and what each side is told (close codes, RFC 6455
  §7.4): a client close is passed upstream with its code; a provider close
  other than 1000/1001 — a provider connection lost without a close frame
  is 1006, ``voxgate.proxy.upstream.upstream_end`` — reaches the client as
  an ``error`` event (``upstream_closed``) and close 1011; voxgate's own
  ends (idle timeout, maximum duration: 1000; shutdown 1001 and fencing
  1011 with an ``error`` event first, :func:`closing_error`); keepalive
  pings of a quiet side and 1006 when one stays unanswered.

In media mode (``RelayConfig.media``: a WebRTC call, a phone stream) voxgate
owns the audio: the provider's audio deltas become :class:`PlayAudio`
instead of client events, barge-in and ``response.cancel`` clear the
output (:class:`ClearAudio`), ``output_audio_buffer.clear`` is answered by
voxgate, and the caller's audio comes in as :class:`ClientAudio`.

A shell, in short::

    core = RelayCore(RelayConfig(model=..., max_bytes=...), active.meter, active)
    core.feed(Accepted(monotonic_ms()))
    ...  # open the upstream, then: perform(core.feed(UpstreamOpened(monotonic_ms())))
    async for msg in client:  # and likewise for the upstream's frames
        await perform(core.feed(ClientMessage(monotonic_ms(), msg.data)))
        if core.done:
            break

where ``perform`` sends, pings, fences and closes as each action says
(``voxgate.proxy.ws_relay.Relay`` is the reference shell, including the
bounded closes; ``voxgate.proxy.webrtc.call.Call`` the media one).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from voxgate.errors import (
    ServiceUnavailable,
    UpstreamError,
    UpstreamRefused,
    VoxgateError,
    error_event,
    new_event_id,
)
from voxgate.metering.events import AUDIO_APPEND, CLIENT, OUTPUT_AUDIO_EVENTS, UPSTREAM, classify
from voxgate.metering.meter import SERVER, SessionMeter
from voxgate.models.plans import (
    MAX_SESSION_REASON,
    model_not_allowed_event,
    session_expired_event,
    update_model,
)
from voxgate.proxy.events import (
    RATE_LIMITS,
    KeySession,
    parse_client_event,
    pin_session_model,
    utf8_len,
)
from voxgate.proxy.upstream import PROVIDER_TIMEOUT

__all__ = [
    "RelayCore", "RelayConfig", "Lease", "CLIENT", "UPSTREAM", "SERVER",
    # events
    "Event", "Accepted", "ClientMessage", "ClientAudio", "Heard", "ClientClosed",
    "UpstreamOpened", "UpstreamFailed", "UpstreamMessage", "UpstreamClosed", "Tick", "End",
    # actions
    "Action", "SendUpstream", "SendClient", "SendRateLimits", "Ping", "Fence", "PlayAudio",
    "ClearAudio", "AudioDone", "FlushInput", "CloseUpstream", "CloseClient", "Finish", "CLOSING",
    # rules shared with the shells
    "sendable", "close_reason", "closing_error", "upstream_closed_error", "LEASE_EXPIRED",
]

log = logging.getLogger("voxgate.relay")

LEASE_EXPIRED = "lease_expired"
"""``error.code`` of the event sent before a fenced session's 1011 close."""
# After these upstream events the client gets the customer's rate_limits.updated.
_RATE_LIMITS_AFTER = frozenset({"session.created", "response.done"})
_OUTPUT_AUDIO_DONE = frozenset({"response.output_audio.done", "response.audio.done"})
# RFC 6455 §7.4: codes an endpoint may send in a Close frame.
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})
_RESPONSE_CANCEL = orjson.dumps({"type": "response.cancel"}).decode()


def sendable(code: int | None, fallback: int = 1011) -> int:
    """A close code that may go on the wire (1005/1006/1015 may not)."""
    if code is not None and (code in _SENDABLE or 3000 <= code <= 4999):
        return code
    return fallback


def close_reason(text: str) -> bytes:
    """``text`` as a close frame's reason: UTF-8, cut to the 123 bytes a
    close frame has room for (RFC 6455 §5.5), on a character boundary."""
    return text.encode()[:123].decode("utf-8", "ignore").encode()


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


class Lease(Protocol):
    """What the core reads of the session's lease (``ActiveSession``)."""

    valid_until: float
    """Monotonic seconds; a data frame at or past it is not relayed."""


# -- events (shell → core) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """The client was accepted (WebSocket upgraded, WebRTC offer received,
    phone stream started): the session's clocks start."""

    at_ms: float


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """A client event: a text (``str``) or binary (``bytes``) frame, a data
    channel message. ``reply``: where an ``error`` answering it goes
    (:attr:`SendClient.to`); None for the client's one endpoint."""

    at_ms: float
    data: str | bytes
    reply: Hashable | None = None


@dataclass(frozen=True, slots=True)
class ClientAudio:
    """Media mode: a chunk of the caller's audio, in the session's input
    format (PCM16 24 kHz on a WebRTC call), to append upstream."""

    at_ms: float
    audio: bytes


@dataclass(frozen=True, slots=True)
class Heard:
    """A ping or pong from ``side`` (``client``/``upstream``): it is alive.
    (The shell answers pings itself.)"""

    at_ms: float
    side: str


@dataclass(frozen=True, slots=True)
class ClientClosed:
    """The client's close frame (its ``code``), or its connection ended
    without one (``code`` None or as the transport reports it)."""

    at_ms: float
    code: int | None


@dataclass(frozen=True, slots=True)
class UpstreamOpened:
    """The provider's WebSocket is open."""

    at_ms: float


@dataclass(frozen=True, slots=True)
class UpstreamFailed:
    """The provider's WebSocket could not be opened: ``UpstreamRefused``
    (the client's request refused, close 1008) or another
    ``UpstreamError`` (unreachable, 5xx: close 1011)."""

    at_ms: float
    error: VoxgateError


@dataclass(frozen=True, slots=True)
class UpstreamMessage:
    """A provider frame: text (``str``) or binary (``bytes``)."""

    at_ms: float
    data: str | bytes


@dataclass(frozen=True, slots=True)
class UpstreamClosed:
    """The provider's connection ended: ``code, reason =
    voxgate.proxy.upstream.upstream_end(ws, msg)`` (a close frame's, or 1006
    and "provider connection lost" / "… reset" / "provider keepalive timeout")."""

    at_ms: float
    code: int | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class Tick:
    """Timers: feed at or after :meth:`RelayCore.next_timer_ms`."""

    at_ms: float


@dataclass(frozen=True, slots=True)
class End:
    """The session ends for a reason outside the two sockets' frames:
    ``by`` ``server`` (shutdown 1001, fencing 1011, maximum duration, ICE
    failure) or ``client`` (a call hung up, its peer gone). ``explain``:
    an ``error`` event (:func:`closing_error`) tells the client why first
    (``ActiveSession.close``)."""

    at_ms: float
    by: str
    code: int | None
    reason: str | None
    explain: bool = False


Event = (Accepted | ClientMessage | ClientAudio | Heard | ClientClosed | UpstreamOpened
         | UpstreamFailed | UpstreamMessage | UpstreamClosed | Tick | End)


# -- actions (core → shell) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendUpstream:
    """Send this JSON text to the provider."""

    data: str


@dataclass(frozen=True, slots=True)
class SendClient:
    """Send this to the client: ``to`` the ``reply`` of the
    :class:`ClientMessage` it answers, None to every client endpoint."""

    data: str | bytes
    to: Hashable | None = None


@dataclass(frozen=True, slots=True)
class SendRateLimits:
    """Send the customer's ``rate_limits.updated``
    (``ws_relay.rate_limits_within``; nothing when it cannot be had)."""


@dataclass(frozen=True, slots=True)
class Ping:
    """Ping ``side`` (keepalive)."""

    side: str


@dataclass(frozen=True, slots=True)
class Fence:
    """The lease is no longer provably valid: ``await gw.fence(active)``
    (it comes back as :class:`End` 1011 through ``active.close``); the
    frame was not relayed; stop reading."""


@dataclass(frozen=True, slots=True)
class PlayAudio:
    """Media mode: decoded output audio of response ``response_id``, to play."""

    audio: bytes
    response_id: str | None


@dataclass(frozen=True, slots=True)
class ClearAudio:
    """Media mode: drop the output audio queued (barge-in, cancel, clear)."""


@dataclass(frozen=True, slots=True)
class AudioDone:
    """Media mode: response ``response_id`` has sent all its audio."""

    response_id: str | None


@dataclass(frozen=True, slots=True)
class FlushInput:
    """Media mode: append the caller's audio buffered so far (feed its
    :class:`ClientAudio`) before the next action (a commit) is performed."""


@dataclass(frozen=True, slots=True)
class CloseUpstream:
    """Close the provider's socket (if still open) with ``code`` and
    ``reason``, bounded."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Finish:
    """Finish the session: ``gw.finish(active)`` (verdict recorded,
    concurrency slot freed), bounded."""


@dataclass(frozen=True, slots=True)
class CloseClient:
    """Close the client (WebSocket close frame, end the call) with
    ``code`` and ``reason``, bounded."""

    code: int
    reason: str


Action = (SendUpstream | SendClient | SendRateLimits | Ping | Fence | PlayAudio | ClearAudio
          | AudioDone | FlushInput | CloseUpstream | Finish | CloseClient)
CLOSING = (CloseUpstream, Finish, CloseClient)
"""The actions of a session's end; they come last in the list that ends it."""


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """How a shell's sessions are relayed.

    Attributes:
        model: the session's pinned model.
        max_bytes: largest client event relayed, bytes.
        key_session: the ephemeral key's session config to apply before the
            client's first event (its ``model`` ignored), or None.
        media: voxgate owns the audio (WebRTC, phone): see the module doc.
        rewrite_session: applied to the key's config and each client
            ``session.update``'s ``session`` (WebRTC: the audio formats
            are voxgate's); None: relayed as sent.
        idle_timeout_ms: end (1000, "idle timeout") after this long with no
            data frame either way; None: never.
        max_session_ms: end (1000, "maximum session duration reached") this
            long after ``Accepted``; None: never.
        ping_ms: keepalive: ping a side quiet this long, end the session
            (1006) when the ping stays unanswered as long; None: no pings.
    """

    model: str
    max_bytes: int
    key_session: dict[str, Any] | None = None
    media: bool = False
    rewrite_session: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    idle_timeout_ms: float | None = None
    max_session_ms: float | None = None
    models: tuple[str, ...] = ()  # the plan's models: a session.update for another is refused
    ping_ms: float | None = None


class RelayCore:
    """The rules of one relayed session, sans I/O.

    ``feed(event)`` → the actions to perform, in order; once the session
    has ended (:attr:`done`) the list that ended it closes with the
    :data:`CLOSING` actions, and later events get ``[]``.

    Args:
        config: see :class:`RelayConfig`.
        meter: the session's meter; the core feeds it every relayed event
            and the session's end, each with the event's own ``at_ms``.
        lease: read on each data frame (``valid_until``, monotonic s).
    """

    def __init__(self, config: RelayConfig, meter: SessionMeter, lease: Lease) -> None:
        self.config = config
        self.meter = meter
        self.lease = lease
        session = None
        if config.key_session is not None:
            session = {"type": "realtime",
                       **{k: v for k, v in config.key_session.items() if k != "model"}}
            if config.rewrite_session is not None:
                session = config.rewrite_session(session)
        self.key_session = KeySession(session)
        self.closed_by: str | None = None
        self.upstream_open = False
        self._started_ms: float | None = None
        self._last_activity_ms = 0.0
        self._rx = {CLIENT: 0.0, UPSTREAM: 0.0}
        self._ping_sent: dict[str, float] = {}
        self._next_ping_ms: float | None = None
        self._response_id: str | None = None  # media: the response in progress upstream
        self._dropped: set[str | None] = set()  # media: responses whose audio was cleared

    # -- state -------------------------------------------------------------

    @property
    def done(self) -> bool:
        """The session has ended (its closing actions were returned)."""
        return self.closed_by is not None

    @property
    def upstream_ready(self) -> bool:
        """The provider's ``session.created`` has been relayed."""
        return self.meter.connected

    def next_timer_ms(self) -> float | None:
        """When the next :class:`Tick` is due (monotonic ms), None for none."""
        if self.done or self._started_ms is None:
            return None
        cfg = self.config
        due = [t for t in (
            None if cfg.max_session_ms is None else self._started_ms + cfg.max_session_ms,
            None if cfg.idle_timeout_ms is None else self._last_activity_ms + cfg.idle_timeout_ms,
            self._next_ping_ms) if t is not None]
        return min(due) if due else None

    # -- the entry point ---------------------------------------------------

    def feed(self, event: Event) -> list[Action]:
        """Take one event; return the actions to perform, in order."""
        if self.done:
            return []
        match event:
            case ClientMessage():
                return self._client_message(event)
            case UpstreamMessage():
                return self._upstream_message(event)
            case ClientAudio():
                return self._client_audio(event)
            case Heard():
                self._rx[event.side] = event.at_ms
                return []
            case Accepted():
                return self._accepted(event.at_ms)
            case UpstreamOpened():
                self.upstream_open = True
                update = self.key_session.update
                return [SendUpstream(update)] if update is not None else []
            case UpstreamFailed():
                return self._upstream_failed(event)
            case ClientClosed():
                return self._end(event.at_ms, CLIENT, event.code, None, wire_code=event.code)
            case UpstreamClosed():
                return self._end(event.at_ms, UPSTREAM, event.code, event.reason)
            case Tick():
                return self._tick(event.at_ms)
            case End():
                return self._end(event.at_ms, event.by, event.code, event.reason,
                                 wire_code=event.code, explain=event.explain)
        raise TypeError(f"not a relay event: {event!r}")

    # -- client → upstream -------------------------------------------------

    def _accepted(self, at: float) -> list[Action]:
        self.meter.accepted(at, media=self.config.media)
        self._started_ms = self._last_activity_ms = at
        self._rx = {CLIENT: at, UPSTREAM: at}
        if self.config.ping_ms:
            self._next_ping_ms = at + self.config.ping_ms
        return []

    def _fenced(self, at: float) -> bool:
        return at >= self.lease.valid_until * 1000.0

    def _client_message(self, ev: ClientMessage) -> list[Action]:
        at, data = ev.at_ms, ev.data
        self._rx[CLIENT] = at
        if self._fenced(at):
            return [Fence()]
        self._last_activity_ms = at
        n = utf8_len(data)
        try:
            event, etype = parse_client_event(data, self.config.max_bytes)
        except VoxgateError as err:
            self.meter.client_rejected(n)
            return [SendClient(error_event(err), ev.reply)]
        actions: list[Action] = []
        if self.config.media:
            if etype == "output_audio_buffer.clear":
                # WebRTC-only (the provider's WebSocket does not know it):
                # voxgate owns the output buffer.
                self.meter.record(classify(CLIENT, etype, n, event), at)
                actions.append(self._drop_output())
                if self._response_id is not None:
                    actions.append(SendUpstream(_RESPONSE_CANCEL))
                return actions
            if etype == "response.cancel":
                actions.append(self._drop_output())
            elif etype == "input_audio_buffer.commit":
                actions.append(FlushInput())
        if etype == "session.update":
            wanted = update_model(event)
            if self.config.models and wanted is not None and wanted not in self.config.models:
                self.meter.client_rejected(n)  # not relayed
                refused = model_not_allowed_event(wanted, self.config.models, event.get("event_id"))
                return [*actions, SendClient(orjson.dumps(refused).decode(), ev.reply)]
            rewrite = self.config.rewrite_session
            if rewrite is not None:
                if isinstance(event.get("session"), dict):
                    event = pin_session_model(event, self.config.model) or event
                    event["session"] = rewrite(event["session"])
                    data = orjson.dumps(event).decode()
            elif (pinned := pin_session_model(event, self.config.model)) is not None:
                data = orjson.dumps(pinned).decode()
        actions.append(SendUpstream(data if isinstance(data, str) else data.decode()))
        self.meter.record(classify(CLIENT, etype, n, event), at)
        return actions

    def _client_audio(self, ev: ClientAudio) -> list[Action]:
        if not self.upstream_open:
            return []
        if self._fenced(ev.at_ms):
            return [Fence()]
        self._last_activity_ms = ev.at_ms
        event = {"type": AUDIO_APPEND, "audio": base64.b64encode(ev.audio).decode()}
        data = orjson.dumps(event).decode()
        self.meter.record(classify(CLIENT, AUDIO_APPEND, len(data), event), ev.at_ms)
        return [SendUpstream(data)]

    def _drop_output(self) -> ClearAudio:
        """Barge-in, ``response.cancel``, ``output_audio_buffer.clear``: the
        queued audio goes, and the rest of that response's is ignored."""
        self._dropped.add(self._response_id)
        return ClearAudio()

    # -- upstream → client -------------------------------------------------

    def _upstream_message(self, ev: UpstreamMessage) -> list[Action]:
        at, data = ev.at_ms, ev.data
        self._rx[UPSTREAM] = at
        if self._fenced(at):
            return [Fence()]
        self._last_activity_ms = at
        if isinstance(data, bytes):
            self.meter.record(classify(UPSTREAM, "binary", len(data)), at)
            return [] if self.config.media else [SendClient(data)]
        event: dict[str, Any] | None
        try:
            event = orjson.loads(data)
            etype = event["type"]  # type: ignore[index]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            event, etype = None, None
        if not isinstance(etype, str):  # not ours to judge; relayed as is
            event, etype = None, "unknown"
        actions: list[Action] = []
        if self.key_session.pending:
            for held in self.key_session.upstream(etype, event, data):
                self._deliver(at, *held, actions)
        else:
            self._deliver(at, etype, event, data, actions)
        return actions

    def _deliver(self, at: float, etype: str, event: dict[str, Any] | None, data: str,
                 actions: list[Action]) -> None:
        """One upstream event to the client, metered. The provider's
        ``rate_limits.updated`` (the operator's own limits) is dropped; after
        ``session.created`` and each ``response.done`` the client gets its
        plan's instead."""
        if etype == RATE_LIMITS:
            return
        self.meter.record(classify(UPSTREAM, etype, utf8_len(data), event), at)
        if self.config.media and event is not None and not self._media_event(
                etype, event, actions):
            return
        actions.append(SendClient(data))
        if etype in _RATE_LIMITS_AFTER:
            actions.append(SendRateLimits())

    def _media_event(self, etype: str, event: dict[str, Any], actions: list[Action]) -> bool:
        """Media mode: the provider's audio goes out as media, voxgate
        reports its own output buffer. False when the event is not for the
        client."""
        if etype in OUTPUT_AUDIO_EVENTS:
            delta = event.get("delta")
            rid = event.get("response_id")
            if isinstance(delta, str) and delta and rid not in self._dropped:
                try:
                    actions.append(PlayAudio(base64.b64decode(delta), rid))
                except (binascii.Error, ValueError):
                    log.warning("undecodable audio delta of response %s", rid)
            return False
        if etype == "input_audio_buffer.speech_started":
            actions.append(self._drop_output())
        elif etype == "response.created":
            response = event.get("response")
            self._response_id = response.get("id") if isinstance(response, dict) else None
        elif etype in _OUTPUT_AUDIO_DONE:
            actions.append(AudioDone(event.get("response_id")))
        elif etype == "response.done":
            response = event.get("response")
            rid = response.get("id") if isinstance(response, dict) else None
            actions.append(AudioDone(rid))
            if rid == self._response_id:
                self._response_id = None
        return not etype.startswith("output_audio_buffer.")

    # -- timers ------------------------------------------------------------

    def _tick(self, now: float) -> list[Action]:
        cfg = self.config
        if self._started_ms is None:
            return []
        if cfg.max_session_ms is not None and now >= self._started_ms + cfg.max_session_ms:
            expired = session_expired_event(cfg.max_session_ms / 1000.0, new_event_id())
            return [SendClient(orjson.dumps(expired).decode()),
                    *self._end(now, SERVER, 1000, MAX_SESSION_REASON, wire_code=1000)]
        if cfg.idle_timeout_ms is not None and now >= self._last_activity_ms + cfg.idle_timeout_ms:
            return self._end(now, SERVER, 1000, "idle timeout", wire_code=1000)
        if self._next_ping_ms is not None and now >= self._next_ping_ms and cfg.ping_ms:
            self._next_ping_ms = now + cfg.ping_ms
            return self._keepalive(now, cfg.ping_ms)
        return []

    def _keepalive(self, now: float, ping_ms: float) -> list[Action]:
        """Ping each side that has sent nothing for ``ping_ms``; a side that
        has sent nothing, not even a pong, since a ping at least ``ping_ms``
        old is gone (RFC 6455 §5.5.2: a Ping may serve to verify that the
        peer is still responsive): the session ends, 1006 on that side."""
        actions: list[Action] = []
        for side in (CLIENT, UPSTREAM):
            sent, rx = self._ping_sent.get(side), self._rx[side]
            if sent is not None and rx < sent:  # a ping is unanswered
                if now - sent >= ping_ms:
                    waited = f"no pong in {(now - sent) / 1000:.1f} s"
                    if side == UPSTREAM:
                        return self._end(now, UPSTREAM, 1006, f"{PROVIDER_TIMEOUT}: {waited}")
                    return self._end(now, CLIENT, 1006, f"keepalive timeout: {waited}",
                                     wire_code=None)
            elif now - rx >= ping_ms:
                self._ping_sent[side] = now
                actions.append(Ping(side))
        return actions

    # -- the end -----------------------------------------------------------

    def _upstream_failed(self, ev: UpstreamFailed) -> list[Action]:
        err, at = ev.error, ev.at_ms
        if isinstance(err, UpstreamRefused):
            self.meter.upstream_refused(at, err.message)
            code = 1008
        else:
            self.meter.upstream_connect_failed(at, err.message, err.code or "upstream_unavailable")
            code = 1011
        self.closed_by = SERVER
        self.meter.closed(SERVER, code, err.message, at)
        return [SendClient(error_event(err)), CloseClient(code, err.message), Finish()]

    def _end(self, at: float, by: str, code: int | None, reason: str | None, *,
             wire_code: int | None = None, explain: bool = False) -> list[Action]:
        """The session ends (the first end counts): meter it, and the
        actions that close it, ``wire_code`` the code a client gave."""
        self.closed_by = by
        self.meter.closed(by, code, reason, at)
        actions: list[Action] = []
        if by == CLIENT:
            wire = sendable(wire_code, 1000)
            if self.upstream_open:
                actions.append(CloseUpstream(wire, "client closed"))
            actions += [Finish(), CloseClient(wire, "")]
        elif by == UPSTREAM:
            actions += [CloseUpstream(1000, ""), Finish()]
            if code in (1000, 1001):
                actions.append(CloseClient(code, "upstream closed the session"))
            else:
                actions += [SendClient(error_event(upstream_closed_error(code, reason))),
                            CloseClient(sendable(code, 1011), "upstream connection lost")]
        else:
            wire = sendable(wire_code, 1000)
            if explain and (err := closing_error(wire, reason or "")) is not None:
                actions.append(SendClient(error_event(err)))
            actions.append(CloseClient(wire, reason or ""))
            if self.upstream_open:
                actions.append(CloseUpstream(wire, reason or ""))
            actions.append(Finish())
        return actions

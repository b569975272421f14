"""A simulated Twilio Media Streams client, written from Twilio's message
reference ("Media Streams – WebSocket messages",
https://www.twilio.com/docs/voice/media-streams/websocket-messages), as
Twilio's media servers behave on a bidirectional ``<Connect><Stream>``, and
one load-test phone call on it (:func:`run_twilio_session`).

:class:`TwilioStream`:

- sends ``connected``, ``start`` (``mediaFormat`` audio/x-mulaw 8000 Hz
  mono, the TwiML ``<Parameter>``\\ s in ``customParameters``), then the
  caller's audio as ``media`` frames of 160 μ-law bytes (20 ms) paced in real
  time (``speed`` × real time), each with a ``sequenceNumber`` counting every
  message from 1 (strings), a ``chunk`` counting media frames from 1 and a
  ``timestamp`` in ms since the stream started (strings, as Twilio sends
  them); ``dtmf`` and ``stop`` likewise;
- plays the ``media`` it receives in order and in real time, echoes each
  ``mark`` when playback reaches it, and on ``clear`` drops the audio not
  yet played and echoes the pending marks at once.

What it saw is kept: the audio received and played, the marks echoed, the
clears with the audio marked as played when each came, the close code and
reason, and anything voxgate sent that Twilio would not accept
(``violations``).

:func:`run_twilio_session` is a load-test session over it (the plan's kinds
of :data:`voxgate.loadtest.plan.TWILIO_KINDS`): a call with a fresh
``CallSid``/``StreamSid``, the key in ``customParameters.authorization``,
the provider's ``voxgate_fault`` in ``customParameters.voxgate_fault``
(passed to the local provider only), the clip's speech as 8 kHz μ-law in
real time, waiting for the echo of every frame, then ``stop`` (or, for
``vanish``, the TCP connection aborted). Audio in and out are the μ-law
bytes sent and received at 8 bytes per ms; ``connect_ms`` is ``start`` sent
→ the first reply ``media`` (the echo of the first frame: an upper bound of
voxgate's ``start`` → ``session.created``).
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from voxgate.loadtest.audio import Clip, tag_of
from voxgate.loadtest.plan import CHUNK_MS, SessionPlan
from voxgate.loadtest.result import ADMITTED, FAILED, REFUSED, SessionResult, error_of
from voxgate.loadtest.ws_client import _REFUSAL_BODY, REFUSAL_STATUSES, ws_transport

__all__ = ["TwilioStream", "Clear", "FRAME", "SILENCE", "run_twilio_session", "new_call_sid",
           "new_stream_sid", "ECHO_WAIT_S", "REFUSAL_CLOSE_CODES"]

FRAME = 160
"""20 ms of μ-law at 8 kHz, bytes."""
SILENCE = b"\xff" * FRAME
"""μ-law digital silence, one frame."""
ECHO_WAIT_S = 10.0
"""How long to wait, after the last frame, for its echo, in s."""
REFUSAL_CLOSE_CODES = frozenset({1008, 1013})
"""Close codes of a call voxgate refused at ``start`` (policy; try again later)."""
_BYTES_PER_MS = 8.0


def new_call_sid() -> str:
    """A fresh Twilio-shaped ``CallSid`` (``CA`` + 32 hex digits)."""
    return "CA" + uuid.uuid4().hex


def new_stream_sid() -> str:
    """A fresh Twilio-shaped ``StreamSid`` (``MZ`` + 32 hex digits)."""
    return "MZ" + uuid.uuid4().hex


@dataclass
class Clear:
    """One ``clear`` received: the audio played up to the last mark echoed
    before it (bytes), and all audio played (bytes), at that moment."""

    marked_played_bytes: int
    played_bytes: int


@dataclass
class TwilioStream:
    """One bidirectional Media Stream, as Twilio's media servers run it.

    Args:
        url: voxgate's ``ws://…/v1/telephony/twilio``.
        parameters: the ``<Parameter>``\\ s (``authorization``, ``session``, …).
        headers: of the upgrade (``X-Twilio-Signature``).
        speed: real time × (tests may play faster).
        on_media: called with each received frame's base64 payload and its
            bytes, as it arrives.
    """

    url: str
    parameters: dict[str, str] = field(default_factory=dict)
    account_sid: str = "AC" + "0" * 32
    call_sid: str = "CA" + "1" * 32
    stream_sid: str = "MZ" + "2" * 32
    headers: dict[str, str] = field(default_factory=dict)
    speed: float = 1.0
    on_media: Callable[[str, int], None] | None = None

    def __post_init__(self) -> None:
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.seq = 0
        self.chunk = 0
        self.sent_audio_bytes = 0
        self.late_frames = 0  # frames sent more than one frame behind real time
        self.received: list[dict[str, Any]] = []  # every frame from voxgate, parsed
        self.received_audio = bytearray()
        self.received_bytes = 0
        self.keep_audio = True  # keep ``received_audio`` (off in load tests)
        self.played_bytes = 0
        self.marked_played_bytes = 0
        self.marks_echoed: list[str] = []
        self.clears: list[Clear] = []
        self.violations: list[str] = []  # frames Twilio would not accept
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed = asyncio.Event()
        self._queue: deque[tuple[str, Any]] = deque()
        self._queued = asyncio.Event()
        self._reader: asyncio.Task | None = None
        self._player: asyncio.Task | None = None
        self._t0 = 0.0

    # -- connection ---------------------------------------------------------

    async def connect(self, http: aiohttp.ClientSession) -> None:
        """Open the WebSocket (raises ``aiohttp.WSServerHandshakeError`` on a
        refused upgrade) and start reading and playing."""
        self.ws = await http.ws_connect(self.url, headers=self.headers, autoclose=True,
                                        compress=0, max_msg_size=16 * 1024 * 1024)
        self._reader = asyncio.create_task(self._read())
        self._player = asyncio.create_task(self._play())

    async def close(self) -> None:
        for task in (self._reader, self._player):
            if task is not None:
                task.cancel()
        if self.ws is not None and not self.ws.closed:
            try:
                await self.ws.close()
            except (aiohttp.ClientError, OSError, ConnectionError):
                pass
        await asyncio.gather(*(t for t in (self._reader, self._player) if t is not None),
                             return_exceptions=True)

    def abort(self) -> bool:
        """Drop the TCP connection (no close frame, no stop); False when its
        transport cannot be reached."""
        transport = ws_transport(self.ws) if self.ws is not None else None
        if transport is None:
            return False
        transport.abort()
        return True

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        assert self.ws is not None
        if isinstance(message, bytes):
            await self.ws.send_bytes(message)
        elif isinstance(message, str):
            await self.ws.send_str(message)
        else:
            await self.ws.send_str(orjson.dumps(message).decode())

    def _next_seq(self) -> str:
        self.seq += 1
        return str(self.seq)

    # -- Twilio → server ------------------------------------------------------

    async def connected(self) -> None:
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start_message(self) -> dict[str, Any]:
        return {
            "event": "start", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
            "start": {
                "accountSid": self.account_sid, "streamSid": self.stream_sid,
                "callSid": self.call_sid, "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": dict(self.parameters),
            },
        }

    async def start(self) -> None:
        """``connected`` then ``start``; the stream's clock starts."""
        await self.connected()
        await self.send(self.start_message())
        self._t0 = time.monotonic()

    def media_message(self, payload: bytes) -> dict[str, Any]:
        return self.media_message_b64(base64.b64encode(payload).decode())

    def media_message_b64(self, payload_b64: str) -> dict[str, Any]:
        self.chunk += 1
        return {"event": "media", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
                "media": {"track": "inbound", "chunk": str(self.chunk),
                          "timestamp": str((self.chunk - 1) * 20),
                          "payload": payload_b64}}

    async def pace(self) -> bool:
        """Wait until the next frame is due on the stream's clock (frame
        ``chunk`` at ``chunk`` × 20 ms); False once the stream is closed."""
        due = self._t0 + self.chunk * 0.02 / self.speed
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.02 / self.speed:
            self.late_frames += 1
        return not self.closed.is_set()

    async def stream(self, ulaw: bytes) -> None:
        """Send ``ulaw`` as 20 ms ``media`` frames on the stream's clock (a
        last short frame padded with silence)."""
        for off in range(0, len(ulaw), FRAME):
            frame = ulaw[off:off + FRAME]
            frame += SILENCE[:FRAME - len(frame)]
            if not await self.pace():
                return
            await self.send(self.media_message(frame))
            self.sent_audio_bytes += len(frame)

    async def silence(self, ms: int) -> None:
        await self.stream(SILENCE * (ms // 20))

    async def dtmf(self, digit: str) -> None:
        await self.send({"event": "dtmf", "streamSid": self.stream_sid,
                         "sequenceNumber": self._next_seq(),
                         "dtmf": {"track": "inbound_track", "digit": digit}})

    async def stop(self) -> None:
        await self.send({"event": "stop", "sequenceNumber": self._next_seq(),
                         "streamSid": self.stream_sid,
                         "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}})

    async def _echo(self, name: str) -> None:
        self.marks_echoed.append(name)
        if self.ws is not None and not self.ws.closed:
            try:
                await self.send({"event": "mark", "sequenceNumber": self._next_seq(),
                                 "streamSid": self.stream_sid, "mark": {"name": name}})
            except (aiohttp.ClientError, OSError, ConnectionError):
                pass

    # -- server → Twilio ------------------------------------------------------

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            await self._read_frames()
        finally:
            self.closed.set()

    def _violation(self, what: str, frame: Any) -> None:
        self.violations.append(f"{what}: {str(frame)[:200]}")

    async def _read_frames(self) -> None:
        assert self.ws is not None
        while True:
            msg = await self.ws.receive()
            if msg.type is aiohttp.WSMsgType.CLOSE:
                self.close_code, self.close_reason = msg.data, msg.extra
                return
            if msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.ERROR):
                self.close_code = self.ws.close_code
                return
            if msg.type is not aiohttp.WSMsgType.TEXT:
                self._violation("a non-text frame", msg.type)
                continue
            try:
                frame = orjson.loads(msg.data)
                event = frame["event"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                self._violation("not a Twilio message", msg.data)
                continue
            self.received.append(frame)
            if frame.get("streamSid") != self.stream_sid:
                self._violation("another streamSid", frame)
            if event == "media":
                if set(frame) != {"event", "streamSid", "media"}:
                    self._violation("media fields", frame)
                payload = frame["media"]["payload"]
                try:
                    audio = base64.b64decode(payload, validate=True)
                except ValueError:
                    self._violation("invalid base64", frame)
                    continue
                self.received_bytes += len(audio)
                if self.keep_audio:
                    self.received_audio += audio
                if self.on_media is not None:
                    self.on_media(payload, len(audio))
                self._queue.append(("media", len(audio)))
                self._queued.set()
            elif event == "mark":
                if set(frame) != {"event", "streamSid", "mark"}:
                    self._violation("mark fields", frame)
                self._queue.append(("mark", frame["mark"]["name"]))
                self._queued.set()
            elif event == "clear":
                if set(frame) != {"event", "streamSid"}:
                    self._violation("clear fields", frame)
                await self._clear()
            else:
                self._violation("an event Twilio does not know", frame)

    async def _clear(self) -> None:
        """Twilio's ``clear``: the audio not yet played is dropped, pending
        marks are echoed."""
        self.clears.append(Clear(self.marked_played_bytes, self.played_bytes))
        assert self._player is not None
        self._player.cancel()
        pending = [value for kind, value in self._queue if kind == "mark"]
        self._queue.clear()
        for name in pending:
            await self._echo(name)
        self._player = asyncio.create_task(self._play())

    async def _play(self) -> None:
        """Play the queue in real time: a media frame takes its duration,
        a mark is echoed when playback reaches it."""
        clock = time.monotonic()
        while True:
            while not self._queue:
                self._queued.clear()
                await self._queued.wait()
                clock = max(clock, time.monotonic())
            kind, value = self._queue[0]
            if kind == "media":
                clock = max(clock, time.monotonic()) + value / 8000 / self.speed
                await asyncio.sleep(max(0.0, clock - time.monotonic()))
                self._queue.popleft()
                self.played_bytes += value
            else:
                self._queue.popleft()
                self.marked_played_bytes = self.played_bytes
                await self._echo(value)

    @property
    def playing(self) -> bool:
        return any(kind == "media" for kind, _ in self._queue)

    @property
    def queued_bytes(self) -> int:
        """Audio received and not played yet, bytes."""
        return sum(value for kind, value in self._queue if kind == "media")


async def _until(event_set: Callable[[], bool], call: TwilioStream, timeout_s: float) -> bool:
    """Poll ``event_set()`` every 20 ms until true (True), the stream closes
    or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while not event_set():
        if call.closed.is_set() or time.monotonic() > deadline:
            return event_set()
        await asyncio.sleep(0.02)
    return True


async def run_twilio_session(
    http: aiohttp.ClientSession,
    twilio_url: str,
    key: str,
    plan: SessionPlan,
    clip: Clip,
    *,
    model: str = "gpt-realtime",
    faults: bool = True,
    signature: Callable[[str], str] | None = None,
    connect_timeout_s: float = 10.0,
    clock=time.perf_counter,
) -> SessionResult:
    """Run one phone call; never raises for network or protocol failures
    (they become ``outcome="failed"``), only for cancellation.

    Args:
        twilio_url: ``ws://host:port/v1/telephony/twilio``.
        signature: ``url → X-Twilio-Signature`` (when voxgate checks them).
        faults: send the plan's ``voxgate_fault`` (as the custom parameter
            ``voxgate_fault``).

    A call closed at ``start`` with 1008 or 1013 is ``refused``: its
    ``error_code`` is the close reason's ``<code>:`` and ``http_status``
    None (a refused upgrade keeps its HTTP status).
    """
    res = SessionResult(plan.index, plan.kind, "twilio")
    res.call_sid = new_call_sid()
    params = {"authorization": f"Bearer {key}", "model": model}
    if faults and plan.fault:
        params["voxgate_fault"] = plan.fault
    rtt = res.rtt_ms
    sent_at = [0.0] * plan.chunks
    t_first: list[float] = []

    def on_media(payload: str, _n: int) -> None:
        now = clock()
        if not t_first:
            t_first.append(now)
        seq = tag_of(payload)
        if seq is not None and seq < len(sent_at) and sent_at[seq]:
            rtt.append((now - sent_at[seq]) * 1000.0)

    call = TwilioStream(twilio_url, params, call_sid=res.call_sid, stream_sid=new_stream_sid(),
                        headers={"X-Twilio-Signature": signature(twilio_url)} if signature else {},
                        on_media=on_media)
    call.keep_audio = False
    res.started_s = clock()
    refusal_body: list[bytes] = []  # a refused upgrade's JSON (``ws_client.refusal_trace``)
    token = _REFUSAL_BODY.set(refusal_body)
    try:
        await call.connect(http)
    except aiohttp.WSServerHandshakeError as exc:
        res.http_status = exc.status
        res.outcome = REFUSED if exc.status in REFUSAL_STATUSES else FAILED
        res.error_code, message = error_of(refusal_body[0] if refusal_body else None)
        res.error = f"HTTP {exc.status} {res.error_code or ''}: {message or exc.message}"
        res.ended_s = clock()
        return res
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        res.error = f"connect: {type(exc).__name__}: {exc}"[:200]
        res.ended_s = clock()
        return res
    finally:
        _REFUSAL_BODY.reset(token)
    try:
        await _call(call, res, plan, clip, sent_at, t_first, connect_timeout_s, clock)
    except (TimeoutError, aiohttp.ClientError, OSError, ConnectionError) as exc:
        res.outcome = FAILED
        res.error = res.error or f"{type(exc).__name__}: {exc}"[:200]
    finally:
        if plan.kind != "vanish" or res.outcome != ADMITTED:
            await call.close()
        else:
            for task in (call._reader, call._player):
                if task is not None:
                    task.cancel()
        res.close_code = call.close_code
        res.clears = len(call.clears)
        res.marks_echoed = len(call.marks_echoed)
        res.underruns = call.late_frames
        if call.violations:
            res.outcome = FAILED
            res.error = f"voxgate broke Twilio's protocol: {call.violations[0]}"
        res.ended_s = clock()
    return res


async def _call(call: TwilioStream, res: SessionResult, plan: SessionPlan, clip: Clip,
                sent_at: list[float], t_first: list[float], connect_timeout_s: float,
                clock) -> None:
    await call.start()
    t0 = clock()
    res.events_sent += 2
    for seq in range(plan.chunks):
        if not await call.pace():
            break
        sent_at[seq] = clock()
        await call.send(call.media_message_b64(clip.chunk_b64(seq, "audio/pcmu")))
        call.sent_audio_bytes += FRAME
        res.events_sent += 1
        res.audio_in_ms += CHUNK_MS  # frames go out at once, as Twilio's do (no waiting)
    if call.closed.is_set():
        _refused_or_failed(call, res)
        return
    echoed = await _until(lambda: call.received_bytes >= call.sent_audio_bytes, call,
                          ECHO_WAIT_S + (connect_timeout_s if not t_first else 0.0))
    if t_first:
        res.connect_ms = (t_first[0] - t0) * 1000.0
    res.audio_out_ms = call.received_bytes / _BYTES_PER_MS
    res.events_received = len(call.received)
    if not echoed:
        if call.closed.is_set():
            _refused_or_failed(call, res)
        else:
            res.error = (f"echo incomplete: {call.received_bytes} of {call.sent_audio_bytes} "
                         "bytes back")
        return
    # as Twilio: the reply plays out and its marks are echoed before the caller hangs up
    await _until(lambda: not call.playing, call, call.queued_bytes / 8000 / call.speed + 1.0)
    await asyncio.sleep(0.05)
    if plan.kind == "vanish":
        if not call.abort():
            res.error = "cannot reach the TCP transport to abort it"
            return
        res.outcome = ADMITTED
        return
    await call.stop()
    res.events_sent += 1
    try:
        async with asyncio.timeout(ECHO_WAIT_S):
            await call.closed.wait()
    except TimeoutError:
        res.error = "voxgate did not close the stream after stop"
        return
    res.events_received = len(call.received)
    if call.close_code != 1000:
        res.error = f"stream closed {call.close_code} after stop: {call.close_reason}"
        return
    res.outcome = ADMITTED


def _refused_or_failed(call: TwilioStream, res: SessionResult) -> None:
    """The stream closed before the script ended: a refusal at ``start``
    (1008/1013 before any reply audio), or a failure."""
    reason = call.close_reason or ""
    code, sep, message = reason.partition(": ")
    if call.close_code in REFUSAL_CLOSE_CODES and not call.received_bytes and sep:
        res.outcome = REFUSED
        res.error_code = code
        res.error = f"close {call.close_code} {reason}"[:200]
        return
    res.outcome = FAILED
    res.error = f"stream closed {call.close_code}: {reason}"[:200]

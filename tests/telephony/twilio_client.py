"""A simulated Twilio Media Streams client, written from Twilio's message
reference ("Media Streams – WebSocket messages",
https://www.twilio.com/docs/voice/media-streams/websocket-messages), as
Twilio's media servers behave on a bidirectional ``<Connect><Stream>``:

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

What it saw is kept for the tests' asserts: the audio received and played,
the marks echoed, the clears with the audio marked as played when each
came, the close code and reason.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

FRAME = 160  # 20 ms of μ-law at 8 kHz
SILENCE = b"\xff" * FRAME  # μ-law digital silence


@dataclass
class Clear:
    """One ``clear`` received: the audio played up to the last mark echoed
    before it (bytes), and all audio played (bytes), at that moment."""

    marked_played_bytes: int
    played_bytes: int


@dataclass
class TwilioStream:
    url: str
    parameters: dict[str, str] = field(default_factory=dict)
    account_sid: str = "AC" + "0" * 32
    call_sid: str = "CA" + "1" * 32
    stream_sid: str = "MZ" + "2" * 32
    headers: dict[str, str] = field(default_factory=dict)
    speed: float = 1.0  # real time ×

    def __post_init__(self) -> None:
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.seq = 0
        self.chunk = 0
        self.sent_audio_bytes = 0
        self.received: list[dict[str, Any]] = []  # every frame from voxgate, parsed
        self.received_audio = bytearray()
        self.played_bytes = 0
        self.marked_played_bytes = 0
        self.marks_echoed: list[str] = []
        self.clears: list[Clear] = []
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
        self.ws = await http.ws_connect(self.url, headers=self.headers, autoclose=True)
        self._reader = asyncio.create_task(self._read())
        self._player = asyncio.create_task(self._play())

    async def close(self) -> None:
        for task in (self._reader, self._player):
            if task is not None:
                task.cancel()
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()

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
        self.chunk += 1
        return {"event": "media", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
                "media": {"track": "inbound", "chunk": str(self.chunk),
                          "timestamp": str((self.chunk - 1) * 20),
                          "payload": base64.b64encode(payload).decode()}}

    async def stream(self, ulaw: bytes) -> None:
        """Send ``ulaw`` as 20 ms ``media`` frames on the stream's clock (a
        last short frame padded with silence)."""
        for off in range(0, len(ulaw), FRAME):
            frame = ulaw[off:off + FRAME]
            frame += SILENCE[:FRAME - len(frame)]
            due = self._t0 + self.chunk * 0.02 / self.speed
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.closed.is_set():
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
            await self.send({"event": "mark", "sequenceNumber": self._next_seq(),
                             "streamSid": self.stream_sid, "mark": {"name": name}})

    # -- server → Twilio ------------------------------------------------------

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            await self._read_frames()
        finally:
            self.closed.set()

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
                continue
            frame = orjson.loads(msg.data)
            self.received.append(frame)
            event = frame["event"]
            assert frame["streamSid"] == self.stream_sid, frame
            if event == "media":
                assert set(frame) == {"event", "streamSid", "media"}, frame
                audio = base64.b64decode(frame["media"]["payload"], validate=True)
                self.received_audio += audio
                self._queue.append(("media", len(audio)))
                self._queued.set()
            elif event == "mark":
                assert set(frame) == {"event", "streamSid", "mark"}, frame
                self._queue.append(("mark", frame["mark"]["name"]))
                self._queued.set()
            elif event == "clear":
                assert set(frame) == {"event", "streamSid"}, frame
                await self._clear()
            else:
                raise AssertionError(f"voxgate sent an event Twilio does not know: {frame}")

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

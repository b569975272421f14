"""The media side of a WebRTC call: audio between RTP (Opus, 48 kHz clock)
and the provider's PCM16 24 kHz mono, with no resampling on the way out
and no aiortc thread hops either way (``voxgate.proxy.webrtc.opus``, ``voxgate.proxy.webrtc.rtp_in``).

- :class:`InboundAudio` cuts the browser's audio, decoded on the event loop
  to PCM16 24 kHz mono (``rtp_in.decode_inline``), into chunks for
  ``input_audio_buffer.append``.
- :class:`OutputAudioTrack` is the outgoing ``MediaStreamTrack``: it plays
  the provider's ``response.output_audio.delta`` audio in 20 ms Opus frames
  encoded from 24 kHz, canned silence when idle; the process's RTP pump
  (``voxgate.proxy.webrtc.rtp_pump``) takes its frames (``due_tick`` /
  ``next_frame``) and sends them, and ``recv`` still serves aiortc's own
  sender (``av.Packet`` s, which it only packs). Frame *n* is due at
  ``start + n × 20 ms`` (never accumulated sleeps), so a long call does not
  drift; every track's start is on one 20 ms grid (:class:`FrameGrid`), so
  a tick is one timer for all the calls of the process. It reports the WebRTC-only server events
  ``output_audio_buffer.started`` / ``stopped`` / ``cleared``
  (https://platform.openai.com/docs/api-reference/realtime-server-events/output_audio_buffer)
  through a callback.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from collections.abc import Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from voxgate.proxy.webrtc.opus import OpusVoiceEncoder

__all__ = ["pcm16_frame", "InboundAudio", "OutputAudioTrack", "FrameGrid", "FRAME_GRID",
           "PROVIDER_RATE", "RTP_RATE", "FRAME_MS"]

PROVIDER_RATE = 24000  # Hz, Realtime audio/pcm
RTP_RATE = 48000  # Hz, Opus clock rate (RFC 7587 §4.1)
FRAME_MS = 20
FRAME_S = FRAME_MS / 1000
FRAME_SAMPLES = RTP_RATE * FRAME_MS // 1000  # 960 RTP clock ticks per frame
FRAME_BYTES = PROVIDER_RATE * FRAME_MS // 1000 * 2  # 960 bytes of PCM16 24 kHz
# A response starts playing once this much of it is queued (or all of it):
# deltas that arrive in real time (40 ms chunks, an echo) then have 100 ms of
# arrival jitter before the track would have to fill a frame with silence.
PREBUFFER_MS = 100
PREBUFFER_BYTES = PROVIDER_RATE * PREBUFFER_MS // 1000 * 2
# Behind schedule by more than this (a stalled sender), restart the clock
# rather than burst the backlog out.
MAX_LAG_S = 0.5

AudioEvent = Callable[[str, "str | None"], None]


class FrameGrid:
    """The 20 ms ticks every output track's frames fall due on: tick *k* is
    at monotonic ``k × 20 ms``. Tracks waiting for the same tick share one
    timer (``loop.call_later``), whatever the number of calls.

    Args:
        clock: monotonic seconds.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def tick_at(self, t: float) -> int:
        """The first tick at or after ``t`` (monotonic s)."""
        return math.ceil(t / FRAME_S - 1e-9)

    async def wait(self, tick: int) -> None:
        """Return at tick ``tick`` (at once if it has passed)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop: the old one's timers are gone
            self._loop = loop
            self._waiters = {}
        waiters = self._waiters.get(tick)
        if waiters is None:
            waiters = self._waiters[tick] = []
            loop.call_later(max(0.0, tick * FRAME_S - self.clock()), self._wake, tick)
        fut: asyncio.Future[None] = loop.create_future()
        waiters.append(fut)
        await fut

    def _wake(self, tick: int) -> None:
        for fut in self._waiters.pop(tick, ()):
            if not fut.done():
                fut.set_result(None)



def pcm16_frame(pcm: bytes, rate: int, pts: int) -> av.AudioFrame:
    """A mono PCM16 (little-endian) ``av.AudioFrame`` of ``pcm`` at ``rate``
    Hz, stamped ``pts`` in a 1/``rate`` time base."""
    frame = av.AudioFrame.from_ndarray(
        np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, rate)
    return frame

class InboundAudio:
    """PCM16 24 kHz mono as it is decoded → fixed-size chunks, queued for
    the task that appends them upstream, in order.

    ``feed`` and ``end`` are called from the receiver (synchronously, as
    each packet is decoded); the appending task takes :meth:`next` until it
    returns ``None``; :meth:`flush` queues the part short of a chunk and
    returns once the appending task has handled everything queued before
    it (before an ``input_audio_buffer.commit``, so that the commit covers
    all the audio received before it).

    Args:
        chunk_ms: size of the chunks, in ms (a chunk may be up to
            :attr:`SLACK_BYTES` shorter).
    """

    def __init__(self, chunk_ms: int = 40) -> None:
        self.chunk_bytes = PROVIDER_RATE * 2 * chunk_ms // 1000
        self._buf = bytearray()
        self._queue: asyncio.Queue[bytes | asyncio.Future[None] | None] = asyncio.Queue()
        self._ended = False
        self._drained = asyncio.Event()

    # The decoder's resampler holds back 32 samples (64 bytes): a chunk goes
    # as soon as it is that short of full, so the last chunk of the audio
    # goes with its last frame rather than waiting for one that never comes.
    SLACK_BYTES = 128

    def feed(self, pcm24k: bytes) -> None:
        buf = self._buf
        buf += pcm24k
        if len(buf) >= self.chunk_bytes - self.SLACK_BYTES:
            n = max(len(buf) // self.chunk_bytes, 1) * self.chunk_bytes
            for i in range(0, min(n, len(buf)), self.chunk_bytes):
                self._queue.put_nowait(bytes(buf[i:i + self.chunk_bytes]))
            del buf[:n]

    def end(self) -> None:
        """No more audio: the rest (a short chunk), then ``None``, are queued."""
        if not self._ended:
            self._ended = True
            self._queue_rest()
            self._queue.put_nowait(None)

    async def next(self) -> bytes | None:
        """The next chunk, or ``None`` at the end; called again once that
        chunk has been handled."""
        while True:
            item = await self._queue.get()
            if isinstance(item, asyncio.Future):
                if not item.done():
                    item.set_result(None)  # everything before the flush is handled
                continue
            if item is None:
                self._drained.set()
            return item

    async def flush(self) -> None:
        if self._ended:
            await self._drained.wait()
            return
        self._queue_rest()
        barrier: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(barrier)
        await barrier

    def _queue_rest(self) -> None:
        if self._buf:
            self._queue.put_nowait(bytes(self._buf))
            self._buf.clear()


class OutputAudioTrack(MediaStreamTrack):
    """The outgoing audio track: the provider's voice, paced in 20 ms Opus
    frames (:meth:`next_frame` for the RTP pump; :meth:`recv` returns
    ``av.Packet`` s in the 48 kHz RTP clock for aiortc's sender).

    Args:
        on_event: called with (``output_audio_buffer.started`` | ``stopped`` |
            ``cleared``, response id) from the sender's task.
        grid: the ticks frames are due on (one per process by default;
            injectable, with its clock, for tests).
    """

    kind = "audio"

    def __init__(self, on_event: AudioEvent | None = None, grid: FrameGrid | None = None) -> None:
        super().__init__()
        self._on_event = on_event or (lambda etype, rid: None)
        self._grid = grid or FRAME_GRID
        self._clock = self._grid.clock
        self._encoder = OpusVoiceEncoder(FRAME_MS)
        self._buf = bytearray()
        self._tick0: int | None = None  # the tick of frame 0
        self._index = 0
        self._response_id: str | None = None
        self._done: set[str | None] = set()
        self._playing = False
        self.frames_sent = 0
        self.audio_frames_sent = 0
        self.frames_skipped = 0  # fell behind by more than MAX_LAG_S

    # -- fed by the call ---------------------------------------------------

    def push(self, pcm24k: bytes, response_id: str | None) -> None:
        """Queue provider audio (PCM16 24 kHz mono) of ``response_id``."""
        if response_id != self._response_id:
            self._response_id = response_id
        self._buf += pcm24k

    def audio_done(self, response_id: str | None) -> None:
        """The response's audio is complete (``response.output_audio.done``
        or ``response.done``); ``stopped`` follows once it has been played."""
        self._done.add(response_id)

    def clear(self) -> bool:
        """Drop queued audio at once. Returns True if anything was playing
        or queued (and ``output_audio_buffer.cleared`` was reported)."""
        had = self._playing or bool(self._buf)
        self._buf.clear()
        if had:
            self._playing = False
            self._on_event("output_audio_buffer.cleared", self._response_id)
        return had

    @property
    def queued_ms(self) -> float:
        return len(self._buf) / 2 * 1000 / PROVIDER_RATE

    # -- MediaStreamTrack ----------------------------------------------------

    async def recv(self) -> av.Packet:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        now = self._clock()
        due = self.due_tick(now)
        if due * FRAME_S > now:
            await self._grid.wait(due)
        payload, index = self.next_frame()
        return self._encoder.packet(payload, index)

    # -- the frame source of ``rtp_pump.RtpPump`` ----------------------------

    def due_tick(self, now: float) -> int:
        """The grid tick the next frame falls due on. Behind schedule by
        more than :data:`MAX_LAG_S` at ``now`` (monotonic s), the clock
        restarts at the next tick and the frames in between are skipped
        (counted in :attr:`frames_skipped`)."""
        if self._tick0 is None or now - (self._tick0 + self._index) * FRAME_S > MAX_LAG_S:
            tick0 = self._grid.tick_at(now) - self._index
            if self._tick0 is not None:
                self.frames_skipped += tick0 - self._tick0
            self._tick0 = tick0
        return self._tick0 + self._index

    def next_frame(self) -> tuple[bytes, int]:
        """The next frame's Opus payload and its index (frame *n* is due
        at tick ``tick0 + n``)."""
        index = self._index
        payload = self._next_payload(index)
        self._index = index + 1
        self.frames_sent += 1
        return payload, index

    def _next_payload(self, index: int) -> bytes:
        """Frame ``index``: queued audio once :data:`PREBUFFER_MS` of a
        response (or all of it) is in, whole frames only until the
        response's audio is done (then the last one is padded); else
        silence."""
        buf, done = self._buf, self._response_id in self._done
        if not self._playing and buf and (len(buf) >= PREBUFFER_BYTES or done):
            self._playing = True
            self._on_event("output_audio_buffer.started", self._response_id)
        if self._playing and buf and (len(buf) >= FRAME_BYTES or done):
            pcm = bytes(buf[:FRAME_BYTES])
            del buf[:FRAME_BYTES]
            self.audio_frames_sent += 1
            if len(pcm) < FRAME_BYTES:
                pcm += bytes(FRAME_BYTES - len(pcm))
            return self._encoder.encode(pcm, index)
        if self._playing and not buf and done:
            self._playing = False
            self._on_event("output_audio_buffer.stopped", self._response_id)
        return self._encoder.silence(index)


FRAME_GRID = FrameGrid()
"""The process's frame grid."""

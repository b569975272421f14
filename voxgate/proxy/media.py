"""The media side of a WebRTC call: audio between RTP (Opus, 48 kHz, decoded
by aiortc) and the provider's PCM16 24 kHz mono.

- :class:`InboundAudio` turns the browser's decoded frames into PCM16 24 kHz
  mono chunks for ``input_audio_buffer.append`` (``av.AudioResampler``).
- :class:`OutputAudioTrack` is the outgoing ``MediaStreamTrack``: it plays
  the provider's ``response.output_audio.delta`` audio, resampled to 48 kHz,
  in 20 ms frames, silence when idle. Frame *n* is due at
  ``start + n × 20 ms`` (never accumulated sleeps), so a long call does not
  drift. It reports the WebRTC-only server events
  ``output_audio_buffer.started`` / ``stopped`` / ``cleared``
  (https://platform.openai.com/docs/api-reference/realtime-server-events/output_audio_buffer)
  through a callback.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Awaitable, Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from voxgate.voice.audio import StreamResampler

__all__ = ["pcm16_frame", "InboundAudio", "OutputAudioTrack", "PROVIDER_RATE", "RTP_RATE", "FRAME_MS"]

PROVIDER_RATE = 24000  # Hz, Realtime audio/pcm
RTP_RATE = 48000  # Hz, Opus clock rate (RFC 7587 §4.1)
FRAME_MS = 20
FRAME_SAMPLES = RTP_RATE * FRAME_MS // 1000  # 960
FRAME_BYTES = FRAME_SAMPLES * 2
# Behind schedule by more than this (a stalled sender), restart the clock
# rather than burst the backlog out.
MAX_LAG_S = 0.5

AudioEvent = Callable[[str, "str | None"], None]



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
    """Decoded RTP audio frames → PCM16 24 kHz mono, in fixed-size chunks.

    Args:
        chunk_ms: size of the chunks :meth:`chunks` yields, in ms.
    """

    def __init__(self, chunk_ms: int = 40) -> None:
        self.chunk_bytes = PROVIDER_RATE * 2 * chunk_ms // 1000
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=PROVIDER_RATE)
        self._buf = bytearray()

    def feed(self, frame: av.AudioFrame) -> None:
        for out in self._resampler.resample(frame):
            self._buf += bytes(out.planes[0])[: out.samples * 2]

    def chunks(self) -> list[bytes]:
        """Whole chunks buffered so far (the remainder stays)."""
        n = len(self._buf) // self.chunk_bytes * self.chunk_bytes
        if not n:
            return []
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return [data[i:i + self.chunk_bytes] for i in range(0, n, self.chunk_bytes)]

    def rest(self) -> bytes:
        """What is buffered short of a whole chunk (at the end of the call)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data


class OutputAudioTrack(MediaStreamTrack):
    """The outgoing audio track: the provider's voice, paced in 20 ms frames.

    Args:
        on_event: called with (``output_audio_buffer.started`` | ``stopped`` |
            ``cleared``, response id) from the sender's task.
        clock: monotonic seconds; ``sleep``: its sleep (injectable for tests).
    """

    kind = "audio"

    def __init__(self, on_event: AudioEvent | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        super().__init__()
        self._on_event = on_event or (lambda etype, rid: None)
        self._clock = clock
        self._sleep = sleep
        self._resampler = StreamResampler(PROVIDER_RATE, RTP_RATE)
        self._buf = bytearray()
        self._start: float | None = None
        self._index = 0
        self._response_id: str | None = None
        self._done: set[str | None] = set()
        self._playing = False
        self.frames_sent = 0
        self.audio_frames_sent = 0

    # -- fed by the call ---------------------------------------------------

    def push(self, pcm24k: bytes, response_id: str | None) -> None:
        """Queue provider audio (PCM16 24 kHz mono) of ``response_id``."""
        if response_id != self._response_id:
            self._response_id = response_id
        self._buf += self._resampler.feed(pcm24k)

    def audio_done(self, response_id: str | None) -> None:
        """The response's audio is complete (``response.output_audio.done``
        or ``response.done``); ``stopped`` follows once it has been played."""
        self._done.add(response_id)

    def clear(self) -> bool:
        """Drop queued audio at once. Returns True if anything was playing
        or queued (and ``output_audio_buffer.cleared`` was reported)."""
        had = self._playing or bool(self._buf)
        self._buf.clear()
        self._resampler = StreamResampler(PROVIDER_RATE, RTP_RATE)
        if had:
            self._playing = False
            self._on_event("output_audio_buffer.cleared", self._response_id)
        return had

    @property
    def queued_ms(self) -> float:
        return len(self._buf) / 2 * 1000 / RTP_RATE

    # -- MediaStreamTrack ----------------------------------------------------

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = self._clock()
        if self._start is None or now - (self._start + self._index * FRAME_MS / 1000) > MAX_LAG_S:
            self._start = now - self._index * FRAME_MS / 1000
        due = self._start + self._index * FRAME_MS / 1000
        if due > now:
            await self._sleep(due - now)
        frame = pcm16_frame(self._next_frame_pcm(), RTP_RATE, self._index * FRAME_SAMPLES)
        self._index += 1
        self.frames_sent += 1
        return frame

    def _next_frame_pcm(self) -> bytes:
        if self._buf:
            if not self._playing:
                self._playing = True
                self._on_event("output_audio_buffer.started", self._response_id)
            pcm = bytes(self._buf[:FRAME_BYTES])
            del self._buf[:FRAME_BYTES]
            self.audio_frames_sent += 1
            if len(pcm) < FRAME_BYTES:
                pcm += bytes(FRAME_BYTES - len(pcm))
            return pcm
        if self._playing and self._response_id in self._done:
            self._playing = False
            self._on_event("output_audio_buffer.stopped", self._response_id)
        return bytes(FRAME_BYTES)

"""Server VAD: a sans-I/O turn detector on top of WebRTC's voice activity
detector (``webrtcvad``).

Follows the ``server_vad`` turn detection of the OpenAI Realtime API
(https://platform.openai.com/docs/guides/realtime-vad): ``threshold``,
``prefix_padding_ms`` and ``silence_duration_ms`` mean what they mean there;
positions are *audio* milliseconds since the start of the session's input
audio, not wall-clock time.

:class:`TurnDetector` is fed 8 kHz PCM16 (the caller converts: 24 kHz input
through :func:`voxgate.voice.audio.decimate3`, G.711 input by decoding) and
returns :class:`SpeechStarted` / :class:`SpeechStopped` values. It never reads
a clock and does no I/O, so it is tested by feeding bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import webrtcvad

__all__ = ["VAD_RATE", "FRAME_MS", "SpeechStarted", "SpeechStopped", "TurnDetector", "aggressiveness"]

VAD_RATE = 8000
"""Sample rate the detector is fed, in Hz."""
FRAME_MS = 30
"""webrtcvad frame length, in ms (10, 20 or 30 are allowed)."""
_FRAME_BYTES = VAD_RATE * FRAME_MS // 1000 * 2  # 480 bytes
START_MS = 90
"""Voiced audio needed (within a 150 ms window) before speech counts as started, in ms."""


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech began at ``audio_start_ms`` (already moved back by the
    prefix padding, never before the start of the buffer)."""

    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """Speech ended at ``audio_end_ms`` (the end of the last voiced frame plus
    the silence that confirmed it, as OpenAI reports it)."""

    audio_end_ms: int


def aggressiveness(threshold: float) -> int:
    """Map OpenAI's ``threshold`` (0.0–1.0, higher = needs louder speech) to
    webrtcvad's aggressiveness mode 0–3. 0.5 maps to 2."""
    return max(0, min(3, int(threshold * 4)))


class TurnDetector:
    """Detects turns in a stream of 8 kHz PCM16 audio.

    Args:
        threshold: OpenAI VAD threshold, 0.0–1.0.
        prefix_padding_ms: audio kept before detected speech, in ms.
        silence_duration_ms: silence that ends a turn, in ms.
        start_ms: position (audio ms) of the first byte that will be fed.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        prefix_padding_ms: int = 300,
        silence_duration_ms: int = 500,
        start_ms: float = 0.0,
    ) -> None:
        self._vad = webrtcvad.Vad(aggressiveness(threshold))
        self.prefix_padding_ms = prefix_padding_ms
        self.silence_duration_ms = silence_duration_ms
        self._pending = bytearray()
        self._pos_ms = float(start_ms)  # audio position of _pending[0]
        self._recent: list[bool] = []  # last few frames, voiced or not
        self.in_speech = False
        self._silence_ms = 0
        self._floor_ms = float(start_ms)  # speech_started never reports earlier than this

    def reset(self, position_ms: float) -> None:
        """Forget state (the buffer was committed or cleared); the next byte
        fed is at ``position_ms``."""
        self._pending.clear()
        self._pos_ms = self._floor_ms = float(position_ms)
        self._recent.clear()
        self.in_speech = False
        self._silence_ms = 0

    def feed(self, pcm8k: bytes) -> list[SpeechStarted | SpeechStopped]:
        """Feed 8 kHz PCM16; return the turn events it completes, in order."""
        self._pending += pcm8k
        events: list[SpeechStarted | SpeechStopped] = []
        while len(self._pending) >= _FRAME_BYTES:
            frame = bytes(self._pending[:_FRAME_BYTES])
            del self._pending[:_FRAME_BYTES]
            voiced = self._vad.is_speech(frame, VAD_RATE)
            frame_start = self._pos_ms
            self._pos_ms += FRAME_MS
            self._recent = (self._recent + [voiced])[-5:]
            if not self.in_speech:
                if sum(self._recent) * FRAME_MS >= START_MS:
                    self.in_speech = True
                    self._silence_ms = 0
                    onset = frame_start - (sum(self._recent) - 1) * FRAME_MS
                    start = max(self._floor_ms, onset - self.prefix_padding_ms)
                    events.append(SpeechStarted(int(start)))
            elif voiced:
                self._silence_ms = 0
            else:
                self._silence_ms += FRAME_MS
                if self._silence_ms >= self.silence_duration_ms:
                    self.in_speech = False
                    self._recent.clear()
                    self._floor_ms = self._pos_ms
                    events.append(SpeechStopped(int(self._pos_ms)))
        return events

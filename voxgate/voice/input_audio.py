"""Input audio of one session: decoding ``input_audio_buffer.append``
audio, the input audio buffer and server-VAD turn detection. Sans-I/O: it
sends nothing; the session turns what :meth:`InputAudio.append` reports into
``input_audio_buffer.speech_started`` / ``.speech_stopped`` events
(https://platform.openai.com/docs/api-reference/realtime-client-events/input_audio_buffer).

Audio is kept as PCM16 at the input format's rate (24 kHz for
``audio/pcm``, 8 kHz for G.711, decoded on arrival); positions and lengths
are in ms of audio appended since the session started.
"""

from __future__ import annotations

import binascii
from typing import Any

from voxgate.errors import MalformedEvent
from voxgate.models.realtime import AudioFormat
from voxgate.voice import audio as A
from voxgate.voice.ids import new_id
from voxgate.voice.session import vad_parameters
from voxgate.voice.vad import SpeechStarted, SpeechStopped, TurnDetector

__all__ = ["InputAudio", "decode_base64_audio", "to_pcm16", "MIN_COMMIT_MS"]

MIN_COMMIT_MS = 100
"""OpenAI refuses to commit less than 100 ms of audio."""


def decode_base64_audio(b64: Any, param: str = "audio") -> bytes:
    """The bytes of a base64 audio field.

    Raises:
        MalformedEvent: ``invalid_value`` (not a string) or
            ``invalid_base64``, with ``param``.
    """
    if not isinstance(b64, str):
        raise MalformedEvent(f"Invalid type for '{param}': expected a base64 string.",
                             code="invalid_value", param=param)
    try:
        return binascii.a2b_base64(b64, strict_mode=True)
    except (binascii.Error, ValueError):
        raise MalformedEvent("Invalid base64 audio data.", code="invalid_base64", param=param) from None


def to_pcm16(raw: bytes, fmt: AudioFormat) -> bytes:
    """``raw`` audio of format ``fmt`` as PCM16 at ``fmt.rate`` (G.711
    decoded; an odd trailing byte of PCM dropped)."""
    if fmt.type == "audio/pcmu":
        return A.ulaw_decode(raw)
    if fmt.type == "audio/pcma":
        return A.alaw_decode(raw)
    return raw[: len(raw) - len(raw) % 2]


class InputAudio:
    """The input audio buffer and its turn detector.

    Attributes:
        buffer: PCM16 not yet committed (at the input format's rate).
        audio_ms: all input audio appended this session, in ms.
        buffer_start_ms: the audio position of ``buffer[0]``, in ms.
        vad: the turn detector; None when turn detection is off.
        speech_item_id / speech_start_ms: the item id announced by the last
            ``speech_started`` and where that speech began.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.audio_ms = 0.0
        self.buffer_start_ms = 0.0
        self.vad: TurnDetector | None = None
        self._vad_carry = b""
        self.speech_item_id: str | None = None
        self.speech_start_ms = 0.0

    def reset_vad(self, turn_detection: dict[str, Any] | None) -> None:
        """A new turn detector from the session's ``turn_detection`` (None:
        no turn detection), starting at the current audio position."""
        if turn_detection is None:
            self.vad = None
            return
        threshold, prefix_padding_ms, silence_duration_ms = vad_parameters(turn_detection)
        self.vad = TurnDetector(threshold=threshold, prefix_padding_ms=prefix_padding_ms,
                                silence_duration_ms=silence_duration_ms, start_ms=self.audio_ms)
        self._vad_carry = b""
        self.speech_item_id = None

    def append(self, pcm: bytes, rate: int) -> list[SpeechStarted | SpeechStopped]:
        """Add PCM16 at ``rate`` Hz to the buffer and feed the turn detector
        (24 kHz is decimated to its 8 kHz); what it detected, in order."""
        self.buffer += pcm
        self.audio_ms += A.pcm16_ms(len(pcm), rate)
        if self.vad is None:
            return []
        data = self._vad_carry + pcm
        if rate == 24000:
            usable = len(data) - len(data) % 6
            self._vad_carry, data = data[usable:], A.decimate3(data[:usable])
        return self.vad.feed(data)

    @property
    def idle(self) -> bool:
        """Turn detection is on and no speech is in progress."""
        return self.vad is not None and not self.vad.in_speech

    def trim(self, keep_ms: float, rate: int) -> None:
        """Outside speech: keep only the last ``keep_ms`` of the buffer once it
        holds more than twice that."""
        keep = int(keep_ms * rate / 1000) * 2
        if len(self.buffer) > 2 * keep:
            drop = len(self.buffer) - keep
            del self.buffer[:drop]
            self.buffer_start_ms += A.pcm16_ms(drop, rate)

    def speech_started(self, audio_start_ms: float) -> str:
        """Note speech starting at ``audio_start_ms``; the new item's id."""
        self.speech_item_id = new_id("item")
        self.speech_start_ms = audio_start_ms
        return self.speech_item_id

    def speech_offset(self, rate: int) -> int:
        """The byte offset in :attr:`buffer` where the last speech began."""
        return max(0, int((self.speech_start_ms - self.buffer_start_ms) * rate / 1000) * 2)

    def buffered_ms(self, rate: int) -> float:
        """Audio in the buffer, in ms."""
        return A.pcm16_ms(len(self.buffer), rate)

    def take(self, start: int, rate: int) -> tuple[bytes, float]:
        """Commit the buffer: ``(PCM16 from byte start, ms committed)``; the
        buffer is then empty."""
        pcm = bytes(self.buffer[start:])
        committed_ms = A.pcm16_ms(len(self.buffer), rate)
        self.clear()
        return pcm, committed_ms

    def clear(self) -> None:
        """Empty the buffer."""
        self.buffer.clear()
        self.buffer_start_ms = self.audio_ms

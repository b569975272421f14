"""OpenAI Realtime vocabulary: event type names (GA), audio formats and
audio-length arithmetic.

Follows the OpenAI Realtime API reference
(https://platform.openai.com/docs/api-reference/realtime-client-events and
.../realtime-server-events) and ``shared/reference/openai-realtime.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "CLIENT_EVENTS",
    "SERVER_EVENTS",
    "BETA_TO_GA",
    "AudioFormat",
    "PCM24K",
    "audio_format_from_session",
    "b64_decoded_len",
    "DEFAULT_TURN_DETECTION",
]

# The GA default of ``audio.input.turn_detection`` (server VAD), one set for
# the token endpoint's session object and the local provider's sessions
# (https://platform.openai.com/docs/api-reference/realtime-client-events/session/update:
# silence_duration_ms defaults to 500 ms).
DEFAULT_TURN_DETECTION: dict[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "idle_timeout_ms": None,
    "create_response": True,
    "interrupt_response": True,
}

# Client → server events (GA).
CLIENT_EVENTS = frozenset({
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "output_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "response.create",
    "response.cancel",
    # accepted from beta clients, forwarded as sent
    "transcription_session.update",
})

# Server → client events (GA).
SERVER_EVENTS = frozenset({
    "error",
    "session.created",
    "session.updated",
    "conversation.created",
    "conversation.item.added",
    "conversation.item.created",
    "conversation.item.done",
    "conversation.item.deleted",
    "conversation.item.retrieved",
    "conversation.item.truncated",
    "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.input_audio_transcription.failed",
    "conversation.item.input_audio_transcription.segment",
    "input_audio_buffer.committed",
    "input_audio_buffer.cleared",
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.timeout_triggered",
    "output_audio_buffer.started",
    "output_audio_buffer.stopped",
    "output_audio_buffer.cleared",
    "response.created",
    "response.done",
    "response.output_item.added",
    "response.output_item.done",
    "response.content_part.added",
    "response.content_part.done",
    "response.output_text.delta",
    "response.output_text.done",
    "response.output_audio.delta",
    "response.output_audio.done",
    "response.output_audio_transcript.delta",
    "response.output_audio_transcript.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "rate_limits.updated",
})

# Beta server event names and their GA successors (the meter counts both).
BETA_TO_GA = {
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
}


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """A Realtime audio format.

    Attributes:
        type: GA type string: ``audio/pcm``, ``audio/pcmu`` or ``audio/pcma``.
        rate: samples per second (24 000 for pcm, 8 000 for G.711).
        bytes_per_sample: 2 for PCM16, 1 for G.711.
    """

    type: str
    rate: int
    bytes_per_sample: int

    @property
    def bytes_per_ms(self) -> float:
        return self.rate * self.bytes_per_sample / 1000.0

    def ms_from_bytes(self, n: int) -> float:
        """Duration in ms of ``n`` bytes of audio in this format."""
        return n / self.bytes_per_ms

    def ms_from_b64_len(self, b64_len: int, padding: int = 0) -> float:
        """Duration in ms of a base64 payload ``b64_len`` characters long with
        ``padding`` trailing ``=`` (decoded size = 3·len/4 − padding)."""
        return self.ms_from_bytes(b64_decoded_len(b64_len, padding))

    def to_session(self) -> dict[str, Any]:
        if self.type == "audio/pcm":
            return {"type": "audio/pcm", "rate": self.rate}
        return {"type": self.type}


PCM24K = AudioFormat("audio/pcm", 24000, 2)
PCMU = AudioFormat("audio/pcmu", 8000, 1)
PCMA = AudioFormat("audio/pcma", 8000, 1)

_BY_NAME = {
    "audio/pcm": PCM24K,
    "pcm16": PCM24K,
    "audio/pcmu": PCMU,
    "g711_ulaw": PCMU,
    "audio/pcma": PCMA,
    "g711_alaw": PCMA,
}


def b64_decoded_len(b64_len: int, padding: int = 0) -> int:
    """Bytes encoded by ``b64_len`` base64 characters ending in ``padding`` ``=``."""
    return (b64_len // 4) * 3 - padding


def _format(spec: Any) -> AudioFormat | None:
    if isinstance(spec, str):
        return _BY_NAME.get(spec)
    if isinstance(spec, dict):
        return _BY_NAME.get(spec.get("type", ""))
    return None


def audio_format_from_session(session: dict[str, Any]) -> tuple[AudioFormat | None, AudioFormat | None]:
    """The (input, output) audio formats a session object sets, each None when
    it does not set one. Reads the GA shape
    (``session.audio.input.format`` / ``session.audio.output.format``) and the
    beta one (``input_audio_format`` / ``output_audio_format``)."""
    audio = session.get("audio") if isinstance(session, dict) else None
    fin = fout = None
    if isinstance(audio, dict):
        if isinstance(audio.get("input"), dict):
            fin = _format(audio["input"].get("format"))
        if isinstance(audio.get("output"), dict):
            fout = _format(audio["output"].get("format"))
    if isinstance(session, dict):
        fin = fin or _format(session.get("input_audio_format"))
        fout = fout or _format(session.get("output_audio_format"))
    return fin, fout

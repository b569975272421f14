"""OpenAI Realtime vocabulary: event type names (GA), audio formats and
audio-length arithmetic, and the session defaults the token endpoint's
session objects and the local provider's sessions share.

Follows the OpenAI Realtime API reference
(https://platform.openai.com/docs/api-reference/realtime-client-events and
.../realtime-server-events) and ``shared/reference/openai-realtime.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from voxgate.errors import MalformedEvent

__all__ = [
    "CLIENT_EVENTS",
    "SERVER_EVENTS",
    "BETA_TO_GA",
    "AudioFormat",
    "PCM24K",
    "audio_format_from_session",
    "b64_decoded_len",
    "DEFAULT_INSTRUCTIONS",
    "DEFAULT_VOICE",
    "DEFAULT_AUDIO_FORMAT",
    "DEFAULT_TURN_DETECTION",
    "DEFAULT_SEMANTIC_VAD",
    "SEMANTIC_SILENCE_MS",
    "turn_detection",
]

# Session defaults, one set for the token endpoint's session object
# (voxgate.proxy.tokens) and the local provider's sessions (voxgate.voice):
# what a session starts with when neither the ephemeral key nor a
# session.update sets it. Audio formats: DEFAULT_AUDIO_FORMAT (PCM16 24 kHz)
# both ways.
DEFAULT_INSTRUCTIONS = "You are a helpful, friendly voice assistant. Keep your answers short."
DEFAULT_VOICE = "alloy"
# The GA default of ``audio.input.turn_detection`` (server VAD)
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
DEFAULT_SEMANTIC_VAD: dict[str, Any] = {
    "type": "semantic_vad",
    "eagerness": "auto",
    "create_response": True,
    "interrupt_response": True,
}
SEMANTIC_SILENCE_MS = {"low": 1500, "medium": 800, "auto": 800, "high": 400}
"""``semantic_vad`` approximated by server VAD: the silence (ms) that ends a
turn, per ``eagerness`` (low waits longest; auto is medium)."""

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
DEFAULT_AUDIO_FORMAT = PCM24K

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


def _invalid(message: str, param: str) -> MalformedEvent:
    return MalformedEvent(message, code="invalid_value", param=param)


def turn_detection(value: Any, current: dict[str, Any] | None, param: str) -> dict[str, Any] | None:
    """A ``turn_detection`` object with the defaults filled in (the same for
    a minted key's session and a live session). ``server_vad`` keeps its
    fields over :data:`DEFAULT_TURN_DETECTION`; ``semantic_vad`` keeps only
    ``type``, ``eagerness``, ``create_response`` and ``interrupt_response``
    over :data:`DEFAULT_SEMANTIC_VAD` (server-VAD-only fields sent with it
    are dropped). ``current`` is the session's turn detection, updated in
    place of the defaults when of the same type.

    Raises:
        MalformedEvent (``invalid_value``, an ``InvalidRequest``): not an
            object or null, unknown type, a field of the wrong type,
            threshold outside 0..1, unknown eagerness; ``param`` names it.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _invalid(f"Invalid type for '{param}': expected an object or null.", param)
    kind = value.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        raise _invalid(
            f"Invalid value: {kind!r}. Supported values are: 'server_vad' and 'semantic_vad'.", param + ".type"
        )
    if current and current.get("type") == kind:
        base = dict(current)
    elif kind == "semantic_vad":
        base = dict(DEFAULT_SEMANTIC_VAD)
    else:
        base = dict(DEFAULT_TURN_DETECTION)
    fields: tuple[tuple[str, tuple[type, ...]], ...] = (
        ("threshold", (int, float)),
        ("prefix_padding_ms", (int,)),
        ("silence_duration_ms", (int,)),
        ("create_response", (bool,)),
        ("interrupt_response", (bool,)),
        ("idle_timeout_ms", (int, type(None))),
    )
    if kind == "semantic_vad":
        fields = (("create_response", (bool,)), ("interrupt_response", (bool,)), ("eagerness", (str,)))
    for key, kinds in fields:
        if key in value:
            v = value[key]
            if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
                raise _invalid(f"Invalid type for '{param}.{key}'.", f"{param}.{key}")
            base[key] = v
    if kind == "semantic_vad":
        if base.get("eagerness") not in SEMANTIC_SILENCE_MS:
            raise _invalid(f"Invalid value: {base.get('eagerness')!r}. Supported values are: 'low', 'medium', "
                           "'high' and 'auto'.", f"{param}.eagerness")
        return base
    if not 0.0 <= float(base.get("threshold", 0.5)) <= 1.0:
        raise _invalid(f"Invalid value for '{param}.threshold': expected 0.0 to 1.0.", f"{param}.threshold")
    return base

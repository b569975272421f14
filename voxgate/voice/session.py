"""Session configuration of the local provider: pure code, no I/O.

:class:`SessionConfig` holds what ``session.update`` can change and renders
the GA session object (``"object": "realtime.session"``) sent in
``session.created`` / ``session.updated``, following the OpenAI Realtime
reference (https://platform.openai.com/docs/api-reference/realtime-server-events/session/created
and .../realtime-client-events/session/update). Updates in the GA shape
(``{"type": "realtime", "audio": {"input": {...}, "output": {...}}}``) and
the beta flat shape (``voice``, ``input_audio_format``, ``turn_detection``,
``input_audio_transcription``, ``modalities``) are both accepted.

Token estimates and the usage object: :mod:`voxgate.voice.usage`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from voxgate.errors import MalformedEvent
from voxgate.models.realtime import (
    DEFAULT_AUDIO_FORMAT,
    DEFAULT_INSTRUCTIONS,
    DEFAULT_TURN_DETECTION,
    DEFAULT_VOICE,
    SEMANTIC_SILENCE_MS,
    AudioFormat,
    audio_format_from_session,
    turn_detection,
)
from voxgate.voice.ids import new_id
from voxgate.voice.items import validate_tool_choice, validate_tools

__all__ = ["vad_parameters", "SessionConfig"]

VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"})


def _invalid(message: str, param: str) -> MalformedEvent:
    return MalformedEvent(message, code="invalid_value", param=param)


def _format(spec: Any, param: str) -> AudioFormat:
    fmt, _ = audio_format_from_session({"audio": {"input": {"format": spec}}})
    if fmt is None:
        raise _invalid(
            f"Invalid value: {spec!r}. Supported values are: 'audio/pcm', 'audio/pcmu' and 'audio/pcma'.", param
        )
    if fmt.type == "audio/pcm" and isinstance(spec, dict) and spec.get("rate", 24000) != 24000:
        raise _invalid(f"Invalid audio rate {spec.get('rate')!r}: audio/pcm supports only 24000.", param + ".rate")
    return fmt


@dataclass
class SessionConfig:
    """The mutable part of a Realtime session. Times in ms."""

    model: str
    id: str = field(default_factory=lambda: new_id("sess"))
    instructions: str = DEFAULT_INSTRUCTIONS
    output_modalities: list[str] = field(default_factory=lambda: ["audio"])
    input_format: AudioFormat = DEFAULT_AUDIO_FORMAT
    output_format: AudioFormat = DEFAULT_AUDIO_FORMAT
    turn_detection: dict[str, Any] | None = field(default_factory=lambda: dict(DEFAULT_TURN_DETECTION))
    transcription: dict[str, Any] | None = None
    noise_reduction: dict[str, Any] | None = None
    voice: str = DEFAULT_VOICE
    speed: float = 1.0
    tools: list[Any] = field(default_factory=list)
    tool_choice: Any = "auto"
    max_output_tokens: Any = "inf"
    voxgate_fault: str | None = None

    @property
    def transcription_events(self) -> bool:
        """Whether ``conversation.item.input_audio_transcription.*`` events are
        sent: only when ``audio.input.transcription`` is configured (OpenAI's
        default is null: no transcription events)."""
        return self.transcription is not None

    def to_dict(self) -> dict[str, Any]:
        """The GA ``realtime.session`` object."""
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": self.model,
            "output_modalities": list(self.output_modalities),
            "instructions": self.instructions,
            "tools": list(self.tools),
            "tool_choice": self.tool_choice,
            "max_output_tokens": self.max_output_tokens,
            "tracing": None,
            "truncation": "auto",
            "prompt": None,
            "expires_at": 0,
            "audio": {
                "input": {
                    "format": self.input_format.to_session(),
                    "transcription": self.transcription,
                    "noise_reduction": self.noise_reduction,
                    "turn_detection": self.turn_detection,
                },
                "output": {
                    "format": self.output_format.to_session(),
                    "voice": self.voice,
                    "speed": self.speed,
                },
            },
            "include": None,
        }

    def update(self, session: Any) -> None:
        """Apply a ``session.update`` ``session`` object (GA or beta shape).
        All-or-nothing: on error nothing changes.

        Raises:
            MalformedEvent: ``invalid_value`` with ``param`` naming the field.
        """
        if not isinstance(session, dict):
            raise _invalid("Invalid type for 'session': expected an object.", "session")
        if "type" in session and session["type"] != "realtime":
            raise _invalid(
                f"Invalid value: {session['type']!r}. Supported values are: 'realtime'.", "session.type"
            )
        new = SessionConfig(**self.__dict__)
        audio = session.get("audio", {})
        if not isinstance(audio, dict):
            raise _invalid("Invalid type for 'session.audio': expected an object.", "session.audio")
        ain = audio.get("input", {}) or {}
        aout = audio.get("output", {}) or {}
        if not isinstance(ain, dict) or not isinstance(aout, dict):
            raise _invalid("Invalid type for 'session.audio.input/output': expected an object.", "session.audio")

        if "instructions" in session:
            if not isinstance(session["instructions"], str):
                raise _invalid("Invalid type for 'session.instructions': expected a string.", "session.instructions")
            new.instructions = session["instructions"]
        for key in ("output_modalities", "modalities"):
            if key in session:
                mods = session[key]
                if not isinstance(mods, list) or not mods or any(m not in ("text", "audio") for m in mods):
                    raise _invalid(f"Invalid value for 'session.{key}': expected ['text'] or ['audio'].",
                                   f"session.{key}")
                new.output_modalities = ["audio"] if "audio" in mods else ["text"]
        if "format" in ain:
            new.input_format = _format(ain["format"], "session.audio.input.format")
        if "input_audio_format" in session:
            new.input_format = _format(session["input_audio_format"], "session.input_audio_format")
        if "format" in aout:
            new.output_format = _format(aout["format"], "session.audio.output.format")
        if "output_audio_format" in session:
            new.output_format = _format(session["output_audio_format"], "session.output_audio_format")
        for src, param in ((ain, "session.audio.input.turn_detection"), (session, "session.turn_detection")):
            if "turn_detection" in src:
                new.turn_detection = turn_detection(src["turn_detection"], new.turn_detection, param)
        for src, key, param in (
            (ain, "transcription", "session.audio.input.transcription"),
            (session, "input_audio_transcription", "session.input_audio_transcription"),
        ):
            if key in src:
                if src[key] is not None and not isinstance(src[key], dict):
                    raise _invalid(f"Invalid type for '{param}': expected an object or null.", param)
                new.transcription = src[key]
        if "noise_reduction" in ain:
            new.noise_reduction = ain["noise_reduction"]
        for src, param in ((aout, "session.audio.output.voice"), (session, "session.voice")):
            if "voice" in src:
                if not isinstance(src["voice"], str) or not src["voice"]:
                    raise _invalid(f"Invalid type for '{param}': expected a string.", param)
                new.voice = src["voice"]
        if "speed" in aout:
            speed = aout["speed"]
            if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.25 <= speed <= 1.5:
                raise _invalid("Invalid value for 'session.audio.output.speed': expected 0.25 to 1.5.",
                               "session.audio.output.speed")
            new.speed = float(speed)
        if "tools" in session:
            new.tools = validate_tools(session["tools"], "session.tools")
        if "tool_choice" in session:
            new.tool_choice = validate_tool_choice(session["tool_choice"], new.tools, "session.tool_choice")
        if "max_output_tokens" in session or "max_response_output_tokens" in session:
            new.max_output_tokens = session.get("max_output_tokens", session.get("max_response_output_tokens"))
        if "voxgate_fault" in session:
            if session["voxgate_fault"] is not None and not isinstance(session["voxgate_fault"], str):
                raise _invalid("Invalid type for 'session.voxgate_fault': expected a string.", "session.voxgate_fault")
            new.voxgate_fault = session["voxgate_fault"]
        self.__dict__.update(new.__dict__)


def vad_parameters(turn_detection: dict[str, Any]) -> tuple[float, int, int]:
    """``(threshold, prefix_padding_ms, silence_duration_ms)`` for the turn
    detector: a ``server_vad``'s own, or for ``semantic_vad`` 0.5, 300 ms and
    :data:`SEMANTIC_SILENCE_MS` of its eagerness."""
    if turn_detection.get("type") == "semantic_vad":
        return 0.5, 300, SEMANTIC_SILENCE_MS.get(turn_detection.get("eagerness", "auto"), 800)
    return (float(turn_detection.get("threshold", 0.5)), int(turn_detection.get("prefix_padding_ms", 300)),
            int(turn_detection.get("silence_duration_ms", 500)))

"""What a relayed Realtime event means to the meter: one pure function,
:func:`classify`, called by the WebSocket relay and the WebRTC bridge alike
for every event they relay, whose typed result (:class:`RelayedEvent`) is
all the meter (``SessionMeter.record``) reads.

Follows the OpenAI Realtime GA reference
(https://platform.openai.com/docs/api-reference/realtime-client-events and
.../realtime-server-events):

- audio: the decoded size (bytes) of ``input_audio_buffer.append``
  ``audio`` (client) and of ``response.output_audio.delta`` (and beta
  ``response.audio.delta``) ``delta`` (upstream), from the base64 length
  and its ``=`` padding, never by decoding;
- ``session.created`` / ``session.updated`` (upstream) and the client's own
  ``session.update``: the session object (the meter reads its audio
  formats) and, for ``session.update``, its ``event_id``;
- ``response.done``: ``response.status``, ``response.status_details.error``
  (``RealtimeResponseStatus.error``: why a ``failed`` response failed) and
  ``response.usage`` tokens,
  with their details by modality (``input_token_details`` text, audio,
  image and cached tokens with ``cached_tokens_details``;
  ``output_token_details`` text and audio), as the GA model
  ``openai.types.realtime.RealtimeResponseUsage`` has them;
- ``error``: ``error.type``, ``code``, ``message`` and ``event_id`` (the
  client event it answers, when the provider says);
- ``conversation.item.input_audio_transcription.completed``: its ``usage``
  (``{"type": "tokens", "input_tokens", "output_tokens",
  "input_token_details": {"text_tokens", "audio_tokens"}}`` or
  ``{"type": "duration", "seconds"}``), billed at the transcription
  model's price.

The event is parsed once, by the relay (it needs the type anyway); nothing
here parses JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from voxgate.models.realtime import b64_decoded_len

__all__ = ["CLIENT", "UPSTREAM", "AUDIO_APPEND", "SESSION_UPDATE", "OUTPUT_AUDIO_EVENTS", "Usage", "EventError",
           "RelayedEvent", "classify", "b64_audio_bytes", "TRANSCRIPTION_COMPLETED", "TranscriptionUsage"]

CLIENT = "client"
UPSTREAM = "upstream"
AUDIO_APPEND = "input_audio_buffer.append"
SESSION_UPDATE = "session.update"
OUTPUT_AUDIO_EVENTS = frozenset({"response.output_audio.delta", "response.audio.delta"})
_SESSION_EVENTS = frozenset({"session.created", "session.updated"})
TRANSCRIPTION_COMPLETED = "conversation.item.input_audio_transcription.completed"


@dataclass(frozen=True, slots=True)
class Usage:
    """``response.usage`` of a ``response.done``, in tokens (0 for a field
    the event lacks).

    Attributes:
        input_tokens / output_tokens / total_tokens: the usage totals.
        input_text_tokens / input_audio_tokens / input_image_tokens:
            ``input_token_details`` ``text_tokens`` / ``audio_tokens`` /
            ``image_tokens``.
        cached_tokens: ``input_token_details.cached_tokens`` (a subset of
            the input tokens); cached_text_tokens / cached_audio_tokens /
            cached_image_tokens: its ``cached_tokens_details``.
        output_text_tokens / output_audio_tokens: ``output_token_details``
            ``text_tokens`` / ``audio_tokens``.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    input_image_tokens: int = 0
    cached_tokens: int = 0
    cached_text_tokens: int = 0
    cached_audio_tokens: int = 0
    cached_image_tokens: int = 0
    output_text_tokens: int = 0
    output_audio_tokens: int = 0


@dataclass(frozen=True, slots=True)
class TranscriptionUsage:
    """``usage`` of a ``conversation.item.input_audio_transcription.completed``
    (0 for what it lacks): ``{"type": "tokens"}`` gives tokens
    (``input_token_details`` text/audio; input tokens without details
    count as audio), ``{"type": "duration"}`` gives ``seconds`` of audio."""

    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    output_text_tokens: int = 0
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class EventError:
    """``error`` of an ``error`` event, or ``status_details.error`` of a
    failed ``response.done`` (each None when absent).

    Attributes:
        event_id: the ``event_id`` of the client event the error answers
            (``error`` events only; None when the provider does not say).
    """

    type: str | None
    code: str | None
    message: str | None
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class RelayedEvent:
    """One relayed event as the meter sees it.

    Attributes:
        direction: ``client`` (client → provider) or ``upstream``.
        type: the event ``type`` as counted (``other`` for a well-formed
            client type voxgate does not know, ``unknown`` for an upstream
            message that is not a JSON object with a type, ``binary``).
        nbytes: size on the wire, bytes.
        audio_bytes: decoded audio payload, bytes (0 when none).
        session: the session object of ``session.created``/``.updated``
            (upstream) or of the client's ``session.update``.
        event_id: the client's ``event_id`` of a ``session.update``.
        response_status: ``response.status`` of ``response.done``.
        status_error: ``response.status_details.error`` of ``response.done``.
        usage: ``response.usage`` of ``response.done``.
        error: ``error`` of an ``error`` event.
        transcription: ``usage`` of an input transcription's ``completed`` event.
    """

    direction: str
    type: str
    nbytes: int
    audio_bytes: int = 0
    session: dict[str, Any] | None = None
    response_status: str | None = None
    usage: Usage | None = None
    error: EventError | None = None
    event_id: str | None = None
    status_error: EventError | None = None
    transcription: TranscriptionUsage | None = None


def b64_audio_bytes(b64: Any) -> int:
    """Decoded size in bytes of a base64 string (0 when not a string)."""
    if not isinstance(b64, str) or not b64:
        return 0
    n = len(b64)
    padding = b64.count("=", n - 2) if n >= 2 else 0
    return max(0, b64_decoded_len(n, padding))


def classify(direction: str, etype: str, nbytes: int,
             event: dict[str, Any] | None = None) -> RelayedEvent:
    """Classify one relayed event.

    Args:
        direction: ``client`` or ``upstream``.
        etype: the type to count it as (the relay's: the event's ``type``,
            or ``other``/``unknown``/``binary``).
        nbytes: its size on the wire, bytes.
        event: the parsed event, None when it is not a JSON object.
    """
    if event is None:
        return RelayedEvent(direction, etype, nbytes)
    if direction == CLIENT:
        if etype == AUDIO_APPEND:
            return RelayedEvent(direction, etype, nbytes, audio_bytes=b64_audio_bytes(event.get("audio")))
        if etype == SESSION_UPDATE:
            session = event.get("session")
            return RelayedEvent(direction, etype, nbytes,
                                session=session if isinstance(session, dict) else {},
                                event_id=_str(event.get("event_id")))
        return RelayedEvent(direction, etype, nbytes)
    if etype in OUTPUT_AUDIO_EVENTS:
        return RelayedEvent(direction, etype, nbytes, audio_bytes=b64_audio_bytes(event.get("delta")))
    if etype in _SESSION_EVENTS:
        session = event.get("session")
        return RelayedEvent(direction, etype, nbytes, session=session if isinstance(session, dict) else None)
    if etype == "response.done":
        response = event.get("response")
        if not isinstance(response, dict):
            return RelayedEvent(direction, etype, nbytes)
        status = response.get("status")
        usage = response.get("usage")
        failure = _dict(response.get("status_details")).get("error")
        return RelayedEvent(direction, etype, nbytes,
                            response_status=status if isinstance(status, str) else None,
                            usage=_usage(usage) if isinstance(usage, dict) else None,
                            status_error=_error(failure) if isinstance(failure, dict) else None)
    if etype == "error":
        return RelayedEvent(direction, etype, nbytes, error=_error(_dict(event.get("error"))))
    if etype == TRANSCRIPTION_COMPLETED:
        usage = event.get("usage")
        return RelayedEvent(direction, etype, nbytes, transcription=_transcription_usage(usage)
                            if isinstance(usage, dict) else None)
    return RelayedEvent(direction, etype, nbytes)


def _error(err: dict[str, Any]) -> EventError:
    return EventError(_str(err.get("type")), _str(err.get("code")), _str(err.get("message")),
                      _str(err.get("event_id")))


def _usage(usage: dict[str, Any]) -> Usage:
    inp = _dict(usage.get("input_token_details"))
    cached = _dict(inp.get("cached_tokens_details"))
    out = _dict(usage.get("output_token_details"))
    return Usage(
        input_tokens=_int(usage.get("input_tokens")), output_tokens=_int(usage.get("output_tokens")),
        total_tokens=_int(usage.get("total_tokens")),
        input_text_tokens=_int(inp.get("text_tokens")), input_audio_tokens=_int(inp.get("audio_tokens")),
        input_image_tokens=_int(inp.get("image_tokens")), cached_tokens=_int(inp.get("cached_tokens")),
        cached_text_tokens=_int(cached.get("text_tokens")), cached_audio_tokens=_int(cached.get("audio_tokens")),
        cached_image_tokens=_int(cached.get("image_tokens")),
        output_text_tokens=_int(out.get("text_tokens")), output_audio_tokens=_int(out.get("audio_tokens")))


def _transcription_usage(usage: dict[str, Any]) -> TranscriptionUsage:
    if usage.get("type") == "duration":
        seconds = usage.get("seconds")
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds > 0:
            return TranscriptionUsage(seconds=float(seconds))
        return TranscriptionUsage()
    details = _dict(usage.get("input_token_details"))
    text, audio = _int(details.get("text_tokens")), _int(details.get("audio_tokens"))
    rest = max(0, _int(usage.get("input_tokens")) - text - audio)
    return TranscriptionUsage(input_text_tokens=text, input_audio_tokens=audio + rest,
                              output_text_tokens=_int(usage.get("output_tokens")))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None

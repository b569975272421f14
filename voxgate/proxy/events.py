"""Client events on their way upstream: the one check both relays apply.

A client event is relayed when it is a JSON object with a well-formed
``type`` (dotted lowercase words, as OpenAI names them), within the size
limit, and, for ``input_audio_buffer.append``, with valid base64 ``audio``;
anything else is answered with an ``error`` event
(https://platform.openai.com/docs/api-reference/realtime-server-events/error)
and not relayed, so the meter counts only real audio. A well-formed type
voxgate does not know (``voxgate.models.realtime.CLIENT_EVENTS``), such as
one OpenAI adds tomorrow, is relayed for the provider to answer and counted
as ``other``.
"""

from __future__ import annotations

import binascii
import re
from typing import Any

import orjson

from voxgate.errors import MalformedEvent, MessageTooLarge
from voxgate.models.realtime import CLIENT_EVENTS

__all__ = ["parse_client_event", "valid_base64", "b64_padding", "utf8_len", "AUDIO_APPEND",
           "OTHER", "pin_session_model"]

AUDIO_APPEND = "input_audio_buffer.append"
OTHER = "other"  # what the meter counts a relayed event of an unknown type as
_WELL_FORMED_TYPE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")


def valid_base64(s: str) -> bool:
    """Strict base64 (RFC 4648 §4, padded) check."""
    if len(s) % 4:
        return False
    try:
        binascii.a2b_base64(s, strict_mode=True)
    except (binascii.Error, ValueError):
        return False
    return True


def utf8_len(text: str | bytes) -> int:
    """Size in bytes of a message as sent on the wire (UTF-8). O(1) for the
    usual all-ASCII JSON (``str.isascii`` reads a flag); encodes otherwise."""
    if isinstance(text, bytes) or text.isascii():
        return len(text)
    return len(text.encode())


def b64_padding(s: str) -> int:
    """Trailing ``=`` count of a base64 string (0, 1 or 2)."""
    return s.count("=", len(s) - 2) if len(s) >= 2 else 0


def parse_client_event(data: str | bytes, max_bytes: int) -> tuple[dict[str, Any], str, int, int]:
    """Validate a client event before it is relayed upstream (WebSocket
    relay and the WebRTC ``oai-events`` data channel alike).

    Returns:
        (event, type, base64 audio length, its ``=`` padding); the type is
        ``OTHER`` for a well-formed type voxgate does not know.

    Raises:
        MessageTooLarge, MalformedEvent (binary, bad JSON, no ``type``, a
        ``type`` that is not dotted lowercase words (``invalid_event``),
        invalid base64 audio).
    """
    n = len(data)
    if n > max_bytes:
        raise MessageTooLarge(f"message of {n} bytes exceeds the limit of {max_bytes} bytes")
    if isinstance(data, bytes):
        raise MalformedEvent("binary messages are not supported; send JSON text events",
                             code="invalid_event")
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"invalid JSON: {exc}", code="invalid_json") from exc
    etype = event.get("type") if isinstance(event, dict) else None
    if not isinstance(etype, str):
        raise MalformedEvent("event must be a JSON object with a string 'type'",
                             code="invalid_event", param="type")
    event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
    b64_len = padding = 0
    if etype == AUDIO_APPEND:
        audio = event.get("audio")
        if not isinstance(audio, str) or not valid_base64(audio):
            raise MalformedEvent("input_audio_buffer.append 'audio' must be base64-encoded audio",
                                 code="invalid_base64", param="audio", event_id=event_id)
        b64_len = len(audio)
        padding = b64_padding(audio)
    elif etype not in CLIENT_EVENTS:
        if len(etype) > 64 or not _WELL_FORMED_TYPE.fullmatch(etype):
            raise MalformedEvent(f"invalid event type {etype[:64]!r}: expected dotted lowercase "
                                 "words such as 'response.create'", code="invalid_event",
                                 param="type", event_id=event_id)
        return event, OTHER, 0, 0
    return event, etype, b64_len, padding


def pin_session_model(event: dict[str, Any], model: str) -> dict[str, Any] | None:
    """A client ``session.update`` that names another model than the
    session's (pinned at admission: the key's, the project's or the
    operator's choice) → the same event without ``session.model``, so the
    pin cannot be bypassed mid-session (clients such as the Agents SDK send
    their own default model in every update). None when there is nothing to
    change."""
    if event.get("type") != "session.update":
        return None
    session = event.get("session")
    if not isinstance(session, dict) or "model" not in session or session["model"] == model:
        return None
    return {**event, "session": {k: v for k, v in session.items() if k != "model"}}

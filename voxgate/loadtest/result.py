"""What one load-test session did, seen from the client."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["SessionResult", "ADMITTED", "REFUSED", "FAILED", "error_of"]

ADMITTED = "admitted"
"""voxgate accepted the session and the client ran its whole script."""
REFUSED = "refused"
"""voxgate refused the session before it started (HTTP 401/403/429; a phone
call: its stream closed 1008/1013 at ``start``)."""
FAILED = "failed"
"""Anything else: connection error, timeout, cut short by ``--max-time``,
or a script that could not complete (e.g. echoes missing)."""


@dataclass(slots=True)
class SessionResult:
    """One session's outcome.

    Attributes:
        outcome: :data:`ADMITTED`, :data:`REFUSED` or :data:`FAILED`.
        session_id: voxgate's id (``X-Voxgate-Session-Id`` / the WebRTC
            answer's ``Location``), when it got that far.
        http_status: the refusal's HTTP status.
        error_code: the refusal's ``error.code`` from voxgate's JSON body
            (``concurrency_limit_exceeded``, ``invalid_api_key``, …).
        error: why it was refused or failed (short text).
        connect_ms: upgrade (or offer) start → ``session.created``, in ms.
        audio_in_ms: audio sent, in ms.
        audio_out_ms: audio received back, in ms.
        events_sent, events_received: Realtime events each way.
        rtt_ms: per echoed chunk, send → matching delta received, in ms.
        underruns: gaps in the returned audio plus frames the client sent late
            (``underrun_kinds`` splits them: ``arrival_gap``, ``missing``,
            ``late_arrival``, ``sent_late``, for WebRTC).
        provider_error_seen: an upstream ``error`` event (not
            ``invalid_request_error``), or a ``response.done`` ``failed``
            for a provider-side reason, reached the client.
        responses_completed: ``response.done`` events with status
            ``completed`` the client received.
        close_code: the WebSocket close code the client saw (None: none,
            or WebRTC).
        call_sid: a phone call's ``CallSid`` (``--transport twilio``: the
            record is found by it).
        clears, marks_echoed: a phone call's ``clear`` messages received and
            marks echoed.
        expected: the ground-truth reason (:func:`plan.ground_truth`).
        recorded: voxgate's recorded reason, and ``billable``.
    """

    index: int
    kind: str
    transport: str
    outcome: str = FAILED
    session_id: str | None = None
    http_status: int | None = None
    error_code: str | None = None
    error: str | None = None
    connect_ms: float | None = None
    audio_in_ms: float = 0.0
    audio_out_ms: float = 0.0
    events_sent: int = 0
    events_received: int = 0
    rtt_ms: list[float] = field(default_factory=list)
    underruns: int = 0
    underrun_kinds: dict[str, int] = field(default_factory=dict)
    provider_error_seen: bool = False
    responses_completed: int = 0
    close_code: int | None = None
    started_s: float = 0.0
    ended_s: float = 0.0
    expected: str | None = None
    recorded: str | None = None
    recorded_billable: bool | None = None
    recorded_rule: str | None = None
    call_sid: str | None = None
    clears: int = 0
    marks_echoed: int = 0

    def summary(self) -> dict[str, Any]:
        """A JSON-ready row (without the per-chunk latencies)."""
        return {
            "index": self.index,
            "kind": self.kind,
            "transport": self.transport,
            "outcome": self.outcome,
            "session_id": self.session_id,
            "http_status": self.http_status,
            "error_code": self.error_code,
            "error": self.error,
            "connect_ms": None if self.connect_ms is None else round(self.connect_ms, 2),
            "audio_in_ms": round(self.audio_in_ms),
            "audio_out_ms": round(self.audio_out_ms),
            "events_sent": self.events_sent,
            "events_received": self.events_received,
            "underruns": self.underruns,
            "responses_completed": self.responses_completed,
            "close_code": self.close_code,
            "expected": self.expected,
            "recorded": self.recorded,
            "recorded_billable": self.recorded_billable,
            **({"call_sid": self.call_sid, "clears": self.clears,
                "marks_echoed": self.marks_echoed} if self.call_sid else {}),
        }


def error_of(body: bytes | str | dict[str, Any] | None) -> tuple[str | None, str]:
    """``(code, message)`` of an OpenAI-style error body
    (``{"error": {"type", "code", "message"}}``, as bytes, text or parsed);
    the code falls back to the type, and a body that is not such JSON gives
    ``(None, its first 100 characters)``."""
    try:
        parsed = body if isinstance(body, dict) else orjson.loads(body or b"")
        err = parsed["error"]
        return (err.get("code") or err.get("type")), str(err.get("message") or "")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
        return None, text.strip()[:100]

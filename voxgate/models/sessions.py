"""Session records, their measurements and the billable verdict.

Units are in the names: ``_ms`` milliseconds, ``_s`` seconds, ``bytes_``
bytes. Timestamps (``started_at``, ``ended_at``) are Unix seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

__all__ = ["Measurements", "Verdict", "SessionRecord", "Reason", "TRANSPORTS"]

TRANSPORTS = ("websocket", "webrtc", "twilio", "sip")


class Reason:
    """Verdict reasons (the ``reason`` string of a session)."""

    BILLABLE = "billable"
    NOT_CONNECTED = "not_connected"
    CONNECT_TIMEOUT = "connect_timeout"
    TOO_SHORT = "too_short"
    NO_RESPONSE = "no_response"  # a text session (no audio) whose responses never completed
    PROVIDER_ERROR = "provider_error"
    TURN_FAILURE = "turn_failure"
    ICE_FAILURE = "ice_failure"
    INTERRUPTED = "interrupted"  # voxgate stopped while the session was active

    ALL = (BILLABLE, NOT_CONNECTED, CONNECT_TIMEOUT, TOO_SHORT, NO_RESPONSE, PROVIDER_ERROR,
           TURN_FAILURE, ICE_FAILURE, INTERRUPTED)


@dataclass(slots=True)
class Measurements:
    """Everything the session meter measured.

    Attributes:
        connected: upstream ``session.created`` was received.
        connect_ms: client accepted → upstream ``session.created`` (WebSocket),
            or offer received → ICE, DTLS, data channel and upstream all ready
            (WebRTC); None if never connected.
        duration_ms: client accepted → session end.
        audio_in_ms / audio_out_ms: audio sent to / received from the provider.
        bytes_in / bytes_out: message bytes client → provider / provider → client.
        events_in / events_out: message counts in each direction.
        event_counts: event ``type`` → count, both directions.
        provider_errors: upstream errors of a server-side kind (see the meter).
        provider_error: the first such error's ``code: message``, or None.
        client_errors: ``error`` events answering the client's own bad input.
        closed_by: ``client``, ``upstream`` or ``server`` (voxgate: timeout,
            shutdown, limit); None while active.
        close_code / close_reason: the WebSocket close code and reason that ended it.
        input_tokens / output_tokens / total_tokens: sums over ``response.done`` usage.
        input_text_tokens / input_audio_tokens / input_image_tokens,
            cached_tokens (a subset of the input tokens) and
            cached_text_tokens / cached_audio_tokens / cached_image_tokens,
            output_text_tokens / output_audio_tokens: sums over
            ``response.done`` ``usage.input_token_details`` (with its
            ``cached_tokens_details``) and ``usage.output_token_details``,
            by modality (0 in records measured before they were kept).
        responses: ``response.done`` count; responses_completed: those whose
            ``response.status`` is ``completed``; responses_failed: those
            ``failed`` for a provider-side reason (each also a provider error).
        audio_in_ms_at_error / audio_out_ms_at_error / responses_at_error /
            responses_completed_at_error: the figures as they stood at the
            first provider error (None without one, and in records measured
            before they were kept), for ``[policy] provider_error =
            "before_threshold"``.
        ice_*: WebRTC only (None over WebSocket).
        transcription: input transcription usage
            (``conversation.item.input_audio_transcription.completed``
            ``usage``) by transcription model (as the provider's session
            names it; ``""`` when it names none): ``{"input_text_tokens",
            "input_audio_tokens", "output_text_tokens", "seconds"}``
            (tokens; seconds of audio for duration-billed models), summed.
    """

    connected: bool = False
    connect_ms: float | None = None
    duration_ms: float = 0.0
    audio_in_ms: float = 0.0
    audio_out_ms: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    events_in: int = 0
    events_out: int = 0
    event_counts: dict[str, int] = field(default_factory=dict)
    provider_errors: int = 0
    provider_error: str | None = None
    client_errors: int = 0
    closed_by: str | None = None
    close_code: int | None = None
    close_reason: str | None = None
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
    responses: int = 0
    responses_completed: int = 0
    responses_failed: int = 0
    audio_in_ms_at_error: float | None = None
    audio_out_ms_at_error: float | None = None
    responses_at_error: int | None = None
    responses_completed_at_error: int | None = None
    # WebRTC / ICE (issue: WebRTC for browser voice clients)
    ice_pair_type: str | None = None  # "host" | "srflx" | "prflx" | "relay"
    ice_state: str | None = None  # last iceConnectionState
    ice_checking_ms: float | None = None  # offer received → checking
    ice_connected_ms: float | None = None  # offer received → connected
    dtls_connected_ms: float | None = None
    upstream_ready_ms: float | None = None
    turn_failure: bool = False
    ice_failure: bool = False
    ice_failure_detail: str | None = None
    transcription: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def audio_exchanged_ms(self) -> float:
        """Audio in both directions, in ms (what "audio exchanged" counts)."""
        return self.audio_in_ms + self.audio_out_ms

    @property
    def modality(self) -> str:
        """What the provider's responses produced: ``audio`` (any output
        audio), ``text`` (completed responses, none with audio) or ``none``
        (no completed response and no output audio)."""
        return response_modality(self.audio_out_ms, self.responses_completed)

    def token_details(self) -> dict[str, Any]:
        """The usage sums by modality in the shape of OpenAI's
        ``response.usage`` details: ``{"input_token_details": {"text_tokens",
        "audio_tokens", "image_tokens", "cached_tokens",
        "cached_tokens_details": {"text_tokens", "audio_tokens",
        "image_tokens"}}, "output_token_details": {"text_tokens",
        "audio_tokens"}}`` (tokens)."""
        return {
            "input_token_details": {
                "text_tokens": self.input_text_tokens,
                "audio_tokens": self.input_audio_tokens,
                "image_tokens": self.input_image_tokens,
                "cached_tokens": self.cached_tokens,
                "cached_tokens_details": {"text_tokens": self.cached_text_tokens,
                                          "audio_tokens": self.cached_audio_tokens,
                                          "image_tokens": self.cached_image_tokens},
            },
            "output_token_details": {"text_tokens": self.output_text_tokens,
                                     "audio_tokens": self.output_audio_tokens},
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurements:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def response_modality(audio_out_ms: float, completed: int) -> str:
    """``audio`` when the provider produced output audio, else ``text`` when
    at least one of its responses completed (text output), else ``none``
    (responses cancelled, cut short or failed produced nothing to judge by)."""
    if audio_out_ms > 0:
        return "audio"
    return "text" if completed > 0 else "none"


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a session is billable, why, and the rule that decided it.

    Attributes:
        billable: the customer pays for it.
        reason: one of ``Reason.*``.
        rule: a human sentence naming the rule and the measured values.
    """

    billable: bool
    reason: str
    rule: str


@dataclass(slots=True)
class SessionRecord:
    """One session as stored: written when admitted (``status="active"``) and
    completed when it ends (``status="completed"``) with its measurements,
    verdict and, later, its settlement.

    Attributes:
        settlement: ``none`` (nothing to charge), ``included`` (covered by the
            plan), ``pending`` (in the settlement outbox), ``charged`` (sent to
            Stripe), ``invoiced`` (on a period invoice item).
        settlement_ref: Stripe reference (meter event identifier, invoice item id).
        provider_cost_usd: what the voice provider charged the operator for
            it, USD, rounded to 1e-6 (``voxgate.models.pricing.session_cost``
            at completion); None when unpriced or not yet known.
        provider_cost_reason: why ``provider_cost_usd`` is None (None when
            it is known).
        paid_by: who paid the provider: None (the operator) or
            ``"customer"`` (the project's own provider key, BYOK): such a
            session's cost is the customer's, left out of the operator's.
        call_sid / stream_sid: a phone call's Twilio ``CallSid`` and
            Media Stream ``StreamSid`` (``transport="twilio"``); for an
            OpenAI SIP call (``transport="sip"``) ``call_sid`` is OpenAI's
            ``call_id`` and ``stream_sid`` None; None otherwise.
    """

    id: str
    account_id: str
    project_id: str
    transport: str
    started_at: float
    model: str = ""
    api_key_id: str | None = None
    ephemeral_key_id: str | None = None
    status: str = "active"
    ended_at: float | None = None
    period: str = ""  # "YYYY-MM", UTC
    measurements: Measurements = field(default_factory=Measurements)
    billable: bool | None = None
    reason: str | None = None
    rule: str | None = None
    settlement: str = "none"
    settlement_ref: str | None = None
    provider_cost_usd: Decimal | None = None
    provider_cost_reason: str | None = None
    paid_by: str | None = None
    call_sid: str | None = None
    stream_sid: str | None = None

    @property
    def provider_cost_note(self) -> str | None:
        """Why there is no provider cost: the stored reason, or that the
        session is still active, or that none was computed for it (recorded
        before costs were kept, or completed without a price list); None
        when there is a cost."""
        if self.provider_cost_usd is not None:
            return None
        if self.status == "active":
            return "the session is still active"
        return self.provider_cost_reason or "no provider cost was computed for this session"

    def to_api(self, *, provider_cost: bool = False) -> dict[str, Any]:
        """The session as ``GET /v1/sessions`` returns it. ``provider_cost``:
        include ``provider_cost_usd`` (a JSON number, USD to 1e-6, or null)
        and ``provider_cost_reason`` (why it is null; null when it is not):
        the operator's cost, shown to customers only when the operator
        turns ``[pricing] show_provider_cost`` on; always for a session the
        customer paid for (``paid_by: "customer"``, its own provider key)."""
        m = self.measurements
        shown = provider_cost or self.paid_by == "customer"
        cost: dict[str, Any] = {"paid_by": self.paid_by or "operator"} if not shown else {
            "paid_by": self.paid_by or "operator",
            "provider_cost_usd": (None if self.provider_cost_usd is None
                                  else float(self.provider_cost_usd)),
            "provider_cost_reason": self.provider_cost_note,
        }
        return {
            "id": self.id,
            "object": "realtime.session_record",
            "account_id": self.account_id,
            "project_id": self.project_id,
            "transport": self.transport,
            "model": self.model,
            "status": self.status,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "billable": bool(self.billable),
            "reason": self.reason or ("active" if self.status == "active" else ""),
            "rule": self.rule,
            "duration_ms": round(m.duration_ms),
            "connect_ms": None if m.connect_ms is None else round(m.connect_ms, 1),
            "audio_in_ms": round(m.audio_in_ms),
            "audio_out_ms": round(m.audio_out_ms),
            "bytes_in": m.bytes_in,
            "bytes_out": m.bytes_out,
            "events_in": m.events_in,
            "events_out": m.events_out,
            "event_counts": m.event_counts,
            "provider_errors": m.provider_errors,
            "provider_error": m.provider_error,
            "client_errors": m.client_errors,
            "closed_by": m.closed_by,
            "close_code": m.close_code,
            "close_reason": m.close_reason,
            "input_tokens": m.input_tokens,
            "output_tokens": m.output_tokens,
            "total_tokens": m.total_tokens,
            **m.token_details(),
            "ice_pair_type": m.ice_pair_type,
            "ice_state": m.ice_state,
            "ice_connected_ms": m.ice_connected_ms,
            "dtls_connected_ms": m.dtls_connected_ms,
            "turn_failure": m.turn_failure,
            "ice_failure": m.ice_failure,
            "settlement": self.settlement,
            "settlement_ref": self.settlement_ref,
            "call_sid": self.call_sid,
            "stream_sid": self.stream_sid,
            **cost,
        }

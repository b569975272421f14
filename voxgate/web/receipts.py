"""What a session receipt says, in words a customer reads: the verdict and
its rule in one sentence, a timeline, measurements with units, and what the
session cost or why it was free. Pure functions of a ``SessionRecord``, the
``VerdictPolicy`` and the account's ``Plan``; no I/O.

The sentences restate the rules of ``voxgate.metering.verdict.decide_verdict``
(one function per ``Reason``) with the policy's thresholds, so they change
when ``[policy]`` does. Close codes are named as in RFC 6455 §7.4.1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from voxgate.metering.verdict import VerdictPolicy
from voxgate.models import Measurements, Plan, Reason, SessionRecord

__all__ = [
    "fmt_duration",
    "fmt_bytes",
    "fmt_cents",
    "verdict_sentence",
    "SENTENCES",
    "Step",
    "timeline",
    "measurement_rows",
    "Cost",
    "session_cost",
    "fmt_usd",
    "provider_cost_row",
]


# ---------------------------------------------------------------- units

def fmt_duration(ms: float | None) -> str:
    """``12 ms`` below a second, ``6.0 s`` below a minute, ``2 min 05 s``
    beyond; ``—`` for None. ``ms`` in milliseconds."""
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    minutes, seconds = divmod(round(ms / 1000), 60)
    return f"{minutes} min {seconds:02d} s"


def fmt_bytes(n: int | None) -> str:
    """Decimal (SI) units: ``512 B``, ``4.5 kB``, ``398 kB``, ``1.2 MB``."""
    if n is None:
        return "—"
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{n} B"


def fmt_cents(cents: int) -> str:
    """``$29``, ``$0.10``, ``$1,234.50``."""
    return f"${cents / 100:,.2f}" if cents % 100 else f"${cents // 100:,}"


def fmt_usd(usd: Decimal) -> str:
    """A provider cost to the millionth of a dollar: ``$0.126438``, ``$1,234.500000``."""
    return f"${usd:,.6f}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ---------------------------------------------------------------- the verdict in a sentence

Sentence = Callable[[Measurements, VerdictPolicy], str]


def _audio_rule(p: VerdictPolicy) -> str:
    return (f"sessions count when they connect within {fmt_duration(p.max_connect_ms)}, "
            "meet no provider error and exchange more than "
            f"{fmt_duration(p.min_audio_ms)} of audio (in + out)")


# How a session is judged (voxgate.metering.verdict.threshold_met): by what the
# provider's responses produced, so a client's blip of audio or extra text
# response cannot move a session from one rule to the other.
MODALITY_RULE = ("sessions are judged by what the voice provider's responses produced: "
                 "with audio output by the audio rule, with only text by the text rule")


def _is_text(m: Measurements) -> bool:
    return m.modality == "text" or (m.modality == "none" and m.audio_in_ms == 0)


def _late_error(m: Measurements, p: VerdictPolicy) -> str:
    if not m.provider_errors:
        return ""
    return (f" The voice provider failed after the threshold was met ({m.provider_error}); "
            "under this deployment's rule (provider_error = before_threshold) only a provider "
            "error before the threshold is met makes a session free.")


def billable_sentence(m: Measurements, p: VerdictPolicy) -> str:
    if _is_text(m):
        return (f"Billable: a text session with {_plural(m.responses_completed, 'completed response')}"
                f" — text sessions (completed responses without audio) with at least "
                f"{_plural(p.min_text_responses, 'completed response')} count; "
                f"{MODALITY_RULE}.{_late_error(m, p)}")
    return (f"Billable: {fmt_duration(m.audio_exchanged_ms)} of audio exchanged "
            f"({fmt_duration(m.audio_in_ms)} in, {fmt_duration(m.audio_out_ms)} out), "
            f"connected in {fmt_duration(m.connect_ms or 0)}, "
            f"{'no provider error' if not m.provider_errors else 'a late provider error'} — "
            f"{_audio_rule(p)}; {MODALITY_RULE}.{_late_error(m, p)}")


def too_short_sentence(m: Measurements, p: VerdictPolicy) -> str:
    return (f"Not billable: only {fmt_duration(m.audio_exchanged_ms)} of audio was exchanged "
            f"({fmt_duration(m.audio_in_ms)} in, {fmt_duration(m.audio_out_ms)} out) — "
            f"voice sessions need more than {fmt_duration(p.min_audio_ms)} of audio (in + out) "
            f"to count; {MODALITY_RULE}.")


def no_response_sentence(m: Measurements, p: VerdictPolicy) -> str:
    return (f"Not billable: a text session (no audio) with "
            f"{_plural(m.responses_completed, 'completed response')} — text sessions need at "
            f"least {_plural(p.min_text_responses, 'completed response')} to count; "
            f"{MODALITY_RULE}.")


def connect_timeout_sentence(m: Measurements, p: VerdictPolicy) -> str:
    return (f"Not billable: the session took {fmt_duration(m.connect_ms)} to connect — "
            f"sessions that take more than {fmt_duration(p.max_connect_ms)} to connect "
            "are not charged.")


def not_connected_sentence(m: Measurements, p: VerdictPolicy) -> str:
    detail = m.provider_error or m.close_reason or "no session.created"
    return (f"Not billable: the voice provider never started the session ({detail}) — "
            "sessions that never connect are not charged.")


def provider_error_sentence(m: Measurements, p: VerdictPolicy) -> str:
    if p.provider_error == "before_threshold":
        return (f"Not billable: the voice provider failed ({m.provider_error}) before the "
                "session met its threshold — sessions with a provider-side error (an error "
                "event or a failed response) before they meet the threshold are not charged.")
    return (f"Not billable: the voice provider failed ({m.provider_error}) — sessions with "
            "a provider-side error (an error event or a failed response) are not charged.")


def turn_failure_sentence(m: Measurements, p: VerdictPolicy) -> str:
    detail = m.ice_failure_detail or "relay required and not reached"
    return (f"Not billable: the WebRTC call needed the TURN relay and could not use it "
            f"({detail}) — sessions whose TURN relay fails are not charged.")


def ice_failure_sentence(m: Measurements, p: VerdictPolicy) -> str:
    detail = m.ice_failure_detail or "no candidate pair connected"
    return (f"Not billable: the WebRTC call found no working network path ({detail}) — "
            "sessions whose ICE connection fails are not charged.")


def interrupted_sentence(m: Measurements, p: VerdictPolicy) -> str:
    return ("Not billable: voxgate stopped while the session was active — sessions cut off "
            "by a voxgate restart are not charged.")


SENTENCES: dict[str, Sentence] = {
    Reason.BILLABLE: billable_sentence,
    Reason.TOO_SHORT: too_short_sentence,
    Reason.NO_RESPONSE: no_response_sentence,
    Reason.CONNECT_TIMEOUT: connect_timeout_sentence,
    Reason.NOT_CONNECTED: not_connected_sentence,
    Reason.PROVIDER_ERROR: provider_error_sentence,
    Reason.TURN_FAILURE: turn_failure_sentence,
    Reason.ICE_FAILURE: ice_failure_sentence,
    Reason.INTERRUPTED: interrupted_sentence,
}


def verdict_sentence(record: SessionRecord, policy: VerdictPolicy) -> str:
    """The verdict and the rule behind it, e.g. "Billable: 9.0 s of audio
    exchanged (6.0 s in, 3.0 s out), connected in 120 ms — sessions with
    more than 5.0 s of audio exchanged (in + out) … count." A reason this
    module does not know falls back to the stored ``rule``."""
    if record.status == "active":
        return "In progress: the verdict is decided when the session ends."
    sentence = SENTENCES.get(record.reason or "")
    if sentence is None:
        verdict = "Billable" if record.billable else "Not billable"
        return f"{verdict}: {record.rule or record.reason or 'no rule recorded'}."
    return sentence(record.measurements, policy)


# ---------------------------------------------------------------- timeline

@dataclass(frozen=True, slots=True)
class Step:
    """One line of the timeline.

    Attributes:
        at_ms: milliseconds after the session was accepted, or None for a
            step without one moment (the audio, counted over the session).
        label: what happened (``Accepted``, ``Connected``, ...).
        detail: the specifics, in words.
    """

    at_ms: float | None
    label: str
    detail: str

    @property
    def at(self) -> str:
        """``+12 ms``, ``+6.0 s``; ``·`` without a moment."""
        return "·" if self.at_ms is None else "+" + fmt_duration(self.at_ms)


# RFC 6455 §7.4.1
CLOSE_CODES = {
    1000: "normal closure", 1001: "going away", 1005: "no status received",
    1006: "abnormal closure", 1007: "invalid payload data", 1008: "policy violation",
    1009: "message too big", 1011: "internal error", 1012: "service restart",
    1013: "try again later",
}
CLOSERS = {"client": "the client", "upstream": "the voice provider", "server": "voxgate"}


def _closed_detail(m: Measurements) -> str:
    who = CLOSERS.get(m.closed_by or "", m.closed_by or "unknown")
    why = []
    if m.close_code is not None:
        name = CLOSE_CODES.get(m.close_code)
        why.append(f"code {m.close_code}" + (f", {name}" if name else ""))
    if m.close_reason:
        why.append(f"“{m.close_reason}”")
    return f"by {who}" + (f" ({'; '.join(why)})" if why else "")


def _audio_detail(m: Measurements) -> str:
    appends = m.event_counts.get("input_audio_buffer.append", 0)
    deltas = (m.event_counts.get("response.output_audio.delta", 0)
              + m.event_counts.get("response.audio.delta", 0))
    return (f"{fmt_duration(m.audio_in_ms)} in ({appends} × input_audio_buffer.append), "
            f"{fmt_duration(m.audio_out_ms)} out ({deltas} × response.output_audio.delta); "
            f"{_plural(m.responses, 'response')}, {m.responses_completed} completed")


def timeline(record: SessionRecord) -> list[Step]:
    """Accepted → (WebRTC: ICE checking, ICE connected, DTLS connected) →
    connected → audio in/out → closed, with who closed and why. Times are
    ms after acceptance; an active session has only its acceptance so far."""
    m = record.measurements
    webrtc = record.transport == "webrtc"
    steps = [Step(0.0, "Accepted", "the SDP offer was received" if webrtc
                  else "the client's WebSocket upgrade was accepted")]
    if record.status == "active":
        return steps + [Step(None, "In progress", "the rest is recorded when the session ends")]
    if webrtc:
        pair = f" over a {m.ice_pair_type} candidate pair" if m.ice_pair_type else ""
        for at, label, detail in ((m.ice_checking_ms, "ICE checking", "connectivity checks began"),
                                  (m.ice_connected_ms, "ICE connected", f"a path was found{pair}"),
                                  (m.dtls_connected_ms, "DTLS connected", "media encryption ready")):
            if at is not None:
                steps.append(Step(at, label, detail))
    if m.connected:
        steps.append(Step(m.connect_ms, "Connected",
                          "the call could carry media both ways" if webrtc
                          else "the voice provider sent session.created"))
        steps.append(Step(None, "Audio", _audio_detail(m)))
    else:
        steps.append(Step(None, "Never connected",
                          m.provider_error or m.ice_failure_detail or "no session.created"))
    steps.append(Step(m.duration_ms, "Closed", _closed_detail(m)))
    return steps


# ---------------------------------------------------------------- measurements

def provider_cost_row(record: SessionRecord) -> tuple[str, str]:
    """("Provider cost", what the voice provider charged the operator for
    the session, or why it is not known). The operator's figure: shown to
    operators, and to customers only with ``[pricing] show_provider_cost``."""
    paid = " (paid with your own provider key)" if record.paid_by == "customer" else ""
    if record.provider_cost_usd is not None:
        return "Provider cost", fmt_usd(record.provider_cost_usd) + paid
    return "Provider cost", f"unknown: {record.provider_cost_note}{paid}"


def measurement_rows(record: SessionRecord, *, provider_cost: bool = False) -> list[tuple[str, str]]:
    """(label, formatted value) of what was measured, units included;
    with ``provider_cost`` (or for a session the customer paid the
    provider for, with its own key), the provider cost last
    (``provider_cost_row``)."""
    m = record.measurements
    rows = [
        ("Connect latency", fmt_duration(m.connect_ms)),
        ("Duration", fmt_duration(m.duration_ms)),
        ("Audio in", fmt_duration(m.audio_in_ms)),
        ("Audio out", fmt_duration(m.audio_out_ms)),
        ("Audio exchanged", fmt_duration(m.audio_exchanged_ms)),
        ("Data in / out", f"{fmt_bytes(m.bytes_in)} / {fmt_bytes(m.bytes_out)}"),
        ("Events in / out", f"{m.events_in:,} / {m.events_out:,}"),
        ("Responses", f"{m.responses} ({m.responses_completed} completed)"),
        ("Tokens in / out", f"{m.input_tokens:,} / {m.output_tokens:,}"),
        ("Tokens in: text / audio / image", f"{m.input_text_tokens:,} / {m.input_audio_tokens:,} / "
                                            f"{m.input_image_tokens:,} ({m.cached_tokens:,} cached)"),
        ("Tokens out: text / audio", f"{m.output_text_tokens:,} / {m.output_audio_tokens:,}"),
        ("Provider errors", str(m.provider_errors)),
        ("Client errors", str(m.client_errors)),
    ]
    if record.transport == "webrtc":
        rows.append(("ICE candidate pair", m.ice_pair_type or "—"))
        rows.append(("ICE state", m.ice_state or "—"))
    if record.transport == "sip":  # OpenAI's call_id is kept as call_sid
        rows.append(("OpenAI SIP call", record.call_sid or "—"))
    elif record.call_sid or record.stream_sid:  # a phone call (transport "twilio")
        rows.append(("Twilio call / stream", f"{record.call_sid or '—'} / "
                                             f"{record.stream_sid or '—'}"))
    if provider_cost or record.paid_by == "customer":
        rows.append(provider_cost_row(record))
    return rows


# ---------------------------------------------------------------- cost

@dataclass(frozen=True, slots=True)
class Cost:
    """What the session cost.

    Attributes:
        amount_cents: the charge for this session on its own, in cents (0
            when free or included in the subscription; None when the price
            is not known).
        summary: ``Free``, ``Included`` or the amount.
        explanation: why, in a sentence.
    """

    amount_cents: int | None
    summary: str
    explanation: str


_SENT = {"pending": "queued for Stripe", "charged": "reported to Stripe",
         "invoiced": "on the period's invoice"}


def _charged(plan: Plan, state: str) -> Cost:
    included = plan.plan_sessions_included
    beyond = (f"beyond its {included:,} included a month" if included
              else "for every billable session")
    if plan.tiers:
        return Cost(None, "Charged", f"Charged at the {plan.name} plan's graduated price per "
                                     f"session {beyond} ({state}).")
    if plan.overage_cents is None:
        return Cost(None, "Charged", f"Charged at the plan's price per session ({state}).")
    price = fmt_cents(plan.overage_cents)
    why = (f"the {plan.name} plan's price per session {beyond}" if included
           else f"the {plan.name} plan's price per billable session")
    return Cost(plan.overage_cents, price, f"{price}: {why} ({state}).")


def session_cost(record: SessionRecord, plan: Plan) -> Cost:
    """The session's cost from its ``settlement`` and the account's plan
    (as admission sees it: enterprise plan, packs counted in): ``none`` →
    free (not billable, no quota used); ``included`` → covered by the
    subscription; ``pack`` → taken from an add-on pack; ``pending`` /
    ``charged`` / ``invoiced`` → the plan's ``overage_cents`` (graduated
    ``tiers``: the amount depends on the month's count, so it is not given)."""
    if record.status == "active":
        return Cost(None, "Not decided", "The session is still active.")
    if not record.billable:
        return Cost(0, "Free", "Not billable sessions are never charged and use none of "
                               "your plan's sessions.")
    if record.settlement in _SENT:
        return _charged(plan, _SENT[record.settlement])
    if record.settlement == "pack":
        return Cost(0, "Add-on pack", "Taken from one of your add-on packs (paid for when "
                                      "bought): no charge of its own.")
    included = plan.plan_sessions_included
    if included is None:
        scope = f"the {plan.name} plan's unlimited sessions"
    else:
        scope = f"the {plan.name} plan's {included:,} sessions a month"
    return Cost(0, "Included", f"Included in {scope}: no charge beyond the subscription "
                               f"({fmt_cents(plan.price_cents)} a month).")

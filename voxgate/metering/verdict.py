"""The billable verdict: one pure function of a session's measurements and a
policy. Default policy: "only pay for successful sessions"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from voxgate.models.sessions import Measurements, Reason, Verdict, response_modality

__all__ = ["VerdictPolicy", "decide_verdict", "threshold_met"]

# The provider_error detail of a session whose project's own provider key
# (BYOK) the provider refused: a provider error, not "never connected".
PROVIDER_KEY_REFUSED = "provider_key_refused"

ANY = "any"
BEFORE_THRESHOLD = "before_threshold"


@dataclass(frozen=True, slots=True)
class VerdictPolicy:
    """Thresholds of the verdict.

    Attributes:
        min_audio_ms: a voice session's audio exchanged (in + out) must be
            more than this, in ms.
        max_connect_ms: connect latency must be at most this, in ms.
        min_text_responses: a text session (its responses produced no
            audio) needs at least this many completed responses.
        provider_error: ``any`` (a provider error makes the session free) or
            ``before_threshold`` (only if the threshold had not been met
            before the first provider error).
    """

    min_audio_ms: float = 5000.0
    max_connect_ms: float = 2000.0
    min_text_responses: int = 1
    provider_error: Literal["any", "before_threshold"] = "any"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def threshold_met(audio_in_ms: float, audio_out_ms: float, responses: int, completed: int,
                  policy: VerdictPolicy) -> tuple[bool, str]:
    """Whether figures meet the billable threshold of their modality, and
    the comparison in words.

    The modality is what the provider's responses produced
    (``voxgate.models.sessions.response_modality``): output audio → the
    audio rule (audio in + out > ``min_audio_ms``); completed responses
    without audio → the text rule (completed responses ≥
    ``min_text_responses``), whatever audio the client sent; no completed
    response and no output audio (none, or all cancelled, cut short or failed
    before any output, e.g. by barge-in) → the audio rule if the client sent
    audio, else the text rule.
    """
    modality = response_modality(audio_out_ms, completed)
    if modality == "audio" or (modality == "none" and audio_in_ms > 0):
        audio = audio_in_ms + audio_out_ms
        met = audio > policy.min_audio_ms
        return met, (f"audio exchanged {audio / 1000:.1f} s {'>' if met else '≤'} "
                     f"{policy.min_audio_ms / 1000:.1f} s")
    need = policy.min_text_responses
    met = completed >= need
    words = (f"text session (no audio): {_plural(completed, 'completed response')} "
             f"{'≥' if met else '<'} {need}")
    if audio_in_ms > 0:
        words += f" ({audio_in_ms / 1000:.1f} s of audio in; its responses produced no audio)"
    return met, words


def decide_verdict(m: Measurements, policy: VerdictPolicy = VerdictPolicy()) -> Verdict:
    """Decide whether a finished session is billable.

    Rules, in order (the first that applies decides):

    1. TURN failure (WebRTC) → ``turn_failure``
    2. ICE failure (WebRTC) → ``ice_failure``
    3. never connected (no upstream ``session.created``) → ``not_connected``,
       unless the provider refused the project's own key (BYOK,
       ``provider_key_refused``): that is rule 4
    4. a provider error → ``provider_error`` (policy ``provider_error =
       "before_threshold"``: only if the figures at the first provider error
       did not meet the threshold of rule 6)
    5. connect latency > ``max_connect_ms`` → ``connect_timeout``
    6. by the modality of the responses (:func:`threshold_met`): a voice
       session with audio exchanged ≤ ``min_audio_ms`` → ``too_short``; a
       text session with fewer than ``min_text_responses`` completed
       responses → ``no_response``
    7. otherwise → ``billable``

    Returns:
        The verdict, with ``rule`` naming the rule and the measured values.
    """
    if m.turn_failure:
        return Verdict(False, Reason.TURN_FAILURE,
                       f"TURN failure: {m.ice_failure_detail or 'relay required and not reached'}")
    if m.ice_failure:
        return Verdict(False, Reason.ICE_FAILURE,
                       f"ICE failure: {m.ice_failure_detail or 'no candidate pair connected'}")
    if not m.connected and not (m.provider_error or "").startswith(PROVIDER_KEY_REFUSED + ":"):
        detail = m.provider_error or m.close_reason or "the provider never sent session.created"
        return Verdict(False, Reason.NOT_CONNECTED, f"not connected: {detail}")
    error_note = "no provider error"
    if m.provider_errors:
        error = f"provider error ({m.provider_errors}): {m.provider_error}"
        if policy.provider_error != BEFORE_THRESHOLD:
            return Verdict(False, Reason.PROVIDER_ERROR,
                           f"{error} (provider_error = any: any provider error voids the session)")
        met, before = (False, "figures at the error not recorded") \
            if m.responses_at_error is None else threshold_met(
                m.audio_in_ms_at_error or 0.0, m.audio_out_ms_at_error or 0.0,
                m.responses_at_error, m.responses_completed_at_error or 0, policy)
        if not met:
            return Verdict(False, Reason.PROVIDER_ERROR,
                           f"{error} (provider_error = before_threshold: before it, {before})")
        error_note = (f"{error} after the threshold was met (provider_error = before_threshold: "
                      f"before it, {before})")
    if m.connect_ms is not None and m.connect_ms > policy.max_connect_ms:
        return Verdict(False, Reason.CONNECT_TIMEOUT,
                       f"connect latency {m.connect_ms:.0f} ms > {policy.max_connect_ms:.0f} ms")
    met, words = threshold_met(m.audio_in_ms, m.audio_out_ms, m.responses, m.responses_completed,
                               policy)
    if not met:
        text = words.startswith("text")
        return Verdict(False, Reason.NO_RESPONSE if text else Reason.TOO_SHORT, words)
    connected = f"connected in {m.connect_ms or 0:.0f} ms ≤ {policy.max_connect_ms:.0f} ms"
    if words.startswith("text"):
        return Verdict(True, Reason.BILLABLE, f"{words}, {connected}, {error_note}")
    return Verdict(True, Reason.BILLABLE, f"{connected}, {words}, {error_note}")

"""The billable verdict: one pure function of a session's measurements and a
policy. Default policy: "only pay for successful sessions"."""

from __future__ import annotations

from dataclasses import dataclass

from voxgate.models.sessions import Measurements, Reason, Verdict

__all__ = ["VerdictPolicy", "decide"]


@dataclass(frozen=True, slots=True)
class VerdictPolicy:
    """Thresholds of the verdict.

    Attributes:
        min_audio_ms: audio exchanged (in + out) must be more than this, in ms.
        max_connect_ms: connect latency must be at most this, in ms.
        min_text_responses: a session with no audio at all (a text session)
            needs at least this many completed responses.
    """

    min_audio_ms: float = 5000.0
    max_connect_ms: float = 2000.0
    min_text_responses: int = 1


def decide(m: Measurements, policy: VerdictPolicy = VerdictPolicy()) -> Verdict:
    """Decide whether a finished session is billable.

    Rules, in order (the first that applies decides):

    1. TURN failure (WebRTC) → ``turn_failure``
    2. ICE failure (WebRTC) → ``ice_failure``
    3. never connected (no upstream ``session.created``) → ``not_connected``
    4. a provider error → ``provider_error``
    5. connect latency > ``max_connect_ms`` → ``connect_timeout``
    6. no audio either way (a text session): fewer than ``min_text_responses``
       completed responses → ``no_response``, else ``billable``
    7. audio exchanged ≤ ``min_audio_ms`` → ``too_short``
    8. otherwise → ``billable``

    Returns:
        The verdict, with ``rule`` naming the rule and the measured values.
    """
    if m.turn_failure:
        return Verdict(False, Reason.TURN_FAILURE,
                       f"TURN failure: {m.ice_failure_detail or 'relay required and not reached'}")
    if m.ice_failure:
        return Verdict(False, Reason.ICE_FAILURE,
                       f"ICE failure: {m.ice_failure_detail or 'no candidate pair connected'}")
    if not m.connected:
        detail = m.provider_error or m.close_reason or "the provider never sent session.created"
        return Verdict(False, Reason.NOT_CONNECTED, f"not connected: {detail}")
    if m.provider_errors:
        return Verdict(False, Reason.PROVIDER_ERROR,
                       f"provider error ({m.provider_errors}): {m.provider_error}")
    if m.connect_ms is not None and m.connect_ms > policy.max_connect_ms:
        return Verdict(False, Reason.CONNECT_TIMEOUT,
                       f"connect latency {m.connect_ms:.0f} ms > {policy.max_connect_ms:.0f} ms")
    audio = m.audio_exchanged_ms
    if audio == 0:
        done, need = m.responses_completed, policy.min_text_responses
        if done < need:
            return Verdict(False, Reason.NO_RESPONSE,
                           f"text session (no audio): {done} completed response"
                           f"{'s' if done != 1 else ''} < {need}")
        return Verdict(True, Reason.BILLABLE,
                       f"text session (no audio): {done} completed response"
                       f"{'s' if done != 1 else ''} ≥ {need}, connected in "
                       f"{m.connect_ms or 0:.0f} ms ≤ {policy.max_connect_ms:.0f} ms, "
                       "no provider error")
    if audio <= policy.min_audio_ms:
        return Verdict(False, Reason.TOO_SHORT,
                       f"audio exchanged {audio / 1000:.1f} s ≤ {policy.min_audio_ms / 1000:.1f} s")
    return Verdict(True, Reason.BILLABLE,
                   f"connected in {m.connect_ms or 0:.0f} ms ≤ {policy.max_connect_ms:.0f} ms, "
                   f"audio exchanged {audio / 1000:.1f} s > {policy.min_audio_ms / 1000:.1f} s, "
                   "no provider error")

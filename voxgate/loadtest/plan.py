"""What each load-test session does, and what voxgate must decide about it.

Pure: no I/O, no clock. :func:`parse_mix` reads a fault mix
(``short=0.1,provider_error=0.1,slow_created=0.1,vanish=0.1``),
:func:`plan_sessions` turns it into one :class:`SessionPlan` per session,
deterministically from a seed, and :func:`ground_truth` names the verdict
reason voxgate must record, from the plan and what the client observed.

Session kinds and their ground truth (rules of
:func:`voxgate.metering.verdict.decide_verdict` under the default policy,
``provider_error = "any"``; sessions asking for ``echo`` get the audio they
send straight back, so the audio exchanged is the audio sent plus its echo):

====================  ===========================================  ================
kind                  what the client does                         ground truth
====================  ===========================================  ================
``normal``            streams ``audio_ms`` of audio, waits for     ``billable`` if
                      every echo, closes with 1000                 in + out > 5 s,
                                                                   else
                                                                   ``too_short``
``short``             the same with at most :data:`SHORT_AUDIO_MS` ``too_short``
                      of audio (in + out ≤ 4 s)
``provider_error``    asks the provider for ``server_error:MS``;   ``provider_error``
                      streams, waits for the ``error`` event
``slow_created``      asks for ``delay_created:2500``              ``connect_timeout``
                      (``session.created`` 2.5 s late)
``vanish``            streams until ``vanish_after_ms``, waits     as ``normal``,
                      for the echo of every chunk sent, then       from the audio
                      aborts the TCP connection (no close frame)   exchanged before
                                                                   vanishing
``failed_responses``  asks for ``fail_responses`` (no echo),       ``provider_error``
                      turns VAD off, streams, asks for a response
                      and gets ``response.done`` ``failed`` with a
                      ``server_error`` and no audio
``text_blip``         a text chat (no echo, VAD off):              ``billable`` by
                      :data:`TEXT_RESPONSES` rounds of             the text rule
                      ``conversation.item.create`` +               (its responses
                      ``response.create`` with                     produced no
                      ``output_modalities: ["text"]``, each        audio)
                      waiting for its completed ``response.done``,
                      and one 20 ms ``input_audio_buffer.append``
                      after the first
``format_pcmu``       streams a third of ``audio_ms`` in PCM16,    as ``normal``
``format_pcma``       sends ``session.update`` to ``audio/pcmu``
                      (``audio/pcma``) in and out and at once,
                      without waiting for ``session.updated``, a
                      third in that format (160 B per 20 ms), then
                      ``session.update`` back to ``audio/pcm``
                      24 kHz and the rest in PCM16
``provider_eof``      asks for ``eof:1``: streams, waits for the   ``provider_error``
                      echo, commits; the provider ends the echo    (close code
                      response, then drops its TCP connection      1006, closed by
                      without a close frame                        ``upstream``)
``late_error``        a long session (at least                     ``provider_error``
                      :data:`LATE_ERROR_MIN_MS`): asks for
                      ``server_error:MS`` 1 s before its audio
                      ends, long after the 5 s threshold was met;
                      waits for the ``error`` event
``turn_failure``      WebRTC only: offers ICE candidates that can  ``turn_failure``
                      only work through a TURN relay that is not
                      reachable
====================  ===========================================  ================

Phone calls (``--transport twilio``, :data:`TWILIO_KINDS`) follow the
same scripts with Twilio's messages: the fault goes to the provider as the
custom parameter ``voxgate_fault``, the audio as 20 ms ``media`` frames of
8 kHz μ-law (8 bytes per ms), the provider's echo comes back as ``media``
(each followed by a ``mark`` the client echoes once it has played it), the
call ends with ``stop`` (``vanish``: the TCP connection aborted). The
provider's ``error`` never reaches a phone line: a ``provider_error`` or
``late_error`` call streams on and ends as a normal one.

A ``vanish`` session vanishes early (after :data:`VANISH_EARLY_MS`, so
``too_short``) or late (after three quarters of ``audio_ms``), alternately,
so both outcomes are exercised. The exchanged audio is exact: the client
aborts only once it has received the echo of every chunk it sent, so voxgate
has relayed and metered all of it both ways.

:func:`ground_truth` applies the rules to what the client itself counted:
audio in and out, each chunk's bytes divided by the rate of the format it
was sent (received) in, and the responses that completed; the modality is
that of the responses (output audio → the audio rule; completed responses
without audio → the text rule; neither → the audio rule if the client sent
audio).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = [
    "KINDS",
    "WS_KINDS",
    "WEBRTC_KINDS",
    "TWILIO_KINDS",
    "PROVIDER_ERROR_KINDS",
    "SHORT_AUDIO_MS",
    "SLOW_CREATED_MS",
    "VANISH_EARLY_MS",
    "LATE_ERROR_MIN_MS",
    "TEXT_RESPONSES",
    "CHUNK_MS",
    "SessionPlan",
    "parse_mix",
    "plan_sessions",
    "ground_truth",
]

KINDS = ("normal", "short", "provider_error", "slow_created", "vanish", "turn_failure",
         "failed_responses", "text_blip", "format_pcmu", "format_pcma", "provider_eof", "late_error")
"""Every session kind."""
WS_KINDS = ("normal", "short", "provider_error", "slow_created", "vanish",
            "failed_responses", "text_blip", "format_pcmu", "format_pcma", "provider_eof", "late_error")
"""The kinds a WebSocket session can be."""
WEBRTC_KINDS = ("normal", "short", "provider_error", "slow_created", "vanish", "turn_failure")
"""The kinds a WebRTC session can be."""
TWILIO_KINDS = ("normal", "short", "provider_error", "slow_created", "vanish", "late_error")
"""The kinds a phone call (Twilio Media Streams) can be: a caller streams
audio and hangs up (``stop``) or vanishes; it cannot chat in text, switch
formats, commit or ask for responses."""
PROVIDER_ERROR_KINDS = frozenset({"provider_error", "failed_responses", "provider_eof", "late_error"})
"""Kinds whose provider fails them: ``provider_error`` under ``provider_error = "any"``."""
CHUNK_MS = 20
"""Audio per ``input_audio_buffer.append``, in ms."""
SHORT_AUDIO_MS = 2000
"""Audio a ``short`` session sends at most, in ms (echoed: 4 s exchanged)."""
SLOW_CREATED_MS = 2500
"""How late a ``slow_created`` session's ``session.created`` comes, in ms."""
PROVIDER_ERROR_MS = 500
"""When the provider injects ``server_error`` in a ``provider_error`` session, in ms."""
VANISH_EARLY_MS = 1000
"""When an early ``vanish`` session vanishes, in ms of audio sent."""
LATE_ERROR_MIN_MS = 6000
"""A ``late_error`` session streams at least this much audio, in ms; its
provider error comes 1 s before the end (≥ 10 s exchanged by then)."""
LATE_ERROR_BEFORE_END_MS = 1000
"""How long before a ``late_error`` session's audio ends its error is injected, in ms."""
TEXT_RESPONSES = 3
"""Completed text responses a ``text_blip`` session asks for."""

_FAULTS = {
    "provider_error": f"echo,server_error:{PROVIDER_ERROR_MS}",
    "slow_created": f"echo,delay_created:{SLOW_CREATED_MS}",
    "failed_responses": "fail_responses",
    "text_blip": "",
    "provider_eof": "echo,eof:1",
}


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """One session of a run.

    Attributes:
        index: 0-based position in the run.
        kind: one of :data:`KINDS`.
        audio_ms: audio to stream, in ms (a multiple of :data:`CHUNK_MS`).
        fault: the ``voxgate_fault`` spec to ask the provider for
            (``echo`` included for every kind that streams audio and waits
            for its echo; empty for none).
    """

    index: int
    kind: str
    audio_ms: int
    fault: str

    @property
    def chunks(self) -> int:
        """20 ms chunks to send."""
        return self.audio_ms // CHUNK_MS

    @property
    def echo(self) -> bool:
        """The provider echoes this session's audio."""
        return "echo" in self.fault.split(",")


def parse_mix(spec: str | None, *, kinds: tuple[str, ...] = KINDS) -> dict[str, float]:
    """Parse ``kind=fraction,...`` into ``{kind: fraction}``.

    Raises:
        ValueError: unknown kind ("unknown session kind 'x'"), a fraction
            outside 0–1, or fractions summing to more than 1.
    """
    mix: dict[str, float] = {}
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if name not in kinds or name == "normal":
            raise ValueError(f"unknown session kind {name!r} (one of {', '.join(kinds[1:])})")
        try:
            fraction = float(value) if sep else 0.0
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not a number") from None
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"{name}: fraction {fraction} outside 0-1")
        mix[name] = mix.get(name, 0.0) + fraction
    if sum(mix.values()) > 1.0 + 1e-9:
        raise ValueError(f"fractions sum to {sum(mix.values()):.3f} > 1")
    return mix


def _whole_chunks(ms: int) -> int:
    return max(CHUNK_MS, ms - ms % CHUNK_MS)


def plan_sessions(n: int, mix: dict[str, float], duration_ms: int, seed: int = 0,
                  max_duration_ms: int | None = None) -> list[SessionPlan]:
    """``n`` sessions: ``round(fraction × n)`` of each kind of ``mix``, the rest
    ``normal``, in an order shuffled by ``seed`` (the same arguments always
    give the same plans).

    Args:
        duration_ms: audio per session, in ms (rounded down to 20 ms).
        max_duration_ms: when given (and longer), each session's audio is
            drawn uniformly from ``duration_ms``–``max_duration_ms`` (whole
            20 ms chunks, from ``seed``) instead.
    """
    duration_ms = _whole_chunks(duration_ms)
    top = _whole_chunks(max_duration_ms) if max_duration_ms else duration_ms
    kinds: list[str] = []
    for kind in KINDS[1:]:
        kinds += [kind] * round(mix.get(kind, 0.0) * n)
    kinds = kinds[:n]
    kinds += ["normal"] * (n - len(kinds))
    random.Random(seed).shuffle(kinds)
    lengths = random.Random(f"{seed}/durations")
    plans = []
    vanished = 0
    for i, kind in enumerate(kinds):
        length = duration_ms
        if top > duration_ms:
            length = lengths.randrange(duration_ms, top + CHUNK_MS, CHUNK_MS)
        audio_ms, fault = length, _FAULTS.get(kind, "echo")
        if kind == "short":
            audio_ms = min(length, SHORT_AUDIO_MS)
        elif kind == "vanish":
            late = (length * 3 // 4) // CHUNK_MS * CHUNK_MS
            audio_ms = max(CHUNK_MS, VANISH_EARLY_MS if vanished % 2 == 0 else late)
            audio_ms = min(audio_ms, length)
            vanished += 1
        elif kind == "text_blip":
            audio_ms = CHUNK_MS
        elif kind == "late_error":
            audio_ms = max(length, LATE_ERROR_MIN_MS)
            fault = f"echo,server_error:{audio_ms - LATE_ERROR_BEFORE_END_MS}"
        plans.append(SessionPlan(i, kind, audio_ms, fault))
    return plans


def ground_truth(kind: str, audio_in_ms: float, audio_out_ms: float,
                 min_audio_ms: float = 5000.0, *, responses_completed: int = 0,
                 min_text_responses: int = 1) -> str:
    """The verdict reason voxgate must record for a session of ``kind`` that
    sent ``audio_in_ms`` and got ``audio_out_ms`` back and saw
    ``responses_completed`` responses complete (client-side counts), under
    ``provider_error = "any"``.

    The threshold follows the modality of the responses: output audio → the
    audio rule (in + out > ``min_audio_ms``, else ``too_short``); completed
    responses without audio → the text rule (at least
    ``min_text_responses``, else ``no_response``); neither → the audio rule
    if the client sent audio, else the text rule.
    """
    if kind == "turn_failure":
        return "turn_failure"
    if kind in PROVIDER_ERROR_KINDS:
        return "provider_error"
    if kind == "slow_created":
        return "connect_timeout"
    if audio_out_ms > 0 or (responses_completed == 0 and audio_in_ms > 0):
        return "billable" if audio_in_ms + audio_out_ms > min_audio_ms else "too_short"
    return "billable" if responses_completed >= min_text_responses else "no_response"

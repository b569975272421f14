"""What each load-test session does, and what voxgate must decide about it.

Pure: no I/O, no clock. :func:`parse_mix` reads a fault mix
(``short=0.1,provider_error=0.1,slow_created=0.1,vanish=0.1``),
:func:`plan_sessions` turns it into one :class:`SessionPlan` per session,
deterministically from a seed, and :func:`ground_truth` names the verdict
reason voxgate must record, from the plan and what the client observed.

Session kinds and their ground truth (rules of
:func:`voxgate.metering.verdict.decide`; every session runs against the echo
upstream, so the audio exchanged is the audio sent plus its echo):

==================  ===========================================  ================
kind                what the client does                         ground truth
==================  ===========================================  ================
``normal``          streams ``duration`` of audio, waits for      ``billable`` if
                    every echo, closes with 1000                  in + out > 5 s,
                                                                  else
                                                                  ``too_short``
``short``           the same with at most :data:`SHORT_AUDIO_MS`  ``too_short``
                    of audio (in + out ≤ 4 s)
``provider_error``  asks the provider for ``server_error:MS``;     ``provider_error``
                    streams, waits for the ``error`` event
``slow_created``    asks for ``delay_created:2500``               ``connect_timeout``
                    (``session.created`` 2.5 s late)
``vanish``          streams until ``vanish_after_ms``, waits      as ``normal``,
                    for the echo of every chunk sent, then        from the audio
                    aborts the TCP connection (no close frame)    exchanged before
                                                                  vanishing
``turn_failure``    WebRTC only: offers ICE candidates that can   ``turn_failure``
                    only work through a TURN relay that is not
                    reachable
==================  ===========================================  ================

A ``vanish`` session vanishes early (after :data:`VANISH_EARLY_MS`, so
``too_short``) or late (after three quarters of ``duration``), alternately,
so both outcomes are exercised. The exchanged audio is exact: the client
aborts only once it has received the echo of every chunk it sent, so voxgate
has relayed and metered all of it both ways.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = [
    "KINDS",
    "WS_KINDS",
    "SHORT_AUDIO_MS",
    "SLOW_CREATED_MS",
    "VANISH_EARLY_MS",
    "CHUNK_MS",
    "SessionPlan",
    "parse_mix",
    "plan_sessions",
    "ground_truth",
]

KINDS = ("normal", "short", "provider_error", "slow_created", "vanish", "turn_failure")
"""Every session kind."""
WS_KINDS = ("normal", "short", "provider_error", "slow_created", "vanish")
"""The kinds a WebSocket session can be."""
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


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """One session of a run.

    Attributes:
        index: 0-based position in the run.
        kind: one of :data:`KINDS`.
        audio_ms: audio to stream, in ms (a multiple of :data:`CHUNK_MS`).
        fault: the ``voxgate_fault`` spec to ask the provider for
            (always including ``echo``).
    """

    index: int
    kind: str
    audio_ms: int
    fault: str

    @property
    def chunks(self) -> int:
        """20 ms chunks to send."""
        return self.audio_ms // CHUNK_MS


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


def plan_sessions(n: int, mix: dict[str, float], duration_ms: int, seed: int = 0) -> list[SessionPlan]:
    """``n`` sessions: ``round(fraction × n)`` of each kind of ``mix``, the rest
    ``normal``, in an order shuffled by ``seed`` (the same arguments always
    give the same plans).

    Args:
        duration_ms: audio per session, in ms (rounded down to 20 ms).
    """
    duration_ms = max(CHUNK_MS, duration_ms - duration_ms % CHUNK_MS)
    kinds: list[str] = []
    for kind in KINDS[1:]:
        kinds += [kind] * round(mix.get(kind, 0.0) * n)
    kinds = kinds[:n]
    kinds += ["normal"] * (n - len(kinds))
    random.Random(seed).shuffle(kinds)
    plans = []
    vanished = 0
    for i, kind in enumerate(kinds):
        audio_ms, fault = duration_ms, "echo"
        if kind == "short":
            audio_ms = min(duration_ms, SHORT_AUDIO_MS)
        elif kind == "provider_error":
            fault = f"echo,server_error:{PROVIDER_ERROR_MS}"
        elif kind == "slow_created":
            fault = f"echo,delay_created:{SLOW_CREATED_MS}"
        elif kind == "vanish":
            late = (duration_ms * 3 // 4) // CHUNK_MS * CHUNK_MS
            audio_ms = max(CHUNK_MS, VANISH_EARLY_MS if vanished % 2 == 0 else late)
            audio_ms = min(audio_ms, duration_ms)
            vanished += 1
        plans.append(SessionPlan(i, kind, audio_ms, fault))
    return plans


def ground_truth(kind: str, audio_in_ms: float, audio_out_ms: float,
                 min_audio_ms: float = 5000.0) -> str:
    """The verdict reason voxgate must record for a session of ``kind`` that
    sent ``audio_in_ms`` and got ``audio_out_ms`` back (client-side counts).
    """
    if kind == "turn_failure":
        return "turn_failure"
    if kind == "provider_error":
        return "provider_error"
    if kind == "slow_created":
        return "connect_timeout"
    return "billable" if audio_in_ms + audio_out_ms > min_audio_ms else "too_short"

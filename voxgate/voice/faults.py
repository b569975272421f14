"""Fault injection for the local voice provider (tests and load tests).

Honoured only when ``VoiceSettings.faults_enabled`` is True; otherwise every
fault request is ignored, except ``echo`` in the URL or header (a responder
mode that harms nothing, used by ``voxgate loadtest`` against any local
provider). A session asks for faults with any of:

- the WebSocket URL query ``?voxgate_fault=SPEC``,
- the request header ``X-Voxgate-Fault: SPEC``,
- the ``session.update`` field ``session.voxgate_fault`` (``"SPEC"``).

``SPEC`` is a comma-separated list of:

====================  =======================================================
``server_error``      after the first ``response.done``, send an ``error``
                      event with ``"type": "server_error"``; the session stays
                      open.
``server_error:MS``   the same, MS ms after the session started instead.
``drop``              abort the TCP connection (no close frame) 1000 ms after
``drop:MS``           the session started (or MS ms).
``eof``               right after the first ``response.done`` (flushed), close
``eof:N``             the TCP connection without a close frame (or after the
                      Nth ``response.done``): a provider connection lost
                      mid-session.
``fail_responses``    every response ends ``status: "failed"`` with a
                      ``server_error`` in ``status_details.error`` and no
                      output (no audio, no text), as OpenAI's failed
                      responses do.
``stall``             the provider goes silent 1000 ms after the session
``stall:MS``          started (or MS ms): it stops reading (so answers no
                      ping) and sending, its TCP connection left open.
``close:CODE``        close the WebSocket with that close code (1000–4999)
                      right away (from ``session.update``: at once).
``delay_created:MS``  send ``session.created`` MS ms late (URL/header only).
``echo``              this session is in echo mode.
``rate_limits``       after each ``response.created``, send a
                      ``rate_limits.updated`` with the provider's own limits
                      (:data:`PROVIDER_RATE_LIMITS`), as OpenAI does.
====================  =======================================================

Parsing is pure: :func:`parse_faults` returns a :class:`Faults` value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["Faults", "parse_faults", "DEFAULT_DROP_MS", "PROVIDER_RATE_LIMITS"]

DEFAULT_DROP_MS = 1000
PROVIDER_RATE_LIMITS = [
    {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
    {"name": "tokens", "limit": 800000, "remaining": 799000, "reset_seconds": 0.075},
]
"""What the ``rate_limits`` fault sends: an operator's provider limits
(figures in the shape of OpenAI's, not any real account's)."""


@dataclass(frozen=True, slots=True)
class Faults:
    """Requested faults. Times are ms since the session started.

    Attributes:
        server_error: inject a ``server_error`` event.
        server_error_ms: when (None: after the first ``response.done``).
        drop_ms: abort the connection at this time, or None.
        eof_after: close the TCP connection (no close frame) after this
            many ``response.done``, or None.
        fail_responses: every response ends ``failed`` (server_error).
        stall_ms: go silent (read and send nothing) at this time, or None.
        close_code: close with this WebSocket code at once, or None.
        delay_created_ms: delay ``session.created`` by this much (0: none).
        echo: echo mode for this session.
        rate_limits: send the provider's ``rate_limits.updated``.
    """

    server_error: bool = False
    server_error_ms: int | None = None
    drop_ms: int | None = None
    eof_after: int | None = None
    fail_responses: bool = False
    stall_ms: int | None = None
    close_code: int | None = None
    delay_created_ms: int = 0
    echo: bool = False
    rate_limits: bool = False

    def merge(self, other: Faults) -> Faults:
        """``self`` with every fault set in ``other`` added."""
        changes = {}
        for name in self.__dataclass_fields__:
            value = getattr(other, name)
            if value not in (None, False, 0):
                changes[name] = value
        return replace(self, **changes)


def _ms(name: str, arg: str) -> int:
    try:
        value = int(arg)
    except ValueError:
        raise ValueError(f"fault {name}: {arg!r} is not a whole number of ms") from None
    if value < 0:
        raise ValueError(f"fault {name}: negative delay {value}")
    return value


def parse_faults(spec: str | None) -> Faults:
    """Parse a fault ``SPEC`` (see the module docstring); ``None`` or ``""``
    means no faults.

    Raises:
        ValueError: unknown fault name or bad argument ("unknown fault 'x'").
    """
    faults = Faults()
    if not spec:
        return faults
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, arg = part.partition(":")
        name = name.strip().lower()
        if name == "server_error":
            faults = replace(faults, server_error=True, server_error_ms=_ms(name, arg) if arg else None)
        elif name == "drop":
            faults = replace(faults, drop_ms=_ms(name, arg) if arg else DEFAULT_DROP_MS)
        elif name == "eof":
            count = _ms(name, arg) if arg else 1
            if count < 1:
                raise ValueError(f"fault eof: {count} responses (at least 1)")
            faults = replace(faults, eof_after=count)
        elif name == "stall":
            faults = replace(faults, stall_ms=_ms(name, arg) if arg else DEFAULT_DROP_MS)
        elif name == "fail_responses":
            faults = replace(faults, fail_responses=True)
        elif name == "close":
            code = _ms(name, arg) if arg else 1011
            if not 1000 <= code <= 4999:
                raise ValueError(f"fault close: code {code} outside 1000-4999")
            faults = replace(faults, close_code=code)
        elif name == "delay_created":
            faults = replace(faults, delay_created_ms=_ms(name, arg) if arg else 1000)
        elif name == "echo":
            faults = replace(faults, echo=True)
        elif name == "rate_limits":
            faults = replace(faults, rate_limits=True)
        else:
            raise ValueError(f"unknown fault {name!r}")
    return faults

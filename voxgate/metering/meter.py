"""The session meter: a sans-I/O object fed every event of a session, in both
directions (typed by ``voxgate.metering.events.classify``), and every
lifecycle step, each with a caller-supplied timestamp (monotonic
milliseconds). It never reads a clock and never touches a socket;
the relays feed it and read ``measurements()`` at the end.

What counts (OpenAI Realtime GA, https://platform.openai.com/docs/api-reference/realtime):

- connect latency: client accepted → upstream ``session.created`` (WebSocket);
  offer received → ready to carry media both ways (WebRTC, via ``media_ready``:
  ICE and DTLS connected, the data channel open when offered, upstream
  ``session.created``), whether or not the client has sent audio yet.
- audio in: the decoded length of each ``input_audio_buffer.append`` ``audio``
  payload in the session's input format; audio out: the same for
  ``response.output_audio.delta`` (and beta ``response.audio.delta``) ``delta``
  payloads in the output format (PCM16 24 kHz until told otherwise), each
  append in the format it was sent in. The input format follows the
  client's own ``session.update`` from the moment it is relayed, and goes
  back to the previous one if the provider answers that event with an
  ``error`` (``error.event_id`` = the update's ``event_id``; an update
  without one: an ``error`` without an ``event_id`` before the provider's
  ``session.updated``); the output format follows the upstream's
  ``session.created`` / ``session.updated``, which also set the input format
  when no client update is still awaiting its answer.
- tokens: the sums of every upstream ``response.done`` ``usage``, totals and
  details by modality (text, audio, image, cached).
- input transcription: the ``usage`` of every upstream
  ``conversation.item.input_audio_transcription.completed``, summed by the
  transcription model the provider's latest session object names
  (``Measurements.transcription``; priced at that model's rates).
- provider errors: an upstream ``error`` event whose ``error.type`` is not
  ``invalid_request_error`` (those answer the client's own mistakes), a
  ``response.done`` with ``status: "failed"`` whose
  ``status_details.error.type`` is not ``invalid_request_error`` (or that
  gives none), an upstream connect failure, an abnormal upstream close. The
  figures as they stood at the first one are kept (``*_at_error``).
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from voxgate.metering.events import CLIENT, SESSION_UPDATE, UPSTREAM, EventError, RelayedEvent, Usage
from voxgate.models.pricing import transcription_model
from voxgate.models.realtime import PCM24K, AudioFormat, audio_format_from_session
from voxgate.models.sessions import Measurements

__all__ = ["SessionMeter", "CLIENT", "UPSTREAM", "SERVER", "NORMAL_CLOSE_CODES", "SHUTDOWN"]

SERVER = "server"
# The close reason of a session voxgate ended because it was shutting down.
SHUTDOWN = "shutdown"

# RFC 6455 §7.4.1: 1000 normal closure, 1001 going away.
NORMAL_CLOSE_CODES = frozenset({1000, 1001})
# Error types that answer the client's own input, not a provider fault.
CLIENT_ERROR_TYPES = frozenset({"invalid_request_error"})
# The token counts of a response.done usage, each summed into the Measurements field of its name.
USAGE_FIELDS = tuple(f.name for f in fields(Usage))


class SessionMeter:
    """Measures one session. Not thread-safe; one per session.

    Args:
        accepted_ms: when the client was accepted (WebSocket upgraded, or the
            WebRTC offer received), in monotonic ms.
    """

    __slots__ = ("_m", "_t0", "_in", "_out", "_ended", "_counts", "_updates", "_asr",
                 "_media")

    def __init__(self, accepted_ms: float) -> None:
        self._m = Measurements()
        self._t0 = accepted_ms
        self._in: AudioFormat = PCM24K
        self._out: AudioFormat = PCM24K
        self._ended = False
        self._counts = self._m.event_counts
        # The client's session.update events awaiting the provider's answer,
        # oldest first: [event_id, input format before it, input format it set].
        self._updates: list[list[Any]] = []
        self._asr = ""  # the input transcription model the provider's session names
        self._media = False  # connect latency to media_ready (accepted(media=True))

    # -- lifecycle -------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._m.connected

    @property
    def ended(self) -> bool:
        return self._ended

    def accepted(self, now_ms: float, *, media: bool = False) -> None:
        """Restart the clock: the client was accepted at ``now_ms``.
        ``media``: a call whose connect latency runs to :meth:`media_ready`
        (WebRTC); the upstream ``session.created`` then sets
        ``upstream_ready_ms`` instead of ``connect_ms``."""
        self._t0 = now_ms
        self._media = media

    def upstream_connect_failed(self, now_ms: float, detail: str,
                                code: str = "upstream_unavailable") -> None:
        """The provider could not be reached (refused, timed out, TLS, HTTP 5xx),
        or refused the project's own key (``code`` ``provider_key_refused``:
        a provider error although the session never connected). A
        provider-side handshake refusal of the client's request (bad model,
        HTTP 4xx) is not a provider error: use ``upstream_refused``."""
        self._provider_error(f"{code}: {detail}")

    def upstream_refused(self, now_ms: float, detail: str) -> None:
        """The provider refused the client's request at the handshake (4xx)."""
        self._m.close_reason = detail[:200]

    def media_ready(self, now_ms: float) -> None:
        """WebRTC: the call can carry media both ways (ICE and DTLS connected,
        data channel open when offered, upstream ``session.created``); sets
        the connect latency (offer received → ready) if not yet set. The
        client's first audio plays no part, so it cannot move the latency."""
        if self._m.connect_ms is None and self._m.connected:
            self._m.connect_ms = now_ms - self._t0

    def joined(self, now_ms: float) -> None:
        """A sideband joined an established call (OpenAI SIP): its first
        event, ``session.created`` or not, shows the provider has the call;
        connected at ``now_ms`` if ``session.created`` has not said so."""
        if not self._m.connected:
            self._m.connected = True
            self._m.connect_ms = now_ms - self._t0

    def reported_audio(self, in_ms: float, out_ms: float) -> None:
        """Audio the provider reports rather than voxgate relaying it (a SIP
        call's audio flows on SIP): ``in_ms`` of the caller's speech and
        ``out_ms`` of the agent's, added to the audio exchanged (ms)."""
        self._m.audio_in_ms += in_ms
        self._m.audio_out_ms += out_ms

    def closed(self, by: str, code: int | None, reason: str | None, now_ms: float) -> None:
        """The session ended. ``by`` is ``client``, ``upstream`` or ``server``.
        Only the first call counts. An upstream close with a code other than
        1000/1001 is a provider error."""
        if self._ended:
            return
        self._ended = True
        m = self._m
        m.closed_by = by
        m.close_code = code
        if reason:
            m.close_reason = reason[:200]
        m.duration_ms = max(0.0, now_ms - self._t0)
        if by == UPSTREAM and code not in NORMAL_CLOSE_CODES:
            self._provider_error(f"upstream_closed: code {code} {reason or ''}".rstrip())

    # -- events ----------------------------------------------------------

    def record(self, ev: RelayedEvent, now_ms: float) -> None:
        """An event relayed to the provider (``ev.direction == "client"``) or
        to the client (``"upstream"``) at ``now_ms``, as
        :func:`voxgate.metering.events.classify` typed it. An upstream
        ``session.created`` sets the connect latency (or, for a media call,
        ``upstream_ready_ms``)."""
        m = self._m
        counts = self._counts
        counts[ev.type] = counts.get(ev.type, 0) + 1
        if ev.direction == CLIENT:
            m.events_in += 1
            m.bytes_in += ev.nbytes
            if ev.audio_bytes:
                m.audio_in_ms += self._in.ms_from_bytes(ev.audio_bytes)
            elif ev.type == SESSION_UPDATE:
                fin = audio_format_from_session(ev.session or {})[0]
                self._updates.append([ev.event_id, self._in, fin])
                if fin is not None:
                    self._in = fin
            return
        m.events_out += 1
        m.bytes_out += ev.nbytes
        if ev.audio_bytes:
            m.audio_out_ms += self._out.ms_from_bytes(ev.audio_bytes)
        elif ev.type == "session.created" or ev.type == "session.updated":
            if ev.type == "session.created" and not m.connected:
                m.connected = True
                if self._media:
                    m.upstream_ready_ms = now_ms - self._t0
                else:
                    m.connect_ms = now_ms - self._t0
            if ev.type == "session.updated" and self._updates:
                self._updates.pop(0)  # answers the oldest client update
            if ev.session is not None:
                self.session_formats(ev.session)
        elif ev.error is not None:
            err = ev.error
            self._update_failed(err)
            if err.type not in CLIENT_ERROR_TYPES:
                self._provider_error(_error_detail(err))
        elif ev.type == "response.done":
            if ev.response_status == "failed" and (
                    ev.status_error is None or ev.status_error.type not in CLIENT_ERROR_TYPES):
                err = ev.status_error or EventError(None, None, None)
                self._provider_error("response failed: " + _error_detail(err))
                m.responses_failed += 1
            m.responses += 1
            if ev.response_status == "completed":
                m.responses_completed += 1
            if ev.usage is not None:
                for name in USAGE_FIELDS:  # Measurements has a field of each name
                    setattr(m, name, getattr(m, name) + getattr(ev.usage, name))
        elif ev.transcription is not None:
            t = ev.transcription
            sums = m.transcription.setdefault(self._asr, {})
            for name, value in (("input_text_tokens", t.input_text_tokens),
                                ("input_audio_tokens", t.input_audio_tokens),
                                ("output_text_tokens", t.output_text_tokens),
                                ("seconds", t.seconds)):
                sums[name] = sums.get(name, 0) + value

    def client_rejected(self, nbytes: int) -> None:
        """voxgate answered a client message with an ``error`` event instead of
        relaying it (malformed JSON, unknown type, invalid base64, too large)."""
        self._m.client_errors += 1
        self._m.bytes_in += nbytes

    def session_formats(self, session: dict[str, Any]) -> None:
        """Adopt the audio formats a provider's session object sets: the
        output format always, the input format unless a client
        ``session.update`` still awaits its answer (the client's own format
        then stands: its appends are already in it); and the input
        transcription model it names, if any."""
        fin, fout = audio_format_from_session(session)
        self._asr = transcription_model(session) or self._asr
        if fin is not None and not self._updates:
            self._in = fin
        if fout is not None:
            self._out = fout

    def _update_failed(self, err: EventError) -> None:
        """An upstream ``error``: if it answers a pending client
        ``session.update`` (by ``event_id``; or, with no ``event_id`` on
        either, the oldest such update), that update did not apply: its input
        format is undone."""
        updates = self._updates
        i = next((i for i, u in enumerate(updates) if u[0] == err.event_id), None)
        if i is None:
            return
        before = updates.pop(i)[1]
        current = before  # what the input format is without the failed update
        for later in updates[i:]:
            later[1] = current
            if later[2] is not None:
                break  # a later update set its own format: that one stands
        else:
            self._in = current

    # -- WebRTC / ICE ------------------------------------------------------

    def ice_state(self, state: str, now_ms: float) -> None:
        """An ``iceConnectionState`` change (W3C WebRTC §4.4.4)."""
        m = self._m
        m.ice_state = state
        if state == "checking" and m.ice_checking_ms is None:
            m.ice_checking_ms = now_ms - self._t0
        elif state in ("connected", "completed") and m.ice_connected_ms is None:
            m.ice_connected_ms = now_ms - self._t0

    def dtls_connected(self, now_ms: float) -> None:
        if self._m.dtls_connected_ms is None:
            self._m.dtls_connected_ms = now_ms - self._t0

    def candidate_pair(self, local_type: str, remote_type: str) -> None:
        """The selected candidate pair's types; ``relay`` if either side is."""
        self._m.ice_pair_type = "relay" if "relay" in (local_type, remote_type) else (
            "srflx" if "srflx" in (local_type, remote_type) else (
                "prflx" if "prflx" in (local_type, remote_type) else local_type))

    def ice_failed(self, detail: str, *, turn: bool) -> None:
        """ICE failed or did not connect in time; ``turn`` when relay was
        required or was the only way (a TURN failure), else an ICE failure."""
        m = self._m
        if turn:
            m.turn_failure = True
        else:
            m.ice_failure = True
        m.ice_failure_detail = detail[:200]

    def measurements(self) -> Measurements:
        """The measurements so far (a live object; copy it to keep a snapshot)."""
        return self._m

    def snapshot(self, now_ms: float) -> Measurements:
        """A copy of the measurements as of ``now_ms`` (monotonic ms), the
        session left running: ``duration_ms`` is the time since accepted
        (the final one once ended), the rest as ``measurements()``. For the
        heartbeat's checkpoints."""
        m = replace(self._m, event_counts=dict(self._m.event_counts),
                    transcription={k: dict(v) for k, v in self._m.transcription.items()})
        if not self._ended:
            m.duration_ms = max(0.0, now_ms - self._t0)
        return m

    # -- helpers ---------------------------------------------------------

    def _provider_error(self, detail: str) -> None:
        m = self._m
        if m.provider_errors == 0:
            m.audio_in_ms_at_error = m.audio_in_ms
            m.audio_out_ms_at_error = m.audio_out_ms
            m.responses_at_error = m.responses
            m.responses_completed_at_error = m.responses_completed
        m.provider_errors += 1
        if m.provider_error is None:
            m.provider_error = detail[:300]


def _error_detail(err: EventError) -> str:
    """``type: code message``, the parts the provider gave (``error`` for no type)."""
    rest = " ".join(part for part in (err.code, err.message) if part)
    return f"{err.type or 'error'}: {rest}" if rest else (err.type or "error")

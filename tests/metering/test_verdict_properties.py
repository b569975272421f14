"""Properties of the meter and the verdict over random sessions (issue 20):
a single short append or a single extra text response never moves a session
across the modality boundary, and audio in is exactly the bytes sent divided
by each chunk's format rate, format switches included."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from voxgate.metering.events import CLIENT, UPSTREAM, classify
from voxgate.metering.meter import SessionMeter
from voxgate.metering.verdict import VerdictPolicy, decide_verdict

# bytes per ms of each input format: PCM16 24 kHz 48, G.711 8 kHz 8
RATES = {"audio/pcm": 48, "audio/pcmu": 8, "audio/pcma": 8}
TEXT_REASONS = {"no_response"}
AUDIO_REASONS = {"too_short"}


def _fmt(name: str) -> dict:
    return {"type": name, "rate": 24000} if name == "audio/pcm" else {"type": name}


# one step of a session: (kind, argument)
steps = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(1, 50)),            # chunks of 20 ms in the current format
    st.tuples(st.just("update"), st.sampled_from(sorted(RATES))),  # the client's session.update
    st.tuples(st.just("updated"), st.none()),                     # the provider's answer
    st.tuples(st.just("reject"), st.none()),                      # the provider rejects the oldest update
    st.tuples(st.just("audio_out"), st.integers(1, 100)),         # 20 ms deltas of output audio
    st.tuples(st.just("done"), st.sampled_from(["completed", "cancelled", "incomplete"])),
), max_size=40)


def run(session_steps, *, extra: str | None = None) -> tuple[SessionMeter, float]:
    """Play the steps; returns the meter and the audio in expected from the
    bytes sent and the format each chunk was sent in."""
    meter = SessionMeter(0.0)
    meter.record(classify(UPSTREAM, "session.created", 100, {"type": "session.created", "session": {}}), 50.0)
    current, pending, expected, n = "audio/pcm", [], 0.0, 0
    for kind, arg in session_steps:
        if kind == "append":
            nbytes = RATES[current] * 20 * arg
            meter.record(classify(CLIENT, "input_audio_buffer.append", nbytes,
                                  {"type": "input_audio_buffer.append",
                                   "audio": base64.b64encode(bytes(nbytes)).decode()}), 60.0)
            expected += nbytes / RATES[current]
        elif kind == "update":
            n += 1
            pending.append((f"evt_{n}", current))
            meter.record(classify(CLIENT, "session.update", 100, {
                "type": "session.update", "event_id": f"evt_{n}",
                "session": {"type": "realtime", "audio": {"input": {"format": _fmt(arg)}}}}), 60.0)
            current = arg
        elif kind == "updated" and pending:
            pending.pop(0)
            meter.record(classify(UPSTREAM, "session.updated", 100, {"type": "session.updated", "session": {
                "audio": {"input": {"format": _fmt(current)}}}}), 60.0)
        elif kind == "reject" and pending:
            event_id, before = pending.pop(0)
            if not pending:
                current = before
            else:
                pending[0] = (pending[0][0], before)
            meter.record(classify(UPSTREAM, "error", 100, {"type": "error", "error": {
                "type": "invalid_request_error", "message": "no", "event_id": event_id}}), 60.0)
        elif kind == "audio_out":
            delta = base64.b64encode(bytes(960 * arg)).decode()
            meter.record(classify(UPSTREAM, "response.output_audio.delta", 100,
                                  {"type": "response.output_audio.delta", "delta": delta}), 60.0)
        elif kind == "done":
            meter.record(classify(UPSTREAM, "response.done", 100,
                                  {"type": "response.done", "response": {"status": arg}}), 60.0)
    if extra == "append":  # one short append, 20 ms of whatever the format is
        nbytes = RATES[current] * 20
        meter.record(classify(CLIENT, "input_audio_buffer.append", nbytes, {
            "type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(nbytes)).decode()}),
            60.0)
        expected += 20.0
    elif extra == "text":
        meter.record(classify(UPSTREAM, "response.done", 100,
                              {"type": "response.done", "response": {"status": "completed"}}), 60.0)
    meter.closed("client", 1000, None, 60_000.0)
    return meter, expected


def family(reason: str, rule: str) -> str:
    if reason in TEXT_REASONS or rule.startswith("text session"):
        return "text"
    if reason in AUDIO_REASONS or "audio exchanged" in rule:
        return "audio"
    return reason


@settings(max_examples=300, deadline=None)
@given(steps)
def test_audio_in_is_bytes_over_each_chunks_rate(session_steps):
    meter, expected = run(session_steps)
    assert meter.measurements().audio_in_ms == expected


@settings(max_examples=300, deadline=None)
@given(steps, st.sampled_from(["append", "text"]))
def test_a_blip_never_crosses_the_modality_boundary(session_steps, extra):
    """A session the provider answered (a response or output audio) keeps
    its rule under one more short append or one more text response; adding
    a text response can only make a text session more billable, and an
    append never makes a billable session free."""
    policy = VerdictPolicy()
    before_meter, _ = run(session_steps)
    after_meter, _ = run(session_steps, extra=extra)
    before = decide_verdict(before_meter.measurements(), policy)
    after = decide_verdict(after_meter.measurements(), policy)
    if before_meter.measurements().modality != "none":
        assert family(before.reason, before.rule) == family(after.reason, after.rule)
    if extra == "append":
        assert after.billable >= before.billable
    elif before_meter.measurements().modality == "text":
        assert after.billable >= before.billable

"""The sans-I/O meter, the verdict and the admission rules, fed events and
times directly: no event loop, no sockets."""

from __future__ import annotations

import base64

import pytest

from voxgate.admission.base import InProcessAdmission
from voxgate.errors import ConcurrencyLimited, QuotaExceeded, RateLimited
from voxgate.metering.events import CLIENT, UPSTREAM, EventError, Usage, b64_audio_bytes, classify
from voxgate.metering.meter import SessionMeter
from voxgate.metering.rate import RateLimitState, TokenBucket, plan_rate_limits
from voxgate.metering.rules import check_quota
from voxgate.metering.verdict import VerdictPolicy, decide_verdict
from voxgate.models import Plan
from voxgate.models.realtime import PCM24K, b64_decoded_len
from voxgate.models.sessions import Measurements, SessionRecord


def b64(nbytes: int) -> str:
    return base64.b64encode(bytes(nbytes)).decode()


def up(meter: SessionMeter, etype: str, nbytes: int, now_ms: float, event: dict | None = None) -> None:
    """An upstream event relayed to the client, classified as the relays do."""
    meter.record(classify(UPSTREAM, etype, nbytes, {"type": etype, **(event or {})}), now_ms)


def append(meter: SessionMeter, audio: str, nbytes: int) -> None:
    meter.record(classify(CLIENT, "input_audio_buffer.append", nbytes,
                          {"type": "input_audio_buffer.append", "audio": audio}), 0.0)


def connected_meter(connect_ms: float = 100.0) -> SessionMeter:
    meter = SessionMeter(0.0)
    up(meter, "session.created", 500, connect_ms, {"session": {}})
    return meter


def feed_audio_in(meter: SessionMeter, ms: int) -> None:
    chunk = b64(960)  # 20 ms of 24 kHz PCM16
    for _ in range(ms // 20):
        append(meter, chunk, len(chunk) + 40)


@pytest.mark.parametrize("nbytes", [0, 1, 2, 3, 959, 960, 961])
def test_b64_length_arithmetic_is_exact(nbytes):
    s = b64(nbytes)
    assert b64_decoded_len(len(s), s.count("=", len(s) - 2)) == nbytes


def test_audio_ms_from_payload_lengths():
    meter = connected_meter()
    feed_audio_in(meter, 6000)
    delta = b64(48000)  # 1 s out
    up(meter, "response.output_audio.delta", len(delta) + 60, 200.0, {"delta": delta})
    m = meter.measurements()
    assert m.audio_in_ms == pytest.approx(6000.0)
    assert m.audio_out_ms == pytest.approx(1000.0)
    assert m.events_in == 300 and m.event_counts["input_audio_buffer.append"] == 300


def test_g711_format_from_session_updated():
    meter = connected_meter()
    up(meter, "session.updated", 300, 150.0, {
        "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}},
                              "output": {"format": {"type": "audio/pcma"}}}}})
    chunk = b64(8000)  # 1 s of 8 kHz G.711
    append(meter, chunk, len(chunk))
    up(meter, "response.output_audio.delta", len(chunk), 0.0, {"delta": chunk})
    assert meter.measurements().audio_in_ms == pytest.approx(1000.0)
    assert meter.measurements().audio_out_ms == pytest.approx(1000.0)


def test_connect_latency_and_duration():
    meter = SessionMeter(1000.0)
    up(meter, "session.created", 100, 1250.0, {"session": {}})
    meter.closed("client", 1000, None, 9000.0)
    m = meter.measurements()
    assert m.connect_ms == 250.0 and m.duration_ms == 8000.0 and m.closed_by == "client"


def test_client_error_types_are_not_provider_errors():
    meter = connected_meter()
    up(meter, "error", 100, 1.0, {"error": {"type": "invalid_request_error",
                                                            "code": "x", "message": "bad"}})
    assert meter.measurements().provider_errors == 0
    up(meter, "error", 100, 1.0, {"error": {"type": "server_error",
                                                            "message": "boom"}})
    assert meter.measurements().provider_errors == 1
    assert "boom" in meter.measurements().provider_error


def test_abnormal_upstream_close_is_provider_error_normal_is_not():
    normal = connected_meter()
    normal.closed("upstream", 1000, None, 10.0)
    assert normal.measurements().provider_errors == 0
    dropped = connected_meter()
    dropped.closed("upstream", 1006, None, 10.0)
    assert dropped.measurements().provider_errors == 1
    client = connected_meter()
    client.closed("client", 1006, None, 10.0)  # the client vanishing is not the provider's fault
    assert client.measurements().provider_errors == 0


def test_response_done_usage_is_summed():
    meter = connected_meter()
    for _ in range(2):
        up(meter, "response.done", 100, 1.0, {"response": {"usage": {
            "input_tokens": 10, "output_tokens": 5, "total_tokens": 15}}})
    m = meter.measurements()
    assert (m.input_tokens, m.output_tokens, m.total_tokens, m.responses) == (20, 10, 30, 2)


USAGE = {"input_tokens": 130, "output_tokens": 64, "total_tokens": 194,
         "input_token_details": {"text_tokens": 40, "audio_tokens": 88, "image_tokens": 2, "cached_tokens": 60,
                                 "cached_tokens_details": {"text_tokens": 20, "audio_tokens": 39, "image_tokens": 1}},
         "output_token_details": {"text_tokens": 14, "audio_tokens": 50}}


def test_usage_details_by_modality_are_classified_and_summed():
    ev = classify(UPSTREAM, "response.done", 10, {"type": "response.done", "response": {
        "status": "completed", "usage": USAGE}})
    assert ev.usage == Usage(130, 64, 194, input_text_tokens=40, input_audio_tokens=88, input_image_tokens=2,
                             cached_tokens=60, cached_text_tokens=20, cached_audio_tokens=39, cached_image_tokens=1,
                             output_text_tokens=14, output_audio_tokens=50)
    meter = connected_meter()
    for _ in range(3):
        up(meter, "response.done", 100, 1.0, {"response": {"status": "completed", "usage": USAGE}})
    up(meter, "response.done", 100, 1.0, {"response": {"status": "cancelled", "usage": {  # no details: 0
        "input_tokens": 5, "output_tokens": 1, "total_tokens": 6}}})
    m = meter.measurements()
    assert (m.input_tokens, m.output_tokens, m.total_tokens) == (395, 193, 588)
    assert m.token_details() == {
        "input_token_details": {"text_tokens": 120, "audio_tokens": 264, "image_tokens": 6, "cached_tokens": 180,
                                "cached_tokens_details": {"text_tokens": 60, "audio_tokens": 117,
                                                          "image_tokens": 3}},
        "output_token_details": {"text_tokens": 42, "audio_tokens": 150}}
    # stored as JSON and read back; a record stored before the details were kept reads them as 0
    assert Measurements.from_dict(m.to_dict()) == m
    old = {k: v for k, v in m.to_dict().items() if "_tokens" not in k or k in (
        "input_tokens", "output_tokens", "total_tokens")}
    back = Measurements.from_dict(old)
    assert back.input_tokens == 395 and back.token_details()["output_token_details"] == {
        "text_tokens": 0, "audio_tokens": 0}
    details = SessionRecord("sess_1", "acct", "proj", "websocket", 0.0, measurements=m).to_api()
    assert details["input_token_details"] == m.token_details()["input_token_details"]
    assert details["output_token_details"] == {"text_tokens": 42, "audio_tokens": 150}


def test_only_first_close_counts():
    meter = connected_meter()
    meter.closed("client", 1000, None, 50.0)
    meter.closed("upstream", 1006, None, 80.0)
    m = meter.measurements()
    assert (m.closed_by, m.close_code, m.duration_ms, m.provider_errors) == ("client", 1000, 50.0, 0)


# -- verdict ---------------------------------------------------------------

def verdict_of(**setup) -> tuple[bool, str]:
    meter = connected_meter(setup.get("connect_ms", 100.0)) if setup.get("connected", True) \
        else SessionMeter(0.0)
    feed_audio_in(meter, setup.get("audio_ms", 6000))
    if setup.get("provider_error"):
        up(meter, "error", 10, 1.0, {"error": {"type": "server_error"}})
    if setup.get("turn"):
        meter.ice_failed("relay only, TURN allocation failed", turn=True)
    if setup.get("ice"):
        meter.ice_failed("no pair", turn=False)
    meter.closed("client", 1000, None, 7000.0)
    v = decide_verdict(meter.measurements(), setup.get("policy", VerdictPolicy()))
    return v.billable, v.reason


def test_verdict_reasons():
    assert verdict_of() == (True, "billable")
    assert verdict_of(audio_ms=5000) == (False, "too_short")  # more than 5 s is required
    assert verdict_of(audio_ms=5020) == (True, "billable")
    assert verdict_of(connect_ms=2000.0) == (True, "billable")
    assert verdict_of(connect_ms=2001.0) == (False, "connect_timeout")
    assert verdict_of(connected=False) == (False, "not_connected")
    assert verdict_of(provider_error=True) == (False, "provider_error")
    assert verdict_of(turn=True) == (False, "turn_failure")
    assert verdict_of(ice=True) == (False, "ice_failure")
    # order: a provider error beats a slow connect
    assert verdict_of(provider_error=True, connect_ms=3000.0) == (False, "provider_error")
    # before_threshold: 6 s of audio before the error, so the connect latency decides
    assert verdict_of(provider_error=True, connect_ms=3000.0, policy=LATE) == (False, "connect_timeout")


def test_verdict_policy_is_configurable_and_rule_names_values():
    meter = connected_meter(1500.0)
    feed_audio_in(meter, 3000)
    v = decide_verdict(meter.measurements(), VerdictPolicy(min_audio_ms=2000, max_connect_ms=1000))
    assert v.reason == "connect_timeout"
    assert "1500 ms > 1000 ms" in v.rule


# -- admission ---------------------------------------------------------------

FREE = Plan(id="free", name="Free", sessions_included=3, concurrency=2, requests_per_minute=60)
PAYG = Plan(id="payg", name="PAYG", sessions_included=0, overage_cents=10)


def test_quota_counts_in_flight_as_reserved():
    check_quota(FREE, 1, 1)
    with pytest.raises(QuotaExceeded):
        check_quota(FREE, 2, 1)
    check_quota(PAYG, 10_000, 500)  # no cap with an overage price


def test_token_bucket_refills_per_second():
    bucket = TokenBucket.full(60, 0.0)
    assert all(bucket.take(0.0, 60) == 0.0 for _ in range(60))
    wait = bucket.take(0.0, 60)
    assert wait == pytest.approx(1.0)
    assert bucket.take(1.0, 60) == 0.0


def billable(n: int):
    """A seed: the store's billable sessions of the period."""
    async def seed() -> int:
        return n
    return seed


async def test_in_process_admission_leases():
    adm = InProcessAdmission(lease_ttl_s=10)
    a = await adm.acquire("acct", "s1", FREE, "2026-01", billable(0), now=0.0)
    await adm.acquire("acct", "s2", FREE, "2026-01", billable(0), now=0.0)
    with pytest.raises(ConcurrencyLimited):
        await adm.acquire("acct", "s3", FREE, "2026-01", billable(0), now=1.0)
    await adm.complete(a, billable=True)
    await adm.release(a)  # idempotent: counted once
    assert await adm.in_flight("acct") == 1
    s4 = await adm.acquire("acct", "s4", FREE, "2026-01", billable(0), now=1.0)
    await adm.complete(s4, billable=True)
    with pytest.raises(QuotaExceeded, match=r"\(2 billable, 1 in progress, 3 included\)"):
        await adm.acquire("acct", "s5", FREE, "2026-01", billable(0), now=1.0)
    # an unrenewed lease (s2) expires; the next period starts from its own count
    b = await adm.acquire("acct", "s6", FREE, "2026-02", billable(0), now=12.0)
    assert await adm.in_flight("acct") == 1 and b.session_id == "s6"


async def test_in_process_churn_admits_exactly_the_quota():
    """40 tasks cycling sessions that end billable against 30 left (10 of 40
    used, read from a slow store while the first sessions already finish):
    exactly 30 admitted."""
    import asyncio

    adm = InProcessAdmission()
    plan = Plan(id="cap", name="Cap", sessions_included=40)
    admitted = 0

    async def slow_store() -> int:
        await asyncio.sleep(0.01)
        return 10

    async def client(n: int) -> None:
        nonlocal admitted
        for i in range(5):
            try:
                lease = await adm.acquire("acct", f"s{n}-{i}", plan, "2026-01", slow_store,
                                          now=0.0)
            except QuotaExceeded:
                continue
            admitted += 1
            await asyncio.sleep(0.001 * (n % 3))
            await adm.complete(lease, billable=True)

    await asyncio.gather(*(client(n) for n in range(40)))
    assert admitted == 30
    assert (await adm.usage("acct", "2026-01", slow_store, 0.0)).billable_used == 40


async def test_rate_limit_raises_with_retry_after():
    adm = InProcessAdmission()
    plan = Plan(id="p", name="P", requests_per_minute=2)
    await adm.check_rate("key", plan, 0.0)
    await adm.check_rate("key", plan, 0.0)
    with pytest.raises(RateLimited) as exc:
        await adm.check_rate("key", plan, 0.0)
    assert exc.value.retry_after_s == pytest.approx(30.0)
    await adm.check_rate("other-key", plan, 0.0)


def test_plan_settlement_rules():
    pro = Plan(id="pro", name="Pro", price_cents=2900, sessions_included=400, overage_cents=7)
    assert not pro.charges_session(399) and pro.charges_session(400)
    assert PAYG.charges_session(0)
    assert not FREE.charges_session(10)
    assert pro.cost_cents(410) == 2900 + 70
    assert PCM24K.ms_from_bytes(48000) == 1000.0


def _done(meter: SessionMeter, status: str) -> None:
    up(meter, "response.done", 100, 2.0, {
        "type": "response.done", "response": {"status": status, "usage": {"total_tokens": 10}}})


def test_text_session_is_billed_by_its_completed_responses():
    """Responses without audio: billable once ``min_text_responses``
    responses completed; cancelled and incomplete ones do not count. (A
    ``failed`` response is now a provider failure, issue 20: see
    ``test_failed_responses_are_provider_errors``.)"""
    meter = connected_meter(100.0)
    for status in ("cancelled", "incomplete"):
        _done(meter, status)
    meter.closed("client", 1000, None, 16000.0)
    v = decide_verdict(meter.measurements())
    assert (v.billable, v.reason) == (False, "no_response")
    assert "0 completed responses < 1" in v.rule
    assert meter.measurements().responses == 2 and meter.measurements().provider_errors == 0
    meter = connected_meter(100.0)
    for _ in range(15):
        _done(meter, "completed")
    meter.closed("client", 1000, None, 16000.0)
    v = decide_verdict(meter.measurements())
    assert (v.billable, v.reason) == (True, "billable")
    assert v.rule == ("text session (no audio): 15 completed responses ≥ 1, connected in 100 ms "
                      "≤ 2000 ms, no provider error")
    assert decide_verdict(meter.measurements(), VerdictPolicy(min_text_responses=16)).reason == \
        "no_response"


def test_audio_in_with_text_responses_is_judged_by_its_responses():
    """Issue 20: a session is judged by what the provider's responses
    produced. 1 s of audio in answered by a completed text response is a
    text session (billable), no longer ``too_short`` by the audio rule."""
    meter = connected_meter(100.0)
    feed_audio_in(meter, 1000)
    _done(meter, "completed")
    meter.closed("client", 1000, None, 7000.0)
    v = decide_verdict(meter.measurements())
    assert (v.billable, v.reason) == (True, "billable")
    assert v.rule.startswith("text session (no audio): 1 completed response ≥ 1 "
                             "(1.0 s of audio in; its responses produced no audio)")


def test_audio_responses_keep_the_audio_rule():
    """A little audio out and a completed response is still ``too_short``."""
    meter = connected_meter(100.0)
    feed_audio_in(meter, 1000)
    audio_out(meter, 500)
    _done(meter, "completed")
    meter.closed("client", 1000, None, 7000.0)
    v = decide_verdict(meter.measurements())
    assert (v.reason, v.rule) == ("too_short", "audio exchanged 1.5 s ≤ 5.0 s")


def audio_out(meter: SessionMeter, ms: int) -> None:
    chunk = b64(960)  # 20 ms of 24 kHz PCM16
    for _ in range(ms // 20):
        up(meter, "response.output_audio.delta", len(chunk) + 60, 0.0, {"delta": chunk})


def pcm_chunk(fmt: str) -> str:
    """20 ms of audio in ``fmt``: 960 bytes of PCM16 24 kHz, 160 of G.711."""
    return b64(960 if fmt == "audio/pcm" else 160)


def update(meter: SessionMeter, fmt: str, event_id: str | None = None) -> None:
    spec = {"type": fmt, "rate": 24000} if fmt == "audio/pcm" else {"type": fmt}
    event = {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"format": spec}}}}
    if event_id is not None:
        event["event_id"] = event_id
    meter.record(classify(CLIENT, "session.update", 100, event), 0.0)


def sends(meter: SessionMeter, fmt: str, chunks: int) -> None:
    chunk = pcm_chunk(fmt)
    for _ in range(chunks):
        append(meter, chunk, len(chunk) + 40)


# -- issue 20, 1: formats from the client's own session.update -------------

@pytest.mark.parametrize("fmt", ["audio/pcmu", "audio/pcma"])
def test_client_session_update_sets_the_input_format_at_once(fmt):
    """Appends after the client's ``session.update`` count in its format
    before the provider's ``session.updated`` comes back, and back again."""
    meter = connected_meter()
    sends(meter, "audio/pcm", 10)
    update(meter, fmt, "evt_1")
    sends(meter, fmt, 7)  # before the provider's answer
    up(meter, "session.updated", 300, 0.0, {"session": {"audio": {"input": {"format": {"type": fmt}}}}})
    sends(meter, fmt, 5)
    update(meter, "audio/pcm")  # and back, no event_id
    sends(meter, "audio/pcm", 3)
    assert meter.measurements().audio_in_ms == 25 * 20.0


def test_a_rejected_session_update_reverts_the_input_format():
    meter = connected_meter()
    update(meter, "audio/pcmu", "evt_1")
    sends(meter, "audio/pcmu", 2)
    up(meter, "error", 100, 0.0, {"error": {"type": "invalid_request_error", "code": "invalid_value",
                                            "message": "bad format", "event_id": "evt_1"}})
    sends(meter, "audio/pcm", 3)
    m = meter.measurements()
    assert m.audio_in_ms == 5 * 20.0 and m.provider_errors == 0
    # an error about another event leaves a pending update alone
    update(meter, "audio/pcma", "evt_2")
    up(meter, "error", 100, 0.0, {"error": {"type": "invalid_request_error", "event_id": "evt_9"}})
    sends(meter, "audio/pcma", 1)
    assert meter.measurements().audio_in_ms == 6 * 20.0


def test_update_without_event_id_reverts_on_an_error_before_session_updated():
    meter = connected_meter()
    update(meter, "audio/pcmu")
    up(meter, "error", 100, 0.0, {"error": {"type": "invalid_request_error", "message": "no"}})
    sends(meter, "audio/pcm", 2)
    assert meter.measurements().audio_in_ms == 40.0
    update(meter, "audio/pcmu")
    up(meter, "session.updated", 300, 0.0, {"session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}})
    up(meter, "error", 100, 0.0, {"error": {"type": "invalid_request_error", "message": "other"}})
    sends(meter, "audio/pcmu", 2)  # answered already: the error is about something else
    assert meter.measurements().audio_in_ms == 80.0


def test_a_failed_update_under_a_later_one_leaves_the_later_format():
    meter = connected_meter()
    update(meter, "audio/pcmu", "a")
    update(meter, "audio/pcma", "b")
    up(meter, "error", 100, 0.0, {"error": {"type": "invalid_request_error", "event_id": "a"}})
    sends(meter, "audio/pcma", 1)
    up(meter, "error", 100, 0.0, {"error": {"type": "invalid_request_error", "event_id": "b"}})
    sends(meter, "audio/pcm", 1)  # both failed: back to the first format
    assert meter.measurements().audio_in_ms == 40.0


def test_session_updated_does_not_undo_a_pending_client_format():
    """The provider's answer to an older update must not move the input
    format from a newer one the client already sends in."""
    meter = connected_meter()
    update(meter, "audio/pcmu", "a")
    update(meter, "audio/pcm", "b")
    up(meter, "session.updated", 300, 0.0, {"session": {"audio": {
        "input": {"format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcma"}}}}})
    sends(meter, "audio/pcm", 1)
    audio = b64(160)
    up(meter, "response.output_audio.delta", 300, 0.0, {"delta": audio})  # output from the provider
    m = meter.measurements()
    assert (m.audio_in_ms, m.audio_out_ms) == (20.0, 20.0)


# -- issue 20, 2: failed responses ----------------------------------------------

def failed(meter: SessionMeter, etype: str | None, status: str = "failed") -> None:
    details = {"type": status}
    if etype is not None:
        details["error"] = {"type": etype, "code": "boom", "message": "went wrong"}
    up(meter, "response.done", 100, 0.0, {"response": {"status": status, "status_details": details}})


def test_failed_responses_are_provider_errors():
    """Every response failed with a server error, 6 s spoken: not billed
    (issue 20: it was ``billable``)."""
    meter = connected_meter()
    feed_audio_in(meter, 6000)
    for _ in range(3):
        failed(meter, "server_error")
    meter.closed("client", 1000, None, 9000.0)
    m = meter.measurements()
    assert (m.provider_errors, m.responses_failed, m.responses) == (3, 3, 3)
    assert m.provider_error == "response failed: server_error: boom went wrong"
    v = decide_verdict(m)
    assert (v.billable, v.reason) == (False, "provider_error")
    assert v.rule == ("provider error (3): response failed: server_error: boom went wrong "
                      "(provider_error = any: any provider error voids the session)")


def test_client_caused_cancelled_and_incomplete_responses_are_not_failures():
    meter = connected_meter()
    failed(meter, "invalid_request_error")
    failed(meter, None, "cancelled")
    failed(meter, None, "incomplete")
    m = meter.measurements()
    assert (m.provider_errors, m.responses_failed, m.responses) == (0, 0, 3)
    failed(meter, None)  # failed, the provider saying nothing of why: its failure
    assert meter.measurements().provider_error == "response failed: error"
    ev = classify(UPSTREAM, "response.done", 9, {"type": "response.done", "response": {
        "status": "failed", "status_details": {"error": {"type": "server_error", "code": "c"}}}})
    assert ev.status_error == EventError("server_error", "c", None)


# -- issue 20, 3: the modality rule ---------------------------------------------

def session(*, audio_in_ms: int = 0, audio_out_ms: int = 0, completed: int = 0,
            blip: bool = False, policy: VerdictPolicy | None = None):
    meter = connected_meter()
    feed_audio_in(meter, audio_in_ms)
    audio_out(meter, audio_out_ms)
    for _ in range(completed):
        _done(meter, "completed")
    if blip:
        append(meter, b64(960), 1300)
    meter.closed("client", 1000, None, 60000.0)
    return decide_verdict(meter.measurements(), policy or VerdictPolicy())


@pytest.mark.parametrize(("setup", "expected"), [
    # the table of docs/metering.md
    (dict(completed=15), ("billable", "text session (no audio): 15 completed responses ≥ 1")),
    (dict(completed=15, blip=True), ("billable", "text session (no audio): 15 completed responses ≥ 1 "
                                                 "(0.0 s of audio in; its responses produced no audio)")),
    (dict(), ("no_response", "text session (no audio): 0 completed responses < 1")),
    (dict(blip=True), ("too_short", "audio exchanged 0.0 s ≤ 5.0 s")),
    (dict(audio_in_ms=6000), ("billable", "audio exchanged 6.0 s > 5.0 s")),
    (dict(audio_in_ms=6000, completed=2), ("billable", "text session (no audio): 2 completed responses ≥ 1")),
    (dict(audio_in_ms=1000, audio_out_ms=1000, completed=1), ("too_short", "audio exchanged 2.0 s ≤ 5.0 s")),
    (dict(audio_in_ms=1000, audio_out_ms=1000, completed=15), ("too_short", "audio exchanged 2.0 s ≤ 5.0 s")),
    (dict(audio_in_ms=3000, audio_out_ms=3000, completed=1), ("billable", "audio exchanged 6.0 s > 5.0 s")),
])
def test_modality_rule_table(setup, expected):
    v = session(**setup)
    assert v.reason == expected[0]
    assert expected[1] in v.rule


def test_one_append_does_not_make_a_text_session_a_voice_session():
    """Issue 20: 15 completed text responses plus one 20 ms append was
    ``too_short`` (12 of 12); it stays billable."""
    assert session(completed=15, blip=True).billable


# -- issue 20, 5: provider_error = "before_threshold" ----------------------------

LATE = VerdictPolicy(provider_error="before_threshold")


def test_figures_at_the_first_provider_error_are_recorded():
    meter = connected_meter()
    feed_audio_in(meter, 6000)
    audio_out(meter, 1000)
    _done(meter, "completed")
    up(meter, "error", 10, 1.0, {"error": {"type": "server_error", "message": "transient"}})
    feed_audio_in(meter, 1000)
    up(meter, "error", 10, 1.0, {"error": {"type": "server_error", "message": "again"}})
    m = meter.measurements()
    assert (m.audio_in_ms_at_error, m.audio_out_ms_at_error, m.responses_at_error,
            m.responses_completed_at_error) == (6000.0, 1000.0, 1, 1)
    assert Measurements.from_dict(m.to_dict()) == m
    v = decide_verdict(m, LATE)
    assert (v.billable, v.reason) == (True, "billable")
    assert v.rule == ("connected in 100 ms ≤ 2000 ms, audio exchanged 8.0 s > 5.0 s, "
                      "provider error (2): server_error: transient after the threshold was met "
                      "(provider_error = before_threshold: before it, audio exchanged 7.0 s > 5.0 s)")
    assert decide_verdict(m).reason == "provider_error"  # the default: any provider error


def test_before_threshold_voids_a_session_whose_error_came_first():
    meter = connected_meter()
    feed_audio_in(meter, 2000)
    up(meter, "error", 10, 1.0, {"error": {"type": "server_error", "message": "early"}})
    feed_audio_in(meter, 6000)
    v = decide_verdict(meter.measurements(), LATE)
    assert (v.billable, v.reason) == (False, "provider_error")
    assert v.rule == ("provider error (1): server_error: early (provider_error = before_threshold: "
                      "before it, audio exchanged 2.0 s ≤ 5.0 s)")
    text = connected_meter()
    _done(text, "completed")
    failed(text, "server_error")  # a failed response after a completed one
    v = decide_verdict(text.measurements(), LATE)
    assert (v.billable, v.reason) == (True, "billable")
    assert "before it, text session (no audio): 1 completed response ≥ 1" in v.rule


def test_old_records_without_figures_at_error_stay_void_under_before_threshold():
    """A record stored before the figures at the first error were kept."""
    old = {
        "connected": True, "connect_ms": 10.0, "audio_in_ms": 9000.0, "provider_errors": 1,
        "provider_error": "server_error: x"}
    m = Measurements.from_dict(old)
    assert m.responses_at_error is None and m.responses_failed == 0
    v = decide_verdict(m, LATE)
    assert v.reason == "provider_error" and "figures at the error not recorded" in v.rule


# -- classification and the customer's rate limits ------------------------------

@pytest.mark.parametrize("nbytes", [0, 1, 2, 959, 960, 961])
def test_classify_audio_payloads_by_decoded_length(nbytes):
    audio = b64(nbytes)
    assert b64_audio_bytes(audio) == nbytes
    ev = classify(CLIENT, "input_audio_buffer.append", 99, {"type": "input_audio_buffer.append", "audio": audio})
    assert (ev.direction, ev.type, ev.nbytes, ev.audio_bytes) == (CLIENT, "input_audio_buffer.append", 99, nbytes)
    for etype in ("response.output_audio.delta", "response.audio.delta"):
        assert classify(UPSTREAM, etype, 99, {"type": etype, "delta": audio}).audio_bytes == nbytes
    # a client's event named like an output delta carries no output audio
    assert classify(CLIENT, "other", 99, {"type": "response.output_audio.delta", "delta": audio}).audio_bytes == 0


def test_classify_response_done_error_and_unparsed():
    done = classify(UPSTREAM, "response.done", 10, {"type": "response.done", "response": {
        "status": "completed", "usage": {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}}})
    assert done.response_status == "completed" and done.usage == Usage(7, 3, 10)
    err = classify(UPSTREAM, "error", 10, {"type": "error", "error": {"type": "server_error", "code": None}})
    assert err.error == EventError("server_error", None, None)
    assert classify(UPSTREAM, "unknown", 5).audio_bytes == 0
    odd = classify(UPSTREAM, "response.done", 10, {"type": "response.done", "response": {"usage": "lots"}})
    assert odd.usage is None and odd.response_status is None


def test_peek_counts_nothing_and_refills():
    bucket = TokenBucket.full(60, 0.0)
    assert bucket.take(0.0, 60) == 0.0
    assert bucket.peek(0.0, 60) == RateLimitState(60, 59, 1.0)
    assert bucket.peek(0.5, 60) == RateLimitState(60, 59, 0.5)  # one token a second
    assert bucket.peek(10.0, 60) == RateLimitState(60, 60, 0.0)
    assert bucket.tokens == 59.0 and bucket.updated_s == 0.0


async def test_in_process_peek_rate():
    adm = InProcessAdmission()
    plan = Plan(id="p", name="P", requests_per_minute=3)
    assert await adm.peek_rate("k", plan, 0.0) == RateLimitState(3, 3, 0.0)
    await adm.check_rate("k", plan, 0.0)
    assert await adm.peek_rate("k", plan, 0.0) == RateLimitState(3, 2, 20.0)
    assert await adm.peek_rate("k", plan, 0.0) == RateLimitState(3, 2, 20.0)


def test_plan_rate_limits_figures_and_names():
    plan = Plan(id="p", name="P", sessions_included=100, concurrency=5, requests_per_minute=3)
    now = 1_798_761_600.0 - 3600.0  # 2026-12-31 23:00 UTC: the period ends in an hour
    limits = plan_rate_limits(plan, RateLimitState(3, 1, 40.0), billable_used=10, in_flight=2, now_s=now)
    assert limits == [
        {"name": "requests", "limit": 3, "remaining": 1, "reset_seconds": 40.0},
        {"voxgate_name": "sessions", "limit": 100, "remaining": 88, "reset_seconds": 3600.0},
        {"voxgate_name": "concurrency", "limit": 5, "remaining": 3},
    ]
    unlimited = Plan(id="u", name="U", requests_per_minute=100)
    assert plan_rate_limits(unlimited, RateLimitState(100, 99, 0.6), 0, 1, now) == [
        {"name": "requests", "limit": 100, "remaining": 99, "reset_seconds": 0.6}]
    full = plan_rate_limits(plan, RateLimitState(3, 0, 60.0), billable_used=99, in_flight=5, now_s=now)
    assert [x["remaining"] for x in full] == [0, 0, 0]


def test_speech_whose_responses_were_all_cut_by_barge_in_is_judged_by_its_audio():
    """11 s of speech, every response cancelled by barge-in before it produced
    anything (OpenAI's WebRTC guide code in a browser does this): no completed
    response and no output audio make no text session; the speech decides."""
    def session(audio_ms: int) -> SessionMeter:
        meter = connected_meter()
        feed_audio_in(meter, audio_ms)
        for i in range(3):
            up(meter, "response.done", 200, 1000.0 + i,
               {"response": {"status": "cancelled", "output": [],
                             "status_details": {"type": "cancelled", "reason": "turn_detected"}}})
        meter.closed("client", 1000, None, 14000.0)
        return meter

    m = session(11000).measurements()
    assert (m.modality, m.responses, m.responses_completed) == ("none", 3, 0)
    v = decide_verdict(m)
    assert (v.billable, v.reason) == (True, "billable")
    assert "audio exchanged 11.0 s > 5.0 s" in v.rule
    silent = decide_verdict(session(0).measurements())  # nothing sent, nothing produced
    assert (silent.billable, silent.reason) == (False, "no_response")


def test_a_joined_sideband_and_reported_audio():
    """An OpenAI SIP call's sideband: its first event connects the call
    (session.created or not, at the time it arrived); audio the provider
    reports is added to the audio exchanged, and decides the verdict."""
    meter = SessionMeter(0.0)
    meter.accepted(100.0)
    meter.record(classify(UPSTREAM, "input_audio_buffer.speech_started", 60,
                          {"type": "input_audio_buffer.speech_started"}), 350.0)
    meter.joined(350.0)
    meter.joined(900.0)  # once connected, later events change nothing
    meter.reported_audio(3000.0, 0.0)
    meter.reported_audio(0.0, 2500.0)
    meter.closed("upstream", 1000, "sideband closed", 9000.0)
    m = meter.measurements()
    assert (m.connected, m.connect_ms) == (True, 250.0)
    assert (m.audio_in_ms, m.audio_out_ms) == (3000.0, 2500.0)
    assert decide_verdict(m).reason == "billable"

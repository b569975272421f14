"""The pure parts of the load test: fault mixes, plans, ground truth, tags."""

from __future__ import annotations

import base64

import pytest

from voxgate.loadtest.audio import Clip, tag_of
from voxgate.loadtest.plan import ground_truth, parse_mix, plan_sessions
from voxgate.loadtest.runner import percentiles, urls_of


def test_parse_mix():
    assert parse_mix("short=0.1, provider_error=0.2,vanish=0") == {
        "short": 0.1, "provider_error": 0.2, "vanish": 0.0}
    assert parse_mix("") == {}
    with pytest.raises(ValueError, match="unknown session kind 'nope'"):
        parse_mix("nope=0.1")
    with pytest.raises(ValueError, match="outside 0-1"):
        parse_mix("short=1.5")
    with pytest.raises(ValueError, match="sum to 1.200 > 1"):
        parse_mix("short=0.6,vanish=0.6")


def test_plan_is_deterministic_and_exact():
    mix = {"short": 0.1, "provider_error": 0.1, "slow_created": 0.1, "vanish": 0.2}
    a = plan_sessions(50, mix, 6010, seed=7)
    assert a == plan_sessions(50, mix, 6010, seed=7)
    assert a != plan_sessions(50, mix, 6010, seed=8)
    kinds = [p.kind for p in a]
    assert (kinds.count("short"), kinds.count("provider_error"), kinds.count("slow_created"),
            kinds.count("vanish"), kinds.count("normal")) == (5, 5, 5, 10, 25)
    assert all(p.audio_ms % 20 == 0 for p in a)
    assert {p.audio_ms for p in a if p.kind == "normal"} == {6000}
    assert {p.audio_ms for p in a if p.kind == "short"} == {2000}
    assert sorted({p.audio_ms for p in a if p.kind == "vanish"}) == [1000, 4500]
    assert all("echo" in p.fault for p in a)
    assert {p.fault for p in a if p.kind == "slow_created"} == {"echo,delay_created:2500"}


def test_ground_truth():
    assert ground_truth("normal", 6000, 6000) == "billable"
    assert ground_truth("normal", 2500, 2500) == "too_short"  # exactly 5 s is not more
    assert ground_truth("vanish", 2520, 2520) == "billable"
    assert ground_truth("short", 2000, 2000) == "too_short"
    assert ground_truth("provider_error", 6000, 6000) == "provider_error"
    assert ground_truth("slow_created", 6000, 6000) == "connect_timeout"
    assert ground_truth("turn_failure", 0, 0) == "turn_failure"


def test_chunk_tags_round_trip():
    clip = Clip.load()
    assert clip.duration_ms >= 5000
    for seq in (0, 1, 299, 300, 123456):
        b64 = clip.chunk_b64(seq)
        assert len(b64) == 1280
        assert tag_of(b64) == seq


def test_percentiles_and_urls():
    assert percentiles([]) == {"n": 0, "p50": None, "p95": None, "p99": None}
    p = percentiles([float(i) for i in range(1, 101)])
    assert p["p50"] == 50.5 and p["p99"] == 99.01 and p["max"] == 100
    assert urls_of("http://127.0.0.1:8080") == ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/v1/realtime")
    assert urls_of("ws://h:1/v1/realtime") == ("http://h:1", "ws://h:1/v1/realtime")


def test_plan_of_the_issue_20_kinds():
    from voxgate.loadtest.plan import LATE_ERROR_MIN_MS, WS_KINDS

    kinds = ("failed_responses", "text_blip", "format_pcmu", "format_pcma", "provider_eof", "late_error")
    assert set(kinds) <= set(WS_KINDS)
    mix = parse_mix(",".join(f"{k}=0.1" for k in kinds))
    plans = plan_sessions(100, mix, 2000, seed=1, max_duration_ms=8010)
    assert plans == plan_sessions(100, mix, 2000, seed=1, max_duration_ms=8010)
    by_kind = {k: [p for p in plans if p.kind == k] for k in (*kinds, "normal")}
    assert all(len(by_kind[k]) == 10 for k in kinds) and len(by_kind["normal"]) == 40
    lengths = {p.audio_ms for p in by_kind["normal"]}
    assert min(lengths) >= 2000 and max(lengths) <= 8000 and len(lengths) > 10
    assert all(p.audio_ms % 20 == 0 for p in plans)
    assert {p.fault for p in by_kind["failed_responses"]} == {"fail_responses"}
    assert {(p.fault, p.audio_ms, p.echo) for p in by_kind["text_blip"]} == {("", 20, False)}
    assert {p.fault for p in by_kind["provider_eof"]} == {"echo,eof:1"}
    assert {p.fault for p in by_kind["format_pcmu"] + by_kind["format_pcma"]} == {"echo"}
    for p in by_kind["late_error"]:
        assert p.audio_ms >= LATE_ERROR_MIN_MS and p.fault == f"echo,server_error:{p.audio_ms - 1000}"
    # without a range every session has the same length, as before
    assert {p.audio_ms for p in plan_sessions(20, {}, 3000)} == {3000}


def test_ground_truth_by_the_modality_of_the_responses():
    # failed responses, a provider drop, a late error: provider errors under "any"
    for kind in ("failed_responses", "provider_eof", "late_error"):
        assert ground_truth(kind, 30000, 30000) == "provider_error"
    # a text chat with one 20 ms append is judged by the text rule
    assert ground_truth("text_blip", 20, 0, responses_completed=3) == "billable"
    assert ground_truth("text_blip", 20, 0, responses_completed=0) == "too_short"  # no answer: audio rule
    assert ground_truth("text_blip", 0, 0, responses_completed=0) == "no_response"
    assert ground_truth("text_blip", 0, 0, responses_completed=1, min_text_responses=2) == "no_response"
    # output audio: the audio rule, whatever text responses completed
    assert ground_truth("normal", 1000, 1000, responses_completed=15) == "too_short"
    assert ground_truth("format_pcmu", 3020, 3020) == "billable"


def test_g711_chunks_and_format_schedule():
    from voxgate.loadtest.plan import SessionPlan
    from voxgate.loadtest.ws_client import format_schedule, output_format_of

    clip = Clip.load()
    for fmt in ("audio/pcmu", "audio/pcma"):
        b64 = clip.chunk_b64(7, fmt)
        assert len(base64.b64decode(b64)) == 160 and tag_of(b64) == 7
    assert clip.chunk_b64(7, "audio/pcmu") != clip.chunk_b64(7, "audio/pcma")
    assert format_schedule(SessionPlan(0, "format_pcmu", 3000, "echo")) == [
        (0, "audio/pcm"), (50, "audio/pcmu"), (100, "audio/pcm")]
    assert format_schedule(SessionPlan(0, "format_pcma", 600, "echo"))[1] == (10, "audio/pcma")
    assert format_schedule(SessionPlan(0, "normal", 3000, "echo")) == [(0, "audio/pcm")]
    assert output_format_of({"audio": {"output": {"format": {"type": "audio/pcmu"}}}}) == "audio/pcmu"
    assert output_format_of({"output_audio_format": "g711_alaw"}) == "audio/pcma"
    assert output_format_of({"audio": {"input": {}}}) is None


def test_audit_checks_verdicts_audio_and_provider_drops():
    from voxgate.loadtest.audit import audit
    from voxgate.loadtest.result import ADMITTED, SessionResult

    def result(i, kind, in_ms, out_ms, connect_ms=10.0, completed=0):
        r = SessionResult(i, kind, "websocket", outcome=ADMITTED, session_id=f"s{i}", connect_ms=connect_ms,
                          audio_in_ms=in_ms, audio_out_ms=out_ms, responses_completed=completed)
        return r

    def record(reason, in_ms, out_ms, close=(1000, "client")):
        return {"status": "completed", "reason": reason, "audio_in_ms": in_ms, "audio_out_ms": out_ms,
                "close_code": close[0], "closed_by": close[1]}

    results = [result(0, "normal", 6000, 6000), result(1, "text_blip", 20, 0, completed=3),
               result(2, "provider_eof", 3000, 3000), result(3, "format_pcmu", 3000, 3000),
               result(4, "normal", 6000, 6000, connect_ms=2400.0), result(5, "provider_eof", 3000, 3000),
               result(6, "normal", 6000, 6000)]
    records = {"s0": record("billable", 6000, 6000), "s1": record("billable", 20, 0),
               "s2": record("provider_error", 3000, 3000, (1006, "upstream")),
               "s3": record("billable", 3000, 2980),  # a chunk short: within 20 ms
               "s4": record("connect_timeout", 6000, 6000),  # the client saw > 2 s too
               "s5": record("provider_error", 3000, 3000, (1000, "upstream")),  # not a drop
               "s6": record("billable", 6000, 5960 - 20)}  # two chunks short
    report = audit(results, records)
    assert (report["checked"], report["matched"], report["slow_connects"]) == (7, 6, 1)
    assert [(m["index"], m["what"]) for m in report["mismatches"]] == [(5, "close"), (6, "audio")]
    assert report["audio"]["checked"] == 6 and report["audio"]["within_tolerance"] == 5
    assert report["audio"]["max_error_out_ms"] == 60
    assert report["by_kind"]["provider_eof"] == {"checked": 2, "matched": 1}

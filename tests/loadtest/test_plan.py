"""The pure parts of the load test: fault mixes, plans, ground truth, tags."""

from __future__ import annotations

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

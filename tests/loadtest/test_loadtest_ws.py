"""A small load test in the suite: WebSocket sessions with a fault mix
through a real voxgate to the local provider (echo, faults enabled), and the
metering audit at 100 %."""

from __future__ import annotations

from voxgate.loadtest.plan import parse_mix
from voxgate.loadtest.runner import LoadtestConfig, run_loadtest


async def test_ws_loadtest_audit_is_exact(make_server):
    server = await make_server(plan="roomy")
    cfg = LoadtestConfig(
        url=server.url, key=server.key, sessions=20, concurrency=10, duration_s=4.0,
        mix=parse_mix("short=0.15,provider_error=0.15,slow_created=0.1,vanish=0.2"),
        seed=3, ramp_s=1.0, max_time_s=60,
    )
    report = await run_loadtest(cfg)
    failures = report["failures"]
    assert report["admitted"] == 20 and report["refused"] == 0 and report["failed"] == 0, failures
    assert report["admitted"] + report["refused"] + report["failed"] == 20
    audit = report["audit"]
    assert audit["checked"] == 20 and audit["matched"] == 20, audit["mismatches"]
    assert audit["mismatched"] == 0 and audit["mismatches"] == []
    expected = {r["expected"] for r in report["session_results"]}
    assert expected == {"billable", "too_short", "provider_error", "connect_timeout"}
    assert sum(k["sessions"] for k in report["by_kind"].values()) == 20
    assert report["connect_ms"]["n"] == 18 and report["connect_ms"]["p99"] < 2000
    assert report["connect_ms_slow_created"]["p50"] > 2000
    assert report["audio_rtt_ms"]["n"] > 20 * 50
    assert report["server"]["in_process"] is True and report["server"]["cpu_s"] > 0


async def test_refusals_are_reported(make_server):
    """On a plan with concurrency 1, sessions beyond the first are refused
    (HTTP 429), counted as refused, and not audited."""
    server = await make_server(plan="free")
    cfg = LoadtestConfig(url=server.url, key=server.key, sessions=3, concurrency=3,
                         duration_s=1.0, max_time_s=30)
    report = await run_loadtest(cfg)
    assert report["admitted"] == 1 and report["refused"] == 2 and report["failed"] == 0
    assert report["refusals"] == {"HTTP 429 concurrency_limit_exceeded": 2}
    refused = [r for r in report["session_results"] if r["outcome"] == "refused"]
    assert [r["error_code"] for r in refused] == ["concurrency_limit_exceeded"] * 2
    assert all(r["error"].startswith("HTTP 429 concurrency_limit_exceeded: ") for r in refused)
    assert report["audit"]["checked"] == 1 and report["audit"]["matched"] == 1


async def test_vanished_clients_free_their_slot_before_the_next_session(make_server):
    """The README's example on the demo key's plan (concurrency 1): a client
    that vanishes keeps its slot until voxgate has seen it go, so the
    session after it is admitted, not refused."""
    server = await make_server(plan="free")
    cfg = LoadtestConfig(url=server.url, key=server.key, sessions=4, concurrency=1,
                         duration_s=1.0, mix=parse_mix("vanish=0.5"), seed=0, max_time_s=60)
    report = await run_loadtest(cfg)
    kinds = [r["kind"] for r in report["session_results"]]
    assert kinds.count("vanish") == 2 and kinds[-1] == "normal", kinds
    assert report["admitted"] == 4 and report["refused"] == 0, report["refusals"]
    assert report["audit"]["matched"] == 4, report["audit"]["mismatches"]


ISSUE_20_MIX = ("short=0.08,provider_error=0.08,slow_created=0.06,vanish=0.08,failed_responses=0.08,"
                "text_blip=0.1,format_pcmu=0.1,format_pcma=0.1,provider_eof=0.08,late_error=0.06")


async def test_ws_loadtest_every_kind_of_issue_20(make_server):
    """Every WebSocket kind (failed responses, a text chat with one 20 ms
    append, switches to audio/pcmu and audio/pcma and back, a provider
    dropping its connection, a provider error late in a long session) in
    one bounded run through a real voxgate: 100 % of verdicts as the rules
    say, audio in and out within ±20 ms of the client's own counts, and each
    provider drop recorded 1006 by the upstream."""
    server = await make_server(plan="roomy")
    n = 50
    cfg = LoadtestConfig(
        url=server.url, key=server.key, sessions=n, concurrency=25, duration_s=2.0,
        duration_max_s=7.0, mix=parse_mix(ISSUE_20_MIX), seed=20, ramp_s=2.0, max_time_s=120,
    )
    report = await run_loadtest(cfg)
    assert report["admitted"] == n and report["failed"] == 0, report["failures"]
    audit = report["audit"]
    assert audit["checked"] == n and audit["matched"] == n, audit["mismatches"]
    assert audit["mismatches"] == [] and audit["unrecorded"] == 0
    assert audit["audio"]["checked"] == n and audit["audio"]["within_tolerance"] == n, audit["audio"]
    assert audit["audio"]["max_error_in_ms"] <= 20 and audit["audio"]["max_error_out_ms"] <= 20
    kinds = {k for k in audit["by_kind"]}
    assert kinds == {"normal", "short", "provider_error", "slow_created", "vanish", "failed_responses",
                     "text_blip", "format_pcmu", "format_pcma", "provider_eof", "late_error"}
    rows = report["session_results"]
    expected = {(r["kind"], r["expected"]) for r in rows}
    for kind in ("failed_responses", "provider_eof", "late_error"):
        assert {e for k, e in expected if k == kind} == {"provider_error"}
    assert {e for k, e in expected if k == "text_blip"} == {"billable"}
    text = [r for r in rows if r["kind"] == "text_blip"]
    assert all(r["audio_in_ms"] == 20 and r["audio_out_ms"] == 0 and r["responses_completed"] == 3
               for r in text), text
    assert all(r["close_code"] == 1011 for r in rows if r["kind"] == "provider_eof")
    # the format switches were exercised with sessions on both sides of the threshold
    switched = {e for k, e in expected if k.startswith("format_")}
    assert switched == {"billable", "too_short"}, switched

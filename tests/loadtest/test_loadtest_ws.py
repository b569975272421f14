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
    assert list(report["refusals"]) == ["HTTP 429"] or all("429" in k for k in report["refusals"])
    assert report["audit"]["checked"] == 1 and report["audit"]["matched"] == 1

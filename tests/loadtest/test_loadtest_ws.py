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

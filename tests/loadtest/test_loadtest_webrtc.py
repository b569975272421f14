"""A small WebRTC load test: aiortc clients through voxgate's WebRTC bridge
to the echo provider, with the metering audit at 100 %."""

from __future__ import annotations

import importlib.util

import pytest

from voxgate.loadtest.plan import parse_mix
from voxgate.loadtest.runner import LoadtestConfig, run_loadtest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("voxgate.proxy.webrtc") is None,
    reason="voxgate/proxy/webrtc/ (the WebRTC bridge) is not in the tree yet")


async def test_webrtc_loadtest_audit_is_exact(make_server):
    server = await make_server(plan="roomy", webrtc={"host_addresses": ["127.0.0.1"],
                                                     "ice_timeout_s": 3.0})
    cfg = LoadtestConfig(
        url=server.url, key=server.key, sessions=6, concurrency=6, transport="webrtc",
        duration_s=4.0, mix=parse_mix("short=0.17,provider_error=0.17,turn_failure=0.17,slow_created=0.17,vanish=0.17"),
        seed=1, max_time_s=60,
    )
    report = await run_loadtest(cfg)
    assert report["admitted"] == 6 and report["failed"] == 0, report["failures"]
    assert report["admitted"] + report["refused"] + report["failed"] == 6
    audit = report["audit"]
    assert audit["checked"] == 6 and audit["matched"] == 6, audit["mismatches"]
    assert audit["audio"]["checked"] == audit["audio"]["within_tolerance"] == 6, audit["audio"]
    assert {r["expected"] for r in report["session_results"]} == {
        "billable", "too_short", "provider_error", "turn_failure", "connect_timeout"}
    assert report["connect_ms"]["n"] == 4 and report["connect_ms_slow_created"]["n"] == 1

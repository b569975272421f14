"""A small phone-call load test in the suite: simulated Twilio Media Streams
calls (``voxgate.loadtest.twilio_client``: Twilio's frames, real speech as
8 kHz μ-law in real time, marks echoed once played) with a fault mix through
a real voxgate on loopback to the local provider (echo, faults enabled),
and the metering audit at 100 %."""

from __future__ import annotations

import json

from voxgate.cli import build_parser
from voxgate.loadtest.cli import run_cli
from voxgate.loadtest.plan import parse_mix
from voxgate.loadtest.runner import LoadtestConfig, run_loadtest


async def test_twilio_loadtest_audit_is_exact(make_server):
    server = await make_server(plan="roomy")
    n = 20
    cfg = LoadtestConfig(
        url=server.url, key=server.key, sessions=n, concurrency=10, transport="twilio",
        duration_s=3.0, duration_max_s=7.0,
        mix=parse_mix("short=0.15,provider_error=0.15,slow_created=0.1,vanish=0.15,"
                      "late_error=0.1"),
        seed=22, ramp_s=1.0, max_time_s=90,
    )
    report = await run_loadtest(cfg)
    assert report["transport"] == "twilio"
    assert report["admitted"] == n and report["refused"] == 0 and report["failed"] == 0, \
        report["failures"]
    audit = report["audit"]
    assert audit["checked"] == n and audit["matched"] == n, audit["mismatches"]
    assert audit["mismatches"] == [] and audit["unrecorded"] == 0, audit["mismatches"]
    assert audit["audio"]["checked"] == n and audit["audio"]["within_tolerance"] == n, audit["audio"]
    assert audit["audio"]["max_error_in_ms"] <= 20 and audit["audio"]["max_error_out_ms"] <= 20
    rows = report["session_results"]
    assert {r["kind"] for r in rows} == {"normal", "short", "provider_error", "slow_created",
                                         "vanish", "late_error"}
    assert {r["expected"] for r in rows} == {"billable", "too_short", "provider_error",
                                             "connect_timeout"}
    assert all(r["call_sid"].startswith("CA") and len(r["call_sid"]) == 34 for r in rows)
    # every echoed frame came with its mark, echoed back once played; echo
    # mode has no turn detection, so no barge-in and no clear
    marks = [(r["kind"], r["marks_echoed"] * 20, r["audio_out_ms"]) for r in rows]
    assert all(played >= out - 20 for kind, played, out in marks if kind != "vanish"), marks
    assert report["twilio"]["clears"] == 0
    assert report["connect_ms_slow_created"]["p50"] > 2000
    assert report["audio_rtt_ms"]["n"] > n * 50
    assert all(r["close_code"] == 1000 for r in rows if r["kind"] != "vanish")


async def test_twilio_refusals_are_reported(make_server):
    """On a plan with concurrency 1, calls beyond the first are closed at
    ``start`` with 1013 ``concurrency_limit_exceeded``: counted as refused,
    not audited."""
    server = await make_server(plan="free")
    cfg = LoadtestConfig(url=server.url, key=server.key, sessions=3, concurrency=3,
                         transport="twilio", duration_s=1.0, max_time_s=30)
    report = await run_loadtest(cfg)
    assert report["admitted"] == 1 and report["refused"] == 2 and report["failed"] == 0, \
        report["failures"]
    assert report["refusals"] == {"close 1013 concurrency_limit_exceeded": 2}
    assert report["audit"]["checked"] == 1 and report["audit"]["matched"] == 1


async def test_cli_phone_calls_signed_with_the_servers_token(make_server, tmp_path, monkeypatch):
    """``voxgate loadtest --transport twilio`` from the command line, against
    a server that checks Twilio's signature: each call's upgrade signed with
    ``--twilio-auth-token``, audited, the report written."""
    monkeypatch.setenv("VOXGATE_TELEPHONY__TWILIO_AUTH_TOKEN", "0123456789abcdef0123456789abcdef")
    server = await make_server(plan="roomy")
    out = tmp_path / "report.json"
    args = build_parser().parse_args([
        "loadtest", "--url", server.url, "--key", server.key, "--transport", "twilio",
        "--sessions", "2", "--concurrency", "2", "--duration", "1", "--faults", "short=0.5",
        "--twilio-auth-token", "0123456789abcdef0123456789abcdef",
        "--json", str(out), "--quiet", "--max-time", "30"])
    assert await run_cli(args) == 0
    report = json.loads(out.read_text())
    assert report["transport"] == "twilio" and report["admitted"] == 2, report["failures"]
    assert report["audit"]["matched"] == 2 and report["twilio"]["clears"] == 0
    unsigned = build_parser().parse_args([
        "loadtest", "--url", server.url, "--key", server.key, "--transport", "twilio",
        "--sessions", "1", "--duration", "1", "--quiet", "--max-time", "30",
        "--json", str(out)])
    assert await run_cli(unsigned) == 0  # no audit mismatch: nothing admitted
    report = json.loads(out.read_text())
    assert report["refusals"] == {"HTTP 403 invalid_twilio_signature": 1}, report
    args = build_parser().parse_args(["loadtest", "--key", "k", "--transport", "twilio",
                                      "--faults", "text_blip=0.1"])
    assert await run_cli(args) == 2

"""``voxgate loadtest``: N sessions at concurrency C against a voxgate URL,
with a live display, a report at the end and an optional JSON file.

Picked up by :mod:`voxgate.cli` through :func:`register`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register", "run_cli"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "loadtest", help="run N real-time voice sessions against voxgate and audit its metering")
    p.add_argument("--url", default=None, help="voxgate base URL (default http://HOST:PORT of the config)")
    p.add_argument("--sessions", type=int, default=10, help="sessions to run (N)")
    p.add_argument("--concurrency", type=int, default=1, help="sessions at once (C)")
    p.add_argument("--transport", choices=("ws", "webrtc", "twilio"), default="ws",
                   help="ws: GET /v1/realtime; webrtc: POST /v1/realtime/calls; twilio: "
                        "simulated phone calls over GET /v1/telephony/twilio")
    p.add_argument("--duration", type=float, default=8.0, help="audio per session, in s")
    p.add_argument("--duration-max", type=float, default=None,
                   help="draw each session's audio from --duration to this many s (seeded)")
    p.add_argument("--faults", default="",
                   help="fault mix, e.g. short=0.1,provider_error=0.1,slow_created=0.1,vanish=0.1"
                        " (ws also failed_responses, text_blip, format_pcmu, format_pcma,"
                        " provider_eof, late_error; webrtc also turn_failure=F;"
                        " twilio: short, provider_error, slow_created, vanish, late_error)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault assignment")
    p.add_argument("--json", dest="json_file", default=None, help="write the report to this file")
    p.add_argument("--key", default=None, help="project API key (default: the demo key)")
    p.add_argument("--audio", default=None, help="audio to stream, looped (default: shipped clip)")
    p.add_argument("--ramp", type=float, default=0.0, help="spread session starts over S seconds")
    p.add_argument("--max-time", type=float, default=300.0, help="stop the run after S seconds")
    p.add_argument("--model", default="gpt-realtime")
    p.add_argument("--server-pid", type=int, default=None,
                   help="voxgate's pid for CPU/RSS (default: the process listening on the port)")
    p.add_argument("--no-faults", action="store_true",
                   help="send no voxgate_fault (the provider must run with responder=echo)")
    p.add_argument("--direct", action="store_true",
                   help="--url is a Realtime WebSocket URL used as is (a baseline straight to "
                        "the provider, or another relay): no session ids, no audit")
    p.add_argument("--turn-url", default=None,
                   help="webrtc turn_failure sessions: a TURN URL that cannot be reached")
    p.add_argument("--twilio-auth-token", default=None,
                   help="twilio: sign each stream's upgrade (X-Twilio-Signature) with this "
                        "token, when voxgate checks signatures")
    p.add_argument("--audit-wait", type=float, default=30.0,
                   help="seconds to wait for voxgate to complete every session's record "
                        "(WebRTC turn_failure sessions take webrtc.ice_timeout_s)")
    p.add_argument("--quiet", action="store_true", help="no live display")
    p.add_argument("--config", help="TOML configuration file (for the data directory)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from voxgate.aio import run_async

    return run_async(run_cli(args))


async def run_cli(args: argparse.Namespace) -> int:
    from voxgate.config import load_settings
    from voxgate.loadtest.plan import TWILIO_KINDS, WEBRTC_KINDS, WS_KINDS, parse_mix
    from voxgate.loadtest.report import LiveDisplay, render_report
    from voxgate.loadtest.runner import LoadtestConfig, run_loadtest
    from voxgate.proxy.keys import DEMO_KEY_FILE, default_key

    settings = load_settings(args.config)
    url = args.url or f"http://{settings.host}:{settings.port}"
    key = args.key or default_key(settings) or ("none" if args.direct else None)
    if not key:
        print("voxgate loadtest: no --key given and no demo key in the data directory "
              f"({settings.data_dir}/{DEMO_KEY_FILE}); start `voxgate serve` first", file=sys.stderr)
        return 2
    if settings.policy.provider_error != "any":
        print("voxgate loadtest: note: the ground truth follows provider_error = \"any\"; this "
              f"config says {settings.policy.provider_error!r}, so provider_eof, failed_responses "
              "and late_error sessions may be audited as mismatches", file=sys.stderr)
    try:
        kinds = {"webrtc": WEBRTC_KINDS, "twilio": TWILIO_KINDS}.get(args.transport, WS_KINDS)
        mix = parse_mix(args.faults, kinds=kinds)
    except ValueError as exc:
        print(f"voxgate loadtest: --faults: {exc}", file=sys.stderr)
        return 2
    cfg = LoadtestConfig(
        url=url, key=key, sessions=args.sessions, concurrency=args.concurrency,
        transport=args.transport, duration_s=args.duration, duration_max_s=args.duration_max,
        mix=mix, seed=args.seed,
        audio=args.audio, ramp_s=args.ramp, max_time_s=args.max_time, model=args.model,
        server_pid=args.server_pid, faults=not args.no_faults, direct=args.direct, turn_url=args.turn_url,
        min_audio_ms=settings.policy.min_audio_s * 1000.0, audit_wait_s=args.audit_wait,
        min_text_responses=settings.policy.min_text_responses,
        max_connect_ms=settings.policy.max_connect_ms,
        twilio_auth_token=args.twilio_auth_token,
    )
    display = LiveDisplay(enabled=not args.quiet)
    try:
        report = await run_loadtest(cfg, on_start=display.start)
    except (OSError, ValueError) as exc:
        print(f"voxgate loadtest: {exc}", file=sys.stderr)
        return 2
    finally:
        await display.stop()
    render_report(report)
    if args.json_file:
        with open(args.json_file, "w") as fh:
            json.dump(report, fh, indent=2)
    audit = report.get("audit") or {}
    return 0 if not audit.get("mismatched") and not (audit.get("audio") or {}).get("mismatched") else 1


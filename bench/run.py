"""``make bench``: run every benchmark on loopback (bounded: a few minutes
in all) and write ``docs/benchmarks.md``.

``python -m bench.run [--only ws,latency,tokens,admit,store,voice,webrtc,workers,scale] [--out FILE]``

With ``--only``, the sections run replace theirs in an existing ``--out``
file and the rest of it (other sections, notes) stays.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

from bench.common import ROOT, machine

GOALS = {
    "ws": "voxgate ≤ 1.25× the bare aiohttp relay's CPU per session-second (≥ 230 sessions per core)",
    "latency": "p99 added latency ≤ 1 ms at 200 sessions",
    "webrtc": "≥ 50 WebRTC calls per core (≤ 20 ms of CPU per call-second), 0 underruns; stretch ≥ 100",
    "tokens": "≥ 3 000 mints/s",
    "admit": "≥ 2 000 admit + finalize/s",
    "voice": "TTS first audio ≤ 250 ms",
    "workers": "--workers 2 carries more sessions and mints per second than --workers 1 on 2 cores",
    "soak": "30 minutes, two instances: flat memory, no leaked lease, no `active` row left",
    "scale": ("PostgreSQL + Redis one process ≥ 0.9× SQLite in sessions/s and mints/s, CPU per "
              "session ≤ 1.3× SQLite; no hung session"),
    "store": "admit + finalize on the PostgreSQL store ≥ 2 000/s per process",
}


NOTES = Path(__file__).with_name("notes.md")
"""The notes (profiles, what was changed, tried and dropped) ending docs/benchmarks.md."""


def _f(v, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run")
    p.add_argument("--only", default="ws,latency,tokens,admit,store,voice,webrtc,workers,scale")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--webrtc-levels", default=None, metavar="N,N,…",
                   help="the WebRTC benchmark's concurrent calls (default: bench_webrtc.LEVELS)")
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    results: dict = {}
    t0 = time.time()
    steps = [("ws", "bench.bench_ws_relay", "run"), ("latency", "bench.bench_latency", "run"),
             ("tokens", "bench.bench_tokens", "run_tokens"), ("admit", "bench.bench_tokens", "run_admit"),
             ("voice", "bench.bench_voice", None), ("webrtc", "bench.bench_webrtc", "run"),
             ("workers", "bench.bench_workers", "run"), ("scale", "bench.bench_scale", "run"),
             ("store", "bench.bench_store", "run")]
    for name, module, func in steps:
        if name not in only:
            continue
        print(f"bench: {name} …", file=sys.stderr, flush=True)
        mod = __import__(module, fromlist=["x"])
        t = time.time()
        if name == "voice":
            results[name] = {"tts": mod.run_tts(), "stt": mod.run_stt()}
        elif name == "webrtc" and args.webrtc_levels:
            results[name] = mod.run(tuple(int(x) for x in args.webrtc_levels.split(",")))
        else:
            results[name] = getattr(mod, func)()
        print(f"bench: {name} done in {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    out = Path(args.out)
    if only != set(GOALS) and out.exists():
        text = merge_sections(out.read_text(), render(results, time.time() - t0, notes=False),
                              NOTES.read_text() if NOTES.exists() else "")
    else:
        text = render(results, time.time() - t0)
    out.write_text(text)
    print(f"bench: wrote {args.out} in {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


def _sections(text: str) -> list[tuple[str, str]]:
    """(heading, text) of each ``## `` section; the part before the first
    has the heading ``""``."""
    parts: list[tuple[str, str]] = [("", "")]
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            parts.append((line.strip(), ""))
        parts[-1] = (parts[-1][0], parts[-1][1] + line)
    return parts


def merge_sections(old: str, new: str, notes: str = "") -> str:
    """``old`` with each section of ``new`` (by its ``## `` heading) put in
    place of the one of the same heading, with ``new``'s "Measured …" line
    under its goal, and the notes section (``notes``, headed ``## ``)
    replaced by ``notes``."""
    fresh = dict(_sections(new))
    measured = fresh.pop("", "").split("\n\n", 2)[1:2]
    notes_sections = {heading: body for heading, body in _sections(notes) if heading}
    fresh.update(notes_sections)
    out = []
    for heading, body in _sections(old):
        if heading in fresh:
            body = fresh.pop(heading).rstrip("\n") + "\n\n"
            if measured and heading not in notes_sections:
                head, sep, rest = body.partition("\n| ")
                body = head + "\n_" + measured[0].strip() + "_\n" + sep + rest if sep else body
        out.append(body)
    return "".join(out) + "".join(fresh.values())


def render(r: dict, total_s: float, notes: bool = True) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    s = [f"# voxgate benchmarks\n\nMeasured {now} on {machine()}; all traffic on 127.0.0.1; "
         f"the whole run took {total_s:.0f} s.\n\nReproduce: `make bench` "
         "(or `.venv/bin/python -m bench.run [--only ws,latency,tokens,admit,voice,webrtc]`). "
         "The load generator is `voxgate loadtest` (docs/loadtest.md), in its own process; the "
         "echo upstream is the local provider with `responder = \"echo\"`, in its own process. "
         "Numbers on a 2-core machine move by ±15 % between runs.\n"]
    if "ws" in r:
        rows = r["ws"]
        base = next((x for x in rows if x["relay"].startswith("bare aiohttp")), None)
        s.append("## WebSocket relay: CPU per session-second\n\n"
                 f"{rows[0]['sessions'] if rows else 0} concurrent sessions, each streaming real-time "
                 "audio (24 kHz PCM16, one 20 ms `input_audio_buffer.append` every 20 ms) and "
                 "getting every chunk back as `response.output_audio.delta`. CPU is the relay "
                 "process's user + system time over the run (sessions' set-up and close "
                 "included), divided by the audio seconds streamed. Each relay also runs the "
                 "same sessions with 2 s of audio; the two runs split the CPU into a steady cost "
                 "per session-second (per-frame work) and a set-up cost per session (for voxgate: "
                 "authentication, admission, SQLite rows, verdict; for all: the upstream "
                 "connect and both handshakes).\n\n"
                 f"Goal: {GOALS['ws']}.\n")
        s.append(table(
            ["relay", "sessions ok", "session-s", "CPU ms / session-s", "sessions / core",
             "× bare aiohttp", "steady CPU ms / session-s", "set-up CPU ms / session",
             "peak RSS MiB", "echo RTT p50 / p99 ms", "audit"],
            [[x["relay"], f"{x['admitted']}/{x['sessions']}", x["session_s"],
              _f(x["cpu_ms_per_session_s"]), _f(x["sessions_per_core"], "{:.0f}"),
              _f(x["cpu_ms_per_session_s"] / base["cpu_ms_per_session_s"]
                 if base and base["cpu_ms_per_session_s"] and x["cpu_ms_per_session_s"] else None),
              _f(x.get("steady_cpu_ms_per_session_s")), _f(x.get("setup_cpu_ms_per_session")),
              _f(x["rss_peak_mb"], "{:.0f}"), f"{_f(x['rtt_p50_ms'])} / {_f(x['rtt_p99_ms'])}",
              (f"{x['audit']['matched']}/{x['audit']['checked']}" if x.get("audit") else "-")]
             for x in rows]) + "\n")
    if "latency" in r:
        s.append("## Added latency per audio chunk\n\nEcho round trip of each tagged 20 ms chunk "
                 "(send → matching delta back), through voxgate minus straight to the echo "
                 "upstream, at each concurrency. Percentiles are of all chunks of the run; "
                 "at 200 sessions the 2 cores are shared by the load generator, the upstream "
                 "and voxgate, so queueing on a saturated CPU shows up in both columns.\n\n"
                 f"Goal: {GOALS['latency']}.\n")
        s.append(table(["sessions", "direct p50 / p99 ms", "through voxgate p50 / p99 ms",
                        "added p50 ms", "added p99 ms", "chunks", "failed", "audit",
                        "CPU s during the voxgate run: voxgate / load generator"],
                       [[x["sessions"], f"{_f(x['direct_p50_ms'])} / {_f(x['direct_p99_ms'])}",
                         f"{_f(x['voxgate_p50_ms'])} / {_f(x['voxgate_p99_ms'])}",
                         _f(x["added_p50_ms"]), _f(x["added_p99_ms"]), x["chunks"], x["failed"],
                         x["audit"] or "-",
                         f"{_f(x.get('voxgate_cpu_s'), '{:.1f}')} / {_f(x.get('loadgen_cpu_s'), '{:.1f}')}"
                         f" in {_f(x.get('wall_s'), '{:.0f}')} s"]
                        for x in r["latency"]]) + "\n")
    if "webrtc" in r:
        s.append("## WebRTC bridge\n\nvoxgate's WebRTC bridge (aiortc for ICE, DTLS, SRTP, SCTP, "
                 "RTCP; voxgate's own RTP audio path: the browser's RTP from the ICE socket "
                 "callback straight to an inline Opus decoder, `voxgate/proxy/webrtc/rtp_in.py`, "
                 "24 kHz `input_audio_buffer.append`; the echo deltas encoded from 24 kHz and "
                 "sent for every call in one pass per 20 ms tick by the process's RTP pump, "
                 "`voxgate/proxy/webrtc/rtp_pump.py`) against a bare aiortc loopback doing the same "
                 "job with aiortc's own media pipeline (`bench/aiortc_echo.py`: decode, resample "
                 "to 24 kHz and back, encode), in one run: at each level the two run in turn, "
                 "the order alternating, and each row is the median of its runs (CPU of each "
                 "run in brackets). **The bridge under test has core 0 to itself** (pinned with "
                 "`os.sched_setaffinity`; other work on the machine is not pinned away from it), "
                 "the load generator and the echo provider are pinned to core 1, so calls per "
                 "core is what one core holds. CPU is the bridge process's user + system time "
                 "over the run (set-up and close included) per second of audio sent; calls per "
                 "core = 1000 / that. Calls last 8 s and start over 1 s. Client underruns are "
                 "counted by the load generator from "
                 "the returned RTP packets without decoding them (a gap > 60 ms between "
                 "arrivals, a missing sequence number, or a packet arriving > 60 ms later than "
                 "its RTP timestamp implies against the earliest one) plus its own frames sent "
                 "> 20 ms late; bridge late frames are counted inside the bridge (voxgate: a "
                 "frame the RTP pump sent > 60 ms after its grid tick, or skipped, "
                 "`bench/late_probe.py`; bare aiortc: a frame > 60 ms later than its "
                 "pts implies), so a starved client can be told apart from a late bridge. "
                 "Load generator CPU is per call-second too. RSS per call = peak RSS during the "
                 "run above the RSS before it, per call.\n\n"
                 f"Goal: {GOALS['webrtc']}.\n")
        if r["webrtc"]:
            s.append(table(["bridge", "calls ok", "call-s", "CPU ms / call-s (runs)",
                            "calls / core", "client underruns (max)",
                            "bridge late frames (max)", "load generator CPU ms / call-s",
                            "connect p50 / p99 ms", "RSS MiB / call"],
                           [[x["bridge"], f"{x['admitted']}/{x['sessions']}", x["session_s"],
                             f"{_f(x['cpu_ms_per_session_s'])} "
                             f"({', '.join(str(c) for c in x.get('cpu_ms_runs', []))})",
                             _f(x["sessions_per_core"], "{:.0f}"),
                             f"{_f(x['underruns'], '{:.0f}')} ({x.get('underruns_max', '-')})",
                             f"{_f(x.get('bridge_late'), '{:.0f}')} "
                             f"({x.get('bridge_late_max', '-')})",
                             _f(x.get("loadgen_cpu_ms_per_session_s"), "{:.1f}"),
                             f"{_f(x['connect_p50_ms'], '{:.0f}')} / "
                             f"{_f(x.get('connect_p99_ms'), '{:.0f}')}",
                             _f(x.get("rss_per_call_mb"))] for x in r["webrtc"]]) + "\n")
        else:
            s.append("Not run: `voxgate/proxy/webrtc/` is not in the tree.\n")
    if "tokens" in r:
        s.append("## Token endpoint\n\n`POST /v1/realtime/client_secrets` with a project key "
                 "(32 concurrent aiohttp clients in the benchmark process) against an aiohttp + "
                 "uvloop hello world (`POST /hello`, JSON) under the same load.\n\n"
                 f"Goal: {GOALS['tokens']}.\n")
        s.append(table(["endpoint", "requests", "per s", "p50 ms", "p99 ms", "server CPU s", "errors"],
                       [[x["endpoint"], x["requests"], _f(x["per_s"], "{:.0f}"), _f(x["p50_ms"]),
                         _f(x["p99_ms"]), _f(x["server_cpu_s"]), x["errors"]] for x in r["tokens"]]) + "\n")
    if "admit" in r:
        s.append("## Session admit + finalize\n\n`Gateway.admit` then `Gateway.finish` "
                 "(verdict, session row, monthly usage, lease) directly on a `SQLiteStore` and on "
                 "a `PostgresStore` (TCP to 127.0.0.1), sequentially and 32 at a time.\n\n"
                 f"Goal: {GOALS['admit']}.\n")
        s.append(table(["store", "concurrency", "sessions", "admit + finalize / s"],
                       [[x.get("store", "SQLite"), x["concurrency"], x["sessions"],
                         _f(x["per_s"], "{:.0f}")] for x in r["admit"]]) + "\n")
    if "voice" in r:
        s.append("## Local voice provider\n\nTTS (Piper, joe voice, warm): time to the audio of a "
                 "reply's first sentence, which is when the provider sends its first delta. "
                 "STT (PocketSphinx): decode time / audio duration on `tests/data`.\n\n"
                 f"Goal: {GOALS['voice']}.\n")
        s.append(table(["first sentence", "first audio p50 ms", "max ms", "audio ms"],
                       [[x["sentence"], _f(x["first_audio_ms_p50"], "{:.0f}"),
                         _f(x["first_audio_ms_max"], "{:.0f}"), _f(x["audio_ms"], "{:.0f}")]
                        for x in r["voice"]["tts"]]) + "\n")
        s.append(table(["file", "audio s", "decode s", "real-time factor", "heard"],
                       [[x["file"], _f(x["audio_s"], "{:.1f}"), _f(x["decode_s"]), _f(x["rtf"]),
                         x["heard"]] for x in r["voice"]["stt"]]) + "\n")
    if "workers" in r:
        s.append(__import__("bench.bench_workers", fromlist=["x"]).render(
            r["workers"], GOALS["workers"], table, _f))
    if "scale" in r:
        s.append(__import__("bench.bench_scale", fromlist=["x"]).render(
            r["scale"], GOALS["scale"], table, _f))
    if "soak" in r:
        s.append(__import__("bench.bench_soak", fromlist=["x"]).render(
            r["soak"], GOALS["soak"], table, _f))
    if "store" in r:
        s.append(__import__("bench.bench_store", fromlist=["x"]).render(
            r["store"], GOALS["store"], table, _f))
    if notes and NOTES.exists():
        s.append(NOTES.read_text())
    return "\n".join(s)


if __name__ == "__main__":
    sys.exit(main())

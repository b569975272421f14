"""WebRTC bridge cost: voxgate's CPU per call-second of real-time audio
over WebRTC (Opus both ways, echo upstream) and the resulting calls per
core, side by side with a bare aiortc loopback doing the same
decode/resample/encode (``bench/aiortc_echo.py``), in one run.

The bridge under test (voxgate, or the bare loopback in its turn) is pinned
to one core of its own, the load generator and the echo provider to the
other core(s) (``os.sched_setaffinity``), so calls per core is what one
core holds. At each level (5, 10, 20, 40, 50, 80, 100 concurrent calls) the two bridges
run in turn, the order alternating, ``REPEATS`` times; each row is the
median of its runs. CPU is the bridge process's user + system time over the
run (calls' set-up and close included, from ``/proc`` via psutil) per
second of audio sent. Underruns are counted at the client from the returned
RTP packets' arrival times, sequence numbers and RTP timestamps (nothing is
decoded: ``voxgate.loadtest.webrtc_client.ArrivalTiming``) plus the load
generator's frames sent late; bridge late frames are counted in the bridge
itself (``bench/late_probe.py`` for voxgate's 20 ms grid, ``aiortc_echo``'s
own count), so a starved client can be told apart from a late bridge. RSS
per call is the process's peak RSS during the run above its RSS before it,
per call."""

from __future__ import annotations

import importlib.util
import statistics
import tempfile
from pathlib import Path

import psutil

from bench.common import PY, Proc, Voxgate, echo_provider, free_port, loadtest, split_cores

LEVELS = (5, 10, 20, 40, 50, 80, 100)
DURATION_S = 8.0
REPEATS = 3
VOXGATE = "voxgate WebRTC bridge"
BARE = "bare aiortc loopback"


def available() -> bool:
    return importlib.util.find_spec("voxgate.proxy.webrtc") is not None


def _late_frames(path: Path) -> int:
    """The bridge's running count of late frames (0 before the first)."""
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text else 0


def _one(name: str, n: int, report: dict, rss0_mb: float, late: int) -> dict:
    server = report.get("server") or {}
    audio_s = report["audio_sent_s"]
    cpu_ms = server.get("cpu_s", 0) * 1000 / audio_s if audio_s else None
    loadgen_ms = report.get("loadgen_cpu_s", 0) * 1000 / audio_s if audio_s else None
    peak = server.get("rss_peak_mb")
    return {"bridge": name, "sessions": n, "admitted": report["admitted"],
            "failed": report["failed"], "session_s": round(audio_s, 1),
            "cpu_ms_per_session_s": cpu_ms, "loadgen_cpu_ms_per_session_s": loadgen_ms,
            "underruns": report.get("sender_underruns", 0), "bridge_late": late,
            "connect_p50_ms": report["connect_ms"]["p50"],
            "connect_p99_ms": report["connect_ms"]["p99"],
            "rss_per_call_mb": (peak - rss0_mb) / n if peak is not None else None}


def _median(runs: list[dict]) -> dict:
    def med(key: str):
        values = [r[key] for r in runs if r[key] is not None]
        return statistics.median(values) if values else None
    cpu = med("cpu_ms_per_session_s")
    first = runs[0]
    return {"bridge": first["bridge"], "sessions": first["sessions"], "runs": len(runs),
            "admitted": min(r["admitted"] for r in runs), "failed": max(r["failed"] for r in runs),
            "session_s": med("session_s"), "cpu_ms_per_session_s": cpu,
            "cpu_ms_runs": [round(r["cpu_ms_per_session_s"] or 0, 1) for r in runs],
            "sessions_per_core": 1000.0 / cpu if cpu else None,
            "underruns": med("underruns"), "underruns_max": max(r["underruns"] for r in runs),
            "bridge_late": med("bridge_late"),
            "bridge_late_max": max(r["bridge_late"] for r in runs),
            "loadgen_cpu_ms_per_session_s": med("loadgen_cpu_ms_per_session_s"),
            "connect_p50_ms": med("connect_p50_ms"), "connect_p99_ms": med("connect_p99_ms"),
            "rss_per_call_mb": med("rss_per_call_mb")}


def run(levels=LEVELS, duration_s: float = DURATION_S, repeats: int = REPEATS) -> list[dict]:
    if not available():
        return []
    bridge_cpus, other_cpus = split_cores() or (None, None)
    tmp = Path(tempfile.mkdtemp(prefix="voxgate-bench-late-"))
    late_files = {VOXGATE: tmp / "voxgate", BARE: tmp / "bare"}
    runs: dict[tuple[str, int], list[dict]] = {}
    port = free_port()
    with echo_provider(other_cpus) as echo, \
            Proc([PY, "-m", "bench.aiortc_echo", "--port", str(port)], port,
                 env={"VOXGATE_BENCH_LATE_FILE": str(late_files[BARE])}, cpus=bridge_cpus) as bare:
        vg = Voxgate(f"ws://127.0.0.1:{echo.port}/v1/realtime",
                     extra_toml='[webrtc]\nhost_addresses = ["127.0.0.1"]\n',
                     module="bench.late_probe", cpus=bridge_cpus,
                     env={"VOXGATE_BENCH_LATE_FILE": str(late_files[VOXGATE])})
        bridges = {
            VOXGATE: lambda n: loadtest(vg.url, vg.key, n, n, duration_s, server_pid=vg.pid,
                                        transport="webrtc", ramp_s=1.0, cpus=other_cpus),
            BARE: lambda n: loadtest(f"http://127.0.0.1:{port}", "bench", n, n, duration_s,
                                     server_pid=bare.pid, transport="webrtc", direct=True,
                                     ramp_s=1.0, cpus=other_cpus),
        }
        pids = {VOXGATE: vg.pid, BARE: bare.pid}
        try:
            for rep in range(repeats):
                for n in levels:
                    order = [VOXGATE, BARE] if (rep + n) % 2 == 0 else [BARE, VOXGATE]
                    for name in order:
                        rss0 = psutil.Process(pids[name]).memory_info().rss / 2**20
                        late0 = _late_frames(late_files[name])
                        report = bridges[name](n)
                        late = _late_frames(late_files[name]) - late0
                        runs.setdefault((name, n), []).append(_one(name, n, report, rss0, late))
        finally:
            vg.stop()
    return [_median(runs[(name, n)]) for n in levels for name in (VOXGATE, BARE)]


if __name__ == "__main__":
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m bench.bench_webrtc")
    p.add_argument("--levels", default=",".join(map(str, LEVELS)))
    p.add_argument("--duration", type=float, default=DURATION_S)
    p.add_argument("--repeats", type=int, default=REPEATS)
    a = p.parse_args()
    print(json.dumps(run(tuple(int(x) for x in a.levels.split(",")), a.duration, a.repeats),
                     indent=2))

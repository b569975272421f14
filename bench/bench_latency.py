"""Added latency per audio chunk: the echo round trip through voxgate minus
the round trip straight to the echo upstream, p50/p99, at 1, 50 and 200
concurrent sessions (a plan without a concurrency limit)."""

from __future__ import annotations

from bench.common import Voxgate, echo_provider, loadtest

LEVELS = (1, 50, 200)
DURATION_S = 6.0


def run(levels=LEVELS, duration_s: float = DURATION_S) -> list[dict]:
    rows = []
    with echo_provider() as echo:
        upstream = f"ws://127.0.0.1:{echo.port}/v1/realtime"
        vg = Voxgate(upstream)
        try:
            for n in levels:
                direct = loadtest(upstream, "bench", n, n, duration_s, direct=True,
                                  server_pid=echo.pid, ramp_s=max(1.0, n / 50))
                through = loadtest(vg.url, vg.key, n, n, duration_s, server_pid=vg.pid,
                                   ramp_s=max(1.0, n / 50))
                d, t = direct["audio_rtt_ms"], through["audio_rtt_ms"]
                rows.append({
                    "sessions": n,
                    "direct_p50_ms": d["p50"], "direct_p99_ms": d["p99"],
                    "voxgate_p50_ms": t["p50"], "voxgate_p99_ms": t["p99"],
                    "added_p50_ms": None if None in (d["p50"], t["p50"]) else t["p50"] - d["p50"],
                    "added_p99_ms": None if None in (d["p99"], t["p99"]) else t["p99"] - d["p99"],
                    "wall_s": through["wall_s"],
                    "voxgate_cpu_s": (through.get("server") or {}).get("cpu_s"),
                    "echo_cpu_s_direct": (direct.get("server") or {}).get("cpu_s"),
                    "loadgen_cpu_s": through.get("loadgen_cpu_s"),
                    "chunks": t["n"], "failed": direct["failed"] + through["failed"],
                    "underruns": through.get("sender_underruns", 0),
                    "audit": through.get("audit") and f"{through['audit']['matched']}/{through['audit']['checked']}",
                })
        finally:
            vg.stop()
    return rows


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))

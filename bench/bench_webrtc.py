"""WebRTC bridge cost: voxgate's CPU per session-second of real-time audio
over WebRTC (Opus both ways, echo upstream) and the resulting sessions per
core, against a bare aiortc loopback doing the same decode/encode
(``bench/aiortc_echo.py``); underruns counted by the load generator (gaps
of more than 60 ms in the returned track, or its sender falling behind)."""

from __future__ import annotations

import importlib.util

from bench.common import PY, Proc, Voxgate, echo_provider, free_port, loadtest

LEVELS = (5, 10)
DURATION_S = 8.0


def available() -> bool:
    return importlib.util.find_spec("voxgate.proxy.webrtc") is not None


def _row(name: str, n: int, report: dict) -> dict:
    server = report.get("server") or {}
    audio_s = report["audio_sent_s"]
    cpu_ms = server.get("cpu_s", 0) * 1000 / audio_s if audio_s else None
    return {"bridge": name, "sessions": n, "admitted": report["admitted"], "failed": report["failed"],
            "session_s": round(audio_s, 1), "cpu_ms_per_session_s": cpu_ms,
            "sessions_per_core": 1000.0 / cpu_ms if cpu_ms else None,
            "underruns": report.get("sender_underruns", 0),
            "connect_p50_ms": report["connect_ms"]["p50"]}


def run(levels=LEVELS, duration_s: float = DURATION_S) -> list[dict]:
    if not available():
        return []
    rows = []
    with echo_provider() as echo:
        vg = Voxgate(f"ws://127.0.0.1:{echo.port}/v1/realtime",
                     extra_toml='[webrtc]\nhost_addresses = ["127.0.0.1"]\n')
        try:
            for n in levels:
                rows.append(_row("voxgate WebRTC bridge", n, loadtest(
                    vg.url, vg.key, n, n, duration_s, server_pid=vg.pid, transport="webrtc",
                    ramp_s=1.0)))
        finally:
            vg.stop()
    port = free_port()
    with Proc([PY, "-m", "bench.aiortc_echo", "--port", str(port)], port) as bare:
        for n in levels:
            rows.append(_row("bare aiortc loopback", n, loadtest(
                f"http://127.0.0.1:{port}", "bench", n, n, duration_s, server_pid=bare.pid,
                transport="webrtc", direct=True, ramp_s=1.0)))
    return rows


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))

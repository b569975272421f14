"""WebSocket relay cost: CPU seconds of the relay process per session-second
of real-time audio (24 kHz PCM16, 20 ms chunks both ways, echo upstream),
for voxgate (full metering), a bare aiohttp + uvloop relay, a bare
``websockets`` relay and nginx, on the same workload in one run.

The load generator (``voxgate loadtest``) and the echo upstream (the local
provider, ``responder=echo``) run in their own processes; only the relay's
pid is measured (psutil ``cpu_times`` before/after).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.common import PY, Proc, Voxgate, echo_provider, free_port, loadtest

SESSIONS = 100
DURATION_S = 10.0
SHORT_S = 2.0
ROUNDS = 2

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        location /v1/realtime {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 600s;
            proxy_buffering off;
        }}
    }}
}}
"""


def nginx(upstream_port: int) -> Proc | None:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        return None
    d = Path(tempfile.mkdtemp(prefix="voxgate-nginx-"))
    port = free_port()
    (d / "nginx.conf").write_text(NGINX_CONF.format(dir=d, port=port, upstream_port=upstream_port))
    subprocess.run([binary, "-t", "-c", str(d / "nginx.conf"), "-p", str(d)], check=True,
                   capture_output=True)
    return Proc([binary, "-c", str(d / "nginx.conf"), "-p", str(d)], port)


def _measure(name: str, proc: Proc, url: str, key: str, direct: bool, sessions: int,
             duration_s: float) -> dict:
    # A short run as well: CPU = per-session set-up + per session-second × audio,
    # solved from the two runs, separates the fixed cost (auth, admission,
    # SQLite rows, upstream connect) from the steady per-frame cost.
    short = loadtest(url, key, sessions, sessions, SHORT_S, server_pid=proc.pid,
                     direct=direct, ramp_s=2.0)
    report = loadtest(url, key, sessions, sessions, duration_s, server_pid=proc.pid,
                      direct=direct, ramp_s=2.0)
    server = report.get("server") or {}
    audio_s = report["audio_sent_s"]
    cpu_ms = server.get("cpu_s", 0) * 1000 / audio_s if audio_s else None
    s_cpu, s_audio = (short.get("server") or {}).get("cpu_s", 0), short["audio_sent_s"]
    steady = setup = None
    if audio_s > s_audio and server.get("cpu_s") is not None:
        steady = (server["cpu_s"] - s_cpu) * 1000 / (audio_s - s_audio)
        setup = (s_cpu * 1000 - steady * s_audio) / sessions
    audit = report.get("audit")
    return {
        "relay": name, "sessions": sessions, "admitted": report["admitted"],
        "failed": report["failed"], "session_s": round(audio_s, 1),
        "cpu_s": server.get("cpu_s"), "cpu_ms_per_session_s": cpu_ms,
        "sessions_per_core": 1000.0 / cpu_ms if cpu_ms else None,
        "steady_cpu_ms_per_session_s": steady, "setup_cpu_ms_per_session": setup,
        "rss_peak_mb": server.get("rss_peak_mb"),
        "rtt_p50_ms": report["audio_rtt_ms"]["p50"], "rtt_p99_ms": report["audio_rtt_ms"]["p99"],
        "audit": audit and {k: audit[k] for k in ("checked", "matched")},
    }


def run(sessions: int = SESSIONS, duration_s: float = DURATION_S, rounds: int = ROUNDS) -> list[dict]:
    """Every relay on the same workload, ``rounds`` times in turn; each relay's
    round with the least CPU is kept (the machine's other work only adds)."""
    best: dict[str, dict] = {}
    with echo_provider() as echo:
        upstream = f"ws://127.0.0.1:{echo.port}/v1/realtime"
        for _ in range(rounds):
            results = []
            vg = Voxgate(upstream)
            try:
                results.append(_measure("voxgate (full metering)", vg, vg.url, vg.key, False,
                                        sessions, duration_s))
            finally:
                vg.stop()
            for kind in ("aiohttp", "websockets"):
                port = free_port()
                with Proc([PY, "-m", "bench.relays", kind, "--port", str(port),
                           "--upstream", upstream], port) as relay:
                    results.append(_measure(f"bare {kind} relay + uvloop", relay,
                                            f"ws://127.0.0.1:{port}/v1/realtime", "bench", True,
                                            sessions, duration_s))
            ng = nginx(echo.port)
            if ng is not None:
                with ng:
                    results.append(_measure("nginx", ng, f"ws://127.0.0.1:{ng.port}/v1/realtime",
                                            "bench", True, sessions, duration_s))
            for row in results:
                old = best.get(row["relay"])
                if old is None or (row["cpu_ms_per_session_s"] or 1e9) < (old["cpu_ms_per_session_s"] or 1e9):
                    best[row["relay"]] = row
    return list(best.values())


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))

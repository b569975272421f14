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


def run(sessions: int = SESSIONS, duration_s: float = DURATION_S) -> list[dict]:
    rows = []
    with echo_provider() as echo:
        upstream = f"ws://127.0.0.1:{echo.port}/v1/realtime"
        relays = []

        def measure(name: str, proc: Proc, url: str, key: str, direct: bool) -> None:
            report = loadtest(url, key, sessions, sessions, duration_s, server_pid=proc.pid,
                              direct=direct, ramp_s=2.0)
            server = report.get("server") or {}
            audio_s = report["audio_sent_s"]
            cpu_ms = server.get("cpu_s", 0) * 1000 / audio_s if audio_s else None
            rows.append({
                "relay": name, "sessions": sessions, "admitted": report["admitted"],
                "failed": report["failed"], "session_s": round(audio_s, 1),
                "cpu_s": server.get("cpu_s"), "cpu_ms_per_session_s": cpu_ms,
                "sessions_per_core": 1000.0 / cpu_ms if cpu_ms else None,
                "rss_peak_mb": server.get("rss_peak_mb"),
                "rtt_p50_ms": report["audio_rtt_ms"]["p50"], "rtt_p99_ms": report["audio_rtt_ms"]["p99"],
                "audit": report.get("audit") and {k: report["audit"][k] for k in ("checked", "matched")},
            })

        vg = Voxgate(upstream)
        try:
            measure("voxgate (full metering)", vg, vg.url, vg.key, False)
        finally:
            vg.stop()
        for kind in ("aiohttp", "websockets"):
            port = free_port()
            with Proc([PY, "-m", "bench.relays", kind, "--port", str(port), "--upstream", upstream],
                      port) as relay:
                measure(f"bare {kind} relay" + (" + uvloop" if kind == "aiohttp" else " + uvloop"),
                        relay, f"ws://127.0.0.1:{port}/v1/realtime", "bench", True)
        ng = nginx(echo.port)
        if ng is not None:
            with ng:
                measure("nginx", ng, f"ws://127.0.0.1:{ng.port}/v1/realtime", "bench", True)
        del relays
    return rows


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))

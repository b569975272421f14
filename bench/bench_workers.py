"""``voxgate serve --workers 1`` against ``--workers 2`` on this machine:
WebSocket sessions (real-time echo audio, as ``bench_ws_relay``) at two
load levels, and mints per second (``POST /v1/realtime/client_secrets``).

Both run with Redis admission (``admission_url`` on 127.0.0.1:6379, a fresh
key prefix each run), which ``--workers 2`` requires, so the only change is
the number of processes; the mint table also has one in-process-admission
row for reference. CPU is the user + system time of voxgate's whole process
tree (the supervisor and its workers) over the run, per second of audio
streamed; the split between the workers shows how ``SO_REUSEPORT`` spread
the connections. The load generator and the echo provider are their own
processes and share the same 2 cores.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from bench.bench_tokens import _hammer
from bench.common import BENCH_CATALOG, PY, ROOT, echo_provider, free_port, loadtest, new_key, terminate, wait_port

LEVELS = (100, 250)  # concurrent WebSocket sessions
DURATION_S = 8.0
MINTS = 4000
MINT_CONCURRENCY = 32
REDIS_URL = "redis://127.0.0.1:6379/14"


class Served:
    """``voxgate serve --workers N`` with a fresh data dir, the bench catalog
    and a project key (made in the store before it starts)."""

    def __init__(self, workers: int, upstream_url: str, admission_url: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="voxgate-bench-workers-"))
        (self.dir / "catalog.toml").write_text(BENCH_CATALOG)
        self.port = free_port()
        config = self.dir / "voxgate.toml"
        config.write_text(
            f'port = {self.port}\ndata_dir = "{self.dir}/data"\n'
            f'catalog = "{self.dir}/catalog.toml"\nlog_level = "WARNING"\ndemo = false\n'
            f'admission_url = "{admission_url}"\n'
            f'admission_prefix = "voxgate-bench-{uuid.uuid4().hex[:8]}:"\n'
            f'[upstream]\nprovider = "local"\nurl = "{upstream_url}"\n')
        self.key = asyncio.run(new_key(config, "bench-workers"))
        self._log = open(self.dir / "serve.log", "wb")
        self.proc = subprocess.Popen(
            [PY, "-m", "voxgate", "serve", "--config", str(config), "--workers", str(workers)],
            cwd=str(ROOT), stdout=self._log, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc)
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        time.sleep(1.0 if workers > 1 else 0.2)  # every worker listening

    def processes(self) -> list[psutil.Process]:
        parent = psutil.Process(self.proc.pid)
        return [parent, *parent.children(recursive=True)]

    def cpu_by_pid(self) -> dict[int, float]:
        out = {}
        for p in self.processes():
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                continue
        return out

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()



def _cpu_delta(before: dict[int, float], after: dict[int, float]) -> list[float]:
    return [after[pid] - before.get(pid, 0.0) for pid in after]


def _sessions(served: Served, sessions: int) -> dict:
    before = served.cpu_by_pid()
    report = loadtest(served.url, served.key, sessions, sessions, DURATION_S, ramp_s=2.0)
    split = _cpu_delta(before, served.cpu_by_pid())
    cpu_s = sum(split)
    audio_s = report["audio_sent_s"]
    cpu_ms = cpu_s * 1000 / audio_s if audio_s else None
    workers_cpu = sorted((c for c in split if c > 0.05), reverse=True)
    audit = report.get("audit") or {}
    return {
        "workers": served.workers, "sessions": sessions, "admitted": report["admitted"],
        "failed": report["failed"], "session_s": round(audio_s, 1), "cpu_s": cpu_s,
        "cpu_ms_per_session_s": cpu_ms,
        "sessions_per_core": 1000.0 / cpu_ms if cpu_ms else None,
        "cpu_split_s": [round(c, 1) for c in workers_cpu],
        "rtt_p50_ms": report["audio_rtt_ms"]["p50"], "rtt_p99_ms": report["audio_rtt_ms"]["p99"],
        "audit": f"{audit.get('matched', 0)}/{audit.get('checked', 0)}",
    }


def _mints(served: Served, label: str) -> dict:
    import uvloop

    before = served.cpu_by_pid()
    r = uvloop.run(_hammer(served.url + "/v1/realtime/client_secrets",
                           {"Authorization": f"Bearer {served.key}"},
                           {"session": {"type": "realtime", "model": "gpt-realtime"}},
                           MINTS, MINT_CONCURRENCY))
    r["server_cpu_s"] = sum(_cpu_delta(before, served.cpu_by_pid()))
    return {"config": label, **r}


def run() -> dict:
    sessions, mints = [], []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()[0]
    with echo_provider() as echo:
        upstream = f"ws://127.0.0.1:{echo.port}/v1/realtime"
        single = Served(1, upstream, "")
        try:
            mints.append(_mints(single, "--workers 1, in-process admission"))
        finally:
            single.stop()
        for workers in (1, 2):
            served = Served(workers, upstream, REDIS_URL)
            try:
                mints.append(_mints(served, f"--workers {workers}, Redis admission"))
                for level in LEVELS:
                    sessions.append(_sessions(served, level))
            finally:
                served.stop()
    return {"sessions": sessions, "mints": mints, "measured": started,
            "load_avg": [round(load_before, 1), round(os.getloadavg()[0], 1)]}


def render(r: dict, goal: str, table, f) -> str:
    """The ``## Workers`` section of docs/benchmarks.md (``table`` and ``f``
    are bench.run's table and number formatters)."""
    s = ["## Workers: `voxgate serve --workers 1` vs `--workers 2`\n\n"
         + (__doc__ or "").split("\n\n", 1)[1].replace("\n", " ").strip() + "\n\n"
         f"Goal: {goal}.\n\n"
         f"_Measured {r.get('measured', '?')}; 1-minute load average "
         f"{' → '.join(str(x) for x in r.get('load_avg', []))} (before → after), other work "
         "on the same cores included._\n"]
    s.append(table(
        ["workers", "sessions ok", "session-s", "CPU ms / session-s", "sessions / core",
         "CPU s by process", "echo RTT p50 / p99 ms", "audit"],
        [[x["workers"], f"{x['admitted']}/{x['sessions']}", x["session_s"],
          f(x["cpu_ms_per_session_s"]), f(x["sessions_per_core"], "{:.0f}"),
          " + ".join(str(c) for c in x["cpu_split_s"]),
          f"{f(x['rtt_p50_ms'])} / {f(x['rtt_p99_ms'])}", x["audit"]]
         for x in r["sessions"]]) + "\n")
    s.append(table(["mints", "requests", "per s", "p50 ms", "p99 ms", "server CPU s", "errors"],
                   [[x["config"], x["requests"], f(x["per_s"], "{:.0f}"), f(x["p50_ms"]),
                     f(x["p99_ms"]), f(x["server_cpu_s"]), x["errors"]] for x in r["mints"]])
             + "\n")
    return "\n".join(s)

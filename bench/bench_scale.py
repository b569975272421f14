"""The scale-out path against the embedded default, side by side in one run:
``voxgate serve`` on SQLite with in-process admission, on PostgreSQL +
Redis admission (one process), and on PostgreSQL + Redis with ``--workers
2``, each with a fresh database (SQLite file, PostgreSQL database, Redis key
prefix), the bench catalog and the echo provider as the upstream.

Two loads per configuration, the configurations interleaved run by run:
mints (``POST /v1/realtime/client_secrets``, 32 at a time) and short
WebSocket sessions (connect, wait for ``session.created``, one 200 ms
``input_audio_buffer.append``, close, wait for the close to be answered; 64
at a time). CPU is user + system time over the load of voxgate's process
tree, and separately of the PostgreSQL and Redis server processes (on the
same 2 cores); per 1 000 sessions or mints. A session whose close is not
answered within 5 s counts as hung.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import psutil

from bench.bench_tokens import _hammer
from bench.common import BENCH_CATALOG, PY, ROOT, echo_provider, free_port, new_key, terminate, wait_port

PG_SERVER = os.environ.get("VOXGATE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = "redis://127.0.0.1:6379/14"
MINTS = 3000
MINT_CONCURRENCY = 32
SESSIONS = 1500
SESSION_CONCURRENCY = 64
RUNS = 2
CONFIGS = ("sqlite", "pg+redis", "pg+redis --workers 2")
_APPEND = ('{"type":"input_audio_buffer.append","audio":"'
           + base64.b64encode(bytes(9600)).decode() + '"}')  # 200 ms of PCM16 24 kHz silence


def _new_database() -> tuple[str, str]:
    import psycopg

    name = f"vg_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, PG_SERVER.rsplit("/", 1)[0] + "/" + name


def _drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Served:
    """``voxgate serve`` in one configuration of ``CONFIGS`` with a project key."""

    def __init__(self, config: str, upstream_url: str) -> None:
        self.name = config
        self.dir = Path(tempfile.mkdtemp(prefix="voxgate-bench-scale-"))
        (self.dir / "catalog.toml").write_text(BENCH_CATALOG)
        self.port = free_port()
        self.db_name: str | None = None
        toml = (f'port = {self.port}\ndata_dir = "{self.dir}/data"\n'
                f'catalog = "{self.dir}/catalog.toml"\nlog_level = "WARNING"\ndemo = false\n')
        if config.startswith("pg"):
            self.db_name, url = _new_database()
            toml += (f'database_url = "{url}"\nadmission_url = "{REDIS_URL}"\n'
                     f'admission_prefix = "voxgate-bench-{uuid.uuid4().hex[:8]}:"\n')
        toml += f'[upstream]\nprovider = "local"\nurl = "{upstream_url}"\n'
        path = self.dir / "voxgate.toml"
        path.write_text(toml)
        self.key = asyncio.run(new_key(path, "bench-scale"))
        workers = "2" if "--workers 2" in config else "1"
        self._log = open(self.dir / "serve.log", "wb")
        self.proc = subprocess.Popen(
            [PY, "-m", "voxgate", "serve", "--config", str(path), "--workers", workers],
            cwd=str(ROOT), stdout=self._log, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc)
        self.url = f"http://127.0.0.1:{self.port}"
        time.sleep(1.0 if workers == "2" else 0.3)

    def cpu_s(self) -> float:
        parent = psutil.Process(self.proc.pid)
        return sum(_cpu(p) for p in [parent, *parent.children(recursive=True)])

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()
        if self.db_name:
            _drop_database(self.db_name)


def _cpu(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.NoSuchProcess:
        return 0.0


def _servers_cpu_s() -> float:
    """CPU of every PostgreSQL and Redis server process on the machine."""
    total = 0.0
    for p in psutil.process_iter(["name"]):
        if (p.info["name"] or "").startswith(("postgres", "redis-server")):
            total += _cpu(p)
    return total



async def _short_sessions(url: str, key: str, n: int, concurrency: int) -> dict:
    """``n`` short sessions, ``concurrency`` at a time: counts of completed,
    refused (no upgrade) and hung (close not answered within 5 s)."""
    ws_url = url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
    headers = {"Authorization": f"Bearer {key}"}
    counts = {"ok": 0, "refused": 0, "hung": 0, "failed": 0}
    counter = iter(range(n))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        async def one() -> str:
            try:
                ws = await http.ws_connect(ws_url, headers=headers, autoclose=False)
            except aiohttp.WSServerHandshakeError:
                return "refused"
            try:
                async with asyncio.timeout(5.0):
                    while True:
                        msg = await ws.receive()
                        if msg.type is not aiohttp.WSMsgType.TEXT:
                            return "failed"
                        if '"session.created"' in msg.data:
                            break
                    await ws.send_str(_APPEND)
                    await ws.close()
                return "ok"
            except TimeoutError:
                return "hung"
            finally:
                if not ws.closed:
                    ws._response.close()

        async def worker() -> None:
            for _ in counter:
                counts[await one()] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {**counts, "sessions": n, "per_s": n / wall}


def _measure(served: Served) -> dict:
    import uvloop

    cpu0, srv0 = served.cpu_s(), _servers_cpu_s()
    mints = uvloop.run(_hammer(served.url + "/v1/realtime/client_secrets",
                               {"Authorization": f"Bearer {served.key}"},
                               {"session": {"type": "realtime", "model": "gpt-realtime"}},
                               MINTS, MINT_CONCURRENCY))
    cpu1, srv1 = served.cpu_s(), _servers_cpu_s()
    sessions = uvloop.run(_short_sessions(served.url, served.key, SESSIONS, SESSION_CONCURRENCY))
    cpu2, srv2 = served.cpu_s(), _servers_cpu_s()
    return {"config": served.name,
            "mints_per_s": mints["per_s"], "mint_errors": mints["errors"],
            "mint_cpu_s_per_1000": (cpu1 - cpu0) * 1000 / MINTS,
            "mint_db_cpu_s_per_1000": (srv1 - srv0) * 1000 / MINTS,
            "sessions_per_s": sessions["per_s"], "sessions_ok": sessions["ok"],
            "hung": sessions["hung"], "refused": sessions["refused"], "failed": sessions["failed"],
            "session_cpu_s_per_1000": (cpu2 - cpu1) * 1000 / SESSIONS,
            "session_db_cpu_s_per_1000": (srv2 - srv1) * 1000 / SESSIONS}


def run(runs: int = RUNS) -> dict:
    rows: list[dict] = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()[0]
    with echo_provider() as echo:
        upstream = f"ws://127.0.0.1:{echo.port}/v1/realtime"
        for run_no in range(runs):
            for config in CONFIGS:
                served = Served(config, upstream)
                try:
                    rows.append({"run": run_no + 1, **_measure(served)})
                finally:
                    served.stop()
    return {"rows": rows, "measured": started,
            "load_avg": [round(load_before, 1), round(os.getloadavg()[0], 1)]}


def render(r: dict, goal: str, table, f) -> str:
    """The ``## Scale-out`` section of docs/benchmarks.md."""
    s = ["## Scale-out: SQLite vs PostgreSQL + Redis vs `--workers 2`\n\n"
         + (__doc__ or "").split("\n\n", 1)[1].replace("\n", " ").strip() + "\n\n"
         f"Goal: {goal}.\n\n"
         f"_Measured {r.get('measured', '?')}; 1-minute load average "
         f"{' → '.join(str(x) for x in r.get('load_avg', []))} (before → after)._\n"]
    s.append(table(
        ["run", "config", "mints/s", "CPU s / 1 000 mints (voxgate + PG/Redis)",
         "sessions/s", "ok / hung / refused", "CPU s / 1 000 sessions (voxgate + PG/Redis)"],
        [[x["run"], x["config"], f(x["mints_per_s"], "{:.0f}"),
          f"{f(x['mint_cpu_s_per_1000'])} + {f(x['mint_db_cpu_s_per_1000'])}",
          f(x["sessions_per_s"], "{:.0f}"), f"{x['sessions_ok']} / {x['hung']} / {x['refused']}",
          f"{f(x['session_cpu_s_per_1000'])} + {f(x['session_db_cpu_s_per_1000'])}"]
         for x in r["rows"]]) + "\n")
    return "\n".join(s)


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else RUNS), indent=2))

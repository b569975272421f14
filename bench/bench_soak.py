"""A two-instance soak on PostgreSQL + Redis: two ``voxgate serve``
processes on one fresh PostgreSQL database and one Redis key prefix (shared
admission), the echo provider upstream, and a steady load of WebSocket
sessions spread over both for ``minutes`` (connect, ``session.created``,
1 s of audio in five appends, commit, the echoed response to its
``response.done``, close; 16 at a time).

Every 30 s the resident memory (RSS) of each instance is sampled. At the
end: the sessions run, how many failed or hung (no answer within 10 s),
the live leases left in Redis, the ``active`` rows left in the database,
and each instance's RSS after the first two minutes' warm-up against the
end (flat memory: the difference stays within noise).

``python -m bench.bench_soak [MINUTES]`` (30 by default).
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

from bench.bench_scale import _drop_database, _new_database
from bench.common import BENCH_CATALOG, PY, ROOT, echo_provider, free_port, new_key, terminate, wait_port

REDIS_URL = "redis://127.0.0.1:6379/14"
CONCURRENCY = 16
SAMPLE_S = 30.0
WARMUP_S = 120.0
_CHUNK = ('{"type":"input_audio_buffer.append","audio":"'
          + base64.b64encode(bytes(9600)).decode() + '"}')  # 200 ms of PCM16 24 kHz


class Instance:
    """One ``voxgate serve`` of the pair."""

    def __init__(self, name: str, config: str, directory: Path) -> None:
        path = directory / f"{name}.toml"
        self.port = free_port()
        path.write_text(f"port = {self.port}\ninstance_id = \"soak-{name}\"\n" + config)
        self.log = open(directory / f"{name}.log", "wb")
        self.proc = subprocess.Popen([PY, "-m", "voxgate", "serve", "--config", str(path)],
                                     cwd=str(ROOT), stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc)
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/realtime?model=gpt-realtime"

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        terminate(self.proc)
        self.log.close()


async def _session(http: aiohttp.ClientSession, url: str, key: str) -> str:
    try:
        ws = await http.ws_connect(url, headers={"Authorization": f"Bearer {key}"},
                                   autoclose=False)
    except aiohttp.WSServerHandshakeError:
        return "refused"
    try:
        async with asyncio.timeout(10.0):
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    return "failed"
                if '"session.created"' in msg.data:
                    break
            for _ in range(5):
                await ws.send_str(_CHUNK)
                await asyncio.sleep(0.2)
            await ws.send_str('{"type":"input_audio_buffer.commit"}')
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    return "failed"
                if '"response.done"' in msg.data:
                    break
            await ws.close()
        return "ok"
    except TimeoutError:
        return "hung"
    finally:
        if not ws.closed:
            ws._response.close()


async def _load(instances: list[Instance], key: str, until: float, samples: list) -> dict:
    counts = {"ok": 0, "refused": 0, "hung": 0, "failed": 0}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async def worker(i: int) -> None:
            url = instances[i % len(instances)].ws_url
            while time.monotonic() < until:
                counts[await _session(http, url, key)] += 1

        async def sampler() -> None:
            t0 = time.monotonic()
            while time.monotonic() < until:
                samples.append([round(time.monotonic() - t0)]
                               + [round(i.rss_mb(), 1) for i in instances])
                await asyncio.sleep(SAMPLE_S)

        await asyncio.gather(sampler(), *(worker(i) for i in range(CONCURRENCY)))
    return counts


async def _leftovers(db_url: str, prefix: str) -> tuple[int, int]:
    """(live leases in Redis under ``prefix``, ``active`` session rows)."""
    import psycopg
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS_URL)
    try:
        leases = 0
        now = time.time()
        async for key in redis.scan_iter(match=f"{prefix}leases:*"):
            leases += await redis.zcount(key, now, "+inf")
    finally:
        await redis.aclose()
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM sessions WHERE status = 'active'").fetchone()
    return leases, int(row[0]) if row else 0



def run(minutes: float = 30.0) -> dict:
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    directory = Path(tempfile.mkdtemp(prefix="voxgate-bench-soak-"))
    (directory / "catalog.toml").write_text(BENCH_CATALOG)
    db_name, db_url = _new_database()
    prefix = f"voxgate-soak-{uuid.uuid4().hex[:8]}:"
    instances: list[Instance] = []
    try:
        with echo_provider() as echo:
            config = (f'data_dir = "{directory}/data"\ncatalog = "{directory}/catalog.toml"\n'
                      f'log_level = "WARNING"\ndemo = false\ndatabase_url = "{db_url}"\n'
                      f'admission_url = "{REDIS_URL}"\nadmission_prefix = "{prefix}"\n'
                      f'[upstream]\nprovider = "local"\n'
                      f'url = "ws://127.0.0.1:{echo.port}/v1/realtime"\n')
            instances = [Instance("a", config, directory)]
            key = asyncio.run(new_key(directory / "a.toml", "soak"))  # after A created the schema
            instances.append(Instance("b", config, directory))
            samples: list[list[float]] = []
            counts = asyncio.run(_load(instances, key, time.monotonic() + minutes * 60, samples))
            time.sleep(2.0)
            leases, active = asyncio.run(_leftovers(db_url, prefix))
    finally:
        for instance in instances:
            instance.stop()
        _drop_database(db_name)
    warm = next((s for s in samples if s[0] >= WARMUP_S), samples[0] if samples else None)
    last = samples[-1] if samples else None
    return {"measured": started, "minutes": minutes, "concurrency": CONCURRENCY, **counts,
            "leases_left": leases, "active_rows_left": active, "rss_samples": samples,
            "rss_after_warmup_mb": warm[1:] if warm else None,
            "rss_end_mb": last[1:] if last else None,
            "load_avg": round(os.getloadavg()[0], 1)}


def render(r: dict, goal: str, table, f) -> str:
    """The ``## Soak`` section of docs/benchmarks.md."""
    s = ["## Soak: two instances on PostgreSQL + Redis\n\n"
         + (__doc__ or "").split("\n\n")[0].replace("\n", " ").strip()
         + "\n\n" f"Goal: {goal}.\n\n_Measured {r.get('measured', '?')}._\n"]
    warm, end = r.get("rss_after_warmup_mb") or [], r.get("rss_end_mb") or []
    s.append(table(
        ["minutes", "sessions ok", "failed / hung / refused", "leases left", "active rows left",
         "RSS A (MB) warm → end", "RSS B (MB) warm → end"],
        [[r["minutes"], r["ok"], f"{r['failed']} / {r['hung']} / {r['refused']}",
          r["leases_left"], r["active_rows_left"],
          f"{warm[0]} → {end[0]}" if warm else "-", f"{warm[1]} → {end[1]}" if warm else "-"]])
        + "\n")
    return "\n".join(s)


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(float(sys.argv[1]) if len(sys.argv) > 1 else 30.0), indent=2))

"""Token endpoint throughput: ``POST /v1/realtime/client_secrets`` mints per
second and latency p99, against an aiohttp hello world (``POST /hello``) on
the same machine; and session admit + finalize per second on SQLite and on
PostgreSQL (``Gateway.admit``/``finish`` called directly on a
``SQLiteStore``, and on a ``PostgresStore`` in a fresh database of
``bench.bench_store.PG_URL``'s server)."""

from __future__ import annotations

import asyncio
import tempfile
import time

import aiohttp

from bench.common import PY, Proc, Voxgate, echo_provider, free_port

REQUESTS = 4000
CONCURRENCY = 32


async def _hammer(url: str, headers: dict, body: dict, n: int, concurrency: int) -> dict:
    lat: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        counter = iter(range(n))

        async def worker() -> None:
            nonlocal errors
            for _ in counter:
                t = time.perf_counter()
                async with http.post(url, json=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                lat.append((time.perf_counter() - t) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat.sort()
    return {"requests": n, "per_s": n / wall, "p50_ms": lat[len(lat) // 2],
            "p99_ms": lat[int(len(lat) * 0.99)], "errors": errors}


def run_tokens(n: int = REQUESTS, concurrency: int = CONCURRENCY) -> list[dict]:
    import uvloop

    rows = []
    with echo_provider() as echo:
        vg = Voxgate(f"ws://127.0.0.1:{echo.port}/v1/realtime")
        try:
            cpu0 = vg.cpu_s()
            r = uvloop.run(_hammer(vg.url + "/v1/realtime/client_secrets",
                                   {"Authorization": f"Bearer {vg.key}"},
                                   {"session": {"type": "realtime", "model": "gpt-realtime"}},
                                   n, concurrency))
            r["server_cpu_s"] = vg.cpu_s() - cpu0
            rows.append({"endpoint": "voxgate POST /v1/realtime/client_secrets", **r})
        finally:
            vg.stop()
    port = free_port()
    with Proc([PY, "-m", "bench.relays", "hello", "--port", str(port)], port) as hello:
        cpu0 = hello.cpu_s()
        r = uvloop.run(_hammer(f"http://127.0.0.1:{port}/hello", {}, {"x": 1}, n, concurrency))
        r["server_cpu_s"] = hello.cpu_s() - cpu0
        rows.append({"endpoint": "aiohttp hello world POST /hello", **r})
    return rows


async def _admit_finish(n: int, concurrency: int, kind: str = "sqlite") -> dict:
    import uuid
    from pathlib import Path

    import psycopg

    from bench.bench_store import PG_URL
    from bench.common import BENCH_CATALOG
    from voxgate.admission.base import InProcessAdmission
    from voxgate.config import load_settings
    from voxgate.metering.events import CLIENT, UPSTREAM, classify
    from voxgate.models import PlanCatalog, load_catalog
    from voxgate.proxy.gateway import Gateway, monotonic_ms
    from voxgate.store.sql import PostgresStore, SQLiteStore, SQLStore

    d = Path(tempfile.mkdtemp(prefix="voxgate-bench-admit-"))
    (d / "catalog.toml").write_text(BENCH_CATALOG)
    settings = load_settings(None, data_dir=str(d), catalog=str(d / "catalog.toml"))
    catalog: PlanCatalog = load_catalog(settings.catalog)
    pg_name = f"voxgate_bench_{uuid.uuid4().hex[:10]}"
    if kind == "postgresql":
        async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as admin:
            await admin.execute(f'CREATE DATABASE "{pg_name}"')
        store: SQLStore = PostgresStore(PG_URL.rsplit("/", 1)[0] + "/" + pg_name)
    else:
        store = SQLiteStore(d / "voxgate.db")
    await store.open()
    try:
        gw = Gateway(settings, store, InProcessAdmission(), catalog)
        account = await store.create_account("bench@x", "bench")
        project = await store.create_project(account.id, "p")
        _, key = await store.create_api_key(project.id, "k")
        from voxgate.proxy.auth import resolve

        principal = await resolve(store, key)
        counter = iter(range(n))

        async def worker() -> None:
            for _ in counter:
                active = await gw.admit(principal, "websocket", "gpt-realtime")
                m = active.meter
                m.accepted(monotonic_ms())
                m.record(classify(UPSTREAM, "session.created", 100, {"type": "session.created"}),
                         monotonic_ms())
                m.record(classify(CLIENT, "input_audio_buffer.append", 1300,
                                  {"type": "input_audio_buffer.append", "audio": "A" * 1280}),
                         monotonic_ms())
                m.closed("client", 1000, None, monotonic_ms())
                await gw.finish(active)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    finally:
        await store.close()
        if kind == "postgresql":
            async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as admin:
                await admin.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
    return {"store": "PostgreSQL" if kind == "postgresql" else "SQLite", "sessions": n,
            "concurrency": concurrency, "per_s": n / wall}


def run_admit(n: int = 3000) -> list[dict]:
    import uvloop

    return [uvloop.run(_admit_finish(n, c, kind))
            for kind in ("sqlite", "postgresql") for c in (1, 32)]


if __name__ == "__main__":
    import json

    print(json.dumps({"tokens": run_tokens(), "admit": run_admit()}, indent=2))

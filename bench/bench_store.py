"""Store admit + finalize per second: ``store.open_session`` then
``store.complete_session`` (a billable session of a plan with included
sessions, packs and overage, so completion decides its settlement) for many
sessions at once, on the SQLite store and on the PostgreSQL store (its pool
and the one-round-trip ``voxgate_complete_session``) in one run, per
process. PostgreSQL runs in a fresh database on ``VOXGATE_BENCH_PG_URL``
(default ``postgresql://postgres@127.0.0.1:5432/test``'s server), dropped
after.

``python -m bench.bench_store [--sessions N] [--concurrency C,C]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

from voxgate.models import Measurements, Reason, SessionRecord, Verdict, new_id

PG_URL = os.environ.get("VOXGATE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SESSIONS = 3000
CONCURRENCY = (1, 64)
BILLABLE = Verdict(True, Reason.BILLABLE, "bench")


async def _run(store, n: int, concurrency: int) -> dict:
    account = await store.create_account(f"bench-{uuid.uuid4().hex[:8]}@x", "bench")
    project = await store.create_project(account.id, "p")
    await store.grant_pack(account.id, catalog_pack="p", sessions=n // 4, price_cents=0,
                           source="operator", ref=new_id("ref"), purchased_at=time.time() - 10)
    counter = iter(range(n))

    async def worker() -> None:
        for _ in counter:
            now = time.time()
            record = SessionRecord(id=new_id("sess"), account_id=account.id,
                                   project_id=project.id, transport="websocket",
                                   started_at=now, model="gpt-realtime")
            await store.open_session(record, lease_id=new_id("lease"))
            record.ended_at = now + 30
            record.measurements = Measurements(connected=True, duration_ms=30_000,
                                               audio_in_ms=5000, audio_out_ms=5000,
                                               bytes_in=200_000, bytes_out=200_000)
            await store.complete_session(record, BILLABLE, settle_from=n // 2,
                                         pack_from=n // 4)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    usage = await store.get_usage(account.id, record_period())
    assert usage.billable_sessions == n, usage
    return {"sessions": n, "concurrency": concurrency, "per_s": n / wall,
            "client_cpu_ms_per_session": cpu * 1000 / n}


def record_period() -> str:
    from voxgate.store.base import period_of

    return period_of()


async def _sqlite(n: int, levels: tuple[int, ...]) -> list[dict]:
    from voxgate.store.sql import SQLiteStore

    d = Path(tempfile.mkdtemp(prefix="voxgate-bench-store-"))
    store = SQLiteStore(d / "voxgate.db")
    await store.open()
    try:
        return [{"store": "SQLite", **await _run(store, n, c)} for c in levels]
    finally:
        await store.close()


async def _postgres(n: int, levels: tuple[int, ...]) -> list[dict]:
    import psycopg

    from voxgate.store.sql import PostgresStore

    name = f"voxgate_bench_{uuid.uuid4().hex[:10]}"
    async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as admin:
        await admin.execute(f'CREATE DATABASE "{name}"')
    store = PostgresStore(PG_URL.rsplit("/", 1)[0] + "/" + name)
    try:
        await store.open()
        try:
            return [{"store": "PostgreSQL (pool, 1 round trip finalize)",
                     **await _run(store, n, c)} for c in levels]
        finally:
            await store.close()
    finally:
        async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(n: int = SESSIONS, levels: tuple[int, ...] = CONCURRENCY) -> list[dict]:
    """Rows: store, sessions, concurrency, admit + finalize per second, the
    client process's CPU ms per session (PostgreSQL's server CPU not included)."""
    import uvloop

    return uvloop.run(_sqlite(n, levels)) + uvloop.run(_postgres(n, levels))


def render(rows: list[dict], goal: str, table, f) -> str:
    """The docs/benchmarks.md section."""
    return ("## Store: admit + finalize per second\n\n"
            "`store.open_session` then `store.complete_session` (billable; included sessions, a "
            "pack, then overage, so completion decides the settlement) called directly, many "
            "sessions at once, per process: SQLite (one connection, one writer) and PostgreSQL "
            "over TCP to 127.0.0.1 (the pool's session lane, group commit, finalize in one round "
            "trip: `voxgate_complete_session`). Client CPU excludes PostgreSQL's own.\n\n"
            f"Goal: {goal}.\n\n"
            + table(["store", "concurrency", "sessions", "admit + finalize / s",
                     "client CPU ms / session"],
                    [[x["store"], x["concurrency"], x["sessions"], f(x["per_s"], "{:.0f}"),
                      f(x["client_cpu_ms_per_session"])] for x in rows]) + "\n")


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.bench_store")
    p.add_argument("--sessions", type=int, default=SESSIONS)
    p.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    a = p.parse_args()
    print(json.dumps(run(a.sessions, tuple(int(c) for c in a.concurrency.split(","))), indent=2))

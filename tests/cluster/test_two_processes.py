"""Two real `voxgate serve` processes on one database and one Redis
admission (a fresh key prefix per test): the quota holds exactly under churn,
a burst of starts gets decisions (never a 500), and a killed process's
leases do not lock a concurrency-1 account out.

Sessions are short echo sessions through the shared local voice provider
(``voxgate_fault=echo``); ``policy.min_audio_s`` is lowered so 0.4 s of
audio each way is billable.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from tests.conftest import PG_URL, SLOW, TEST_CATALOG
from tests.served import Served, load, new_key, records, serve, settings_env
from voxgate.loadtest.audio import Clip
from voxgate.loadtest.plan import SessionPlan
from voxgate.loadtest.result import ADMITTED, REFUSED
from voxgate.loadtest.ws_client import refusal_trace, run_ws_session
from voxgate.proxy.ws_relay import SESSION_ID_HEADER
from voxgate.store.base import SessionFilter, period_of

REDIS_URL = "redis://127.0.0.1:6379/15"
CATALOG = TEST_CATALOG + """
[plans.cap30]
name = "Cap 30"
sessions_included = 30
requests_per_minute = 100000
projects = 1

[plans.burst]
name = "Burst"
sessions_included = 100000
concurrency = 60
requests_per_minute = 100000
projects = 1

[plans.single]
name = "Single"
sessions_included = 1000
concurrency = 1
requests_per_minute = 100000
projects = 1
"""
ECHO = SessionPlan(0, "normal", 400, "echo")  # 0.4 s of audio, echoed back


@pytest.fixture
def fresh_pg():
    """A factory of fresh PostgreSQL databases (on ``PG_URL``'s server),
    dropped after the test: ``fresh_pg()`` → its ``postgresql://`` URL."""
    import psycopg

    made: list[str] = []

    def make() -> str:
        name = f"vg_cluster_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return PG_URL.rsplit("/", 1)[0] + "/" + name

    yield make
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for name in made:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def cluster(tmp_path, voice_url, fresh_pg):
    """A factory of two voxgate processes sharing ``tmp_path``'s database
    and one Redis prefix: ``await cluster(**settings)`` → (env, [a, b]).
    It uses ``fresh_pg`` so that the processes stop before ``fresh_pg``
    drops their database (else they retry writes to it until killed)."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    prefix = f"voxgate-test-{uuid.uuid4().hex[:8]}:"
    started: list[Served] = []

    async def start(**settings: str) -> tuple[dict[str, str], list[Served]]:
        env = settings_env(tmp_path / "data", voice_url, catalog, admission_url=REDIS_URL,
                           admission_prefix=prefix, policy__min_audio_s="0.3", drain_timeout_s="1",
                           **settings)
        await new_key(env, "free")  # creates the database before two processes open it
        pair = await asyncio.gather(*(
            asyncio.to_thread(serve, {**env, "VOXGATE_INSTANCE_ID": f"node-{n}"},
                              tmp_path / f"serve-{n}.log") for n in "ab"))
        started.extend(pair)
        return env, list(pair)

    yield start
    for served in started:
        served.stop()
    redis = Redis.from_url(REDIS_URL)
    keys = [k async for k in redis.scan_iter(match=prefix + "*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


async def stored(env: dict[str, str], account_id: str, **filters):
    """The account's stored sessions matching ``filters``, once none is active."""
    from voxgate.store import open_store

    store = open_store(load(env))
    await store.open()
    try:
        deadline = time.monotonic() + 20 * SLOW
        while await store.count_sessions(account_id, SessionFilter(status="active")):
            assert time.monotonic() < deadline, "sessions still active"
            await asyncio.sleep(0.1)
        return await store.count_sessions(account_id, SessionFilter(**filters))
    finally:
        await store.close()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_quota_churn_across_two_processes_ends_exactly_at_the_quota(cluster, fresh_pg,
                                                                          database):
    """40 clients cycle short billable sessions, alternating between the two
    processes, against 30 remaining: 30 billable sessions, every other
    attempt refused 429 insufficient_quota. On SQLite and on PostgreSQL."""
    env, (a, b) = await cluster(
        **({"database_url": fresh_pg()} if database == "postgresql" else {}))
    account_id, _, key = await new_key(env, "cap30")
    clip = Clip.load()
    results = []
    admitted_by = {a.url: 0, b.url: 0}

    async def client(n: int, http: aiohttp.ClientSession) -> None:
        refusals = 0
        for i in range(30):
            served = (a, b)[(n + i) % 2]
            res = await run_ws_session(http, served.ws_url, key, ECHO, clip)
            results.append(res)
            if res.outcome == ADMITTED:
                admitted_by[served.url] += 1
            if res.outcome == REFUSED:
                refusals += 1
                if refusals == 3:  # a few more tries once the quota is used up
                    return

    async with aiohttp.ClientSession(trace_configs=[refusal_trace()]) as http:
        async with asyncio.timeout(120 * SLOW):
            await asyncio.gather(*(client(n, http) for n in range(40)))

    admitted = [r for r in results if r.outcome == ADMITTED]
    refused = [r for r in results if r.outcome == REFUSED]
    assert len(admitted) + len(refused) == len(results), [r.error for r in results]
    assert len(admitted) == 30, [r.error for r in admitted if r.error]
    assert {(r.http_status, r.error_code) for r in refused} == {(429, "insufficient_quota")}
    assert len(refused) == 40 * 3
    assert await stored(env, account_id, billable=True) == 30
    assert await stored(env, account_id) == 30
    assert all(admitted_by.values()), admitted_by  # both processes admitted sessions


async def test_500_simultaneous_starts_get_a_decision_each(cluster):
    """500 WebSocket upgrades at once, half to each process, on a plan of
    concurrency 60: each answer is 101 or a 429/503 JSON error, never a
    500; no more than 60 sessions run at once."""
    env, (a, b) = await cluster()
    _, _, key = await new_key(env, "burst")
    answers: list[tuple[int, str | None]] = []
    hold = asyncio.Event()

    async def start(n: int, http: aiohttp.ClientSession) -> None:
        served = (a, b)[n % 2]
        try:
            ws = await http.ws_connect(served.ws_url + "?model=gpt-realtime",
                                       headers={"Authorization": f"Bearer {key}"})
        except aiohttp.WSServerHandshakeError as exc:
            answers.append((exc.status, None))
            return
        answers.append((101, None))
        await hold.wait()
        await ws.close()

    # read refused upgrades' bodies: each must be a JSON error object
    bodies: list[tuple[int, bytes]] = []

    async def keep(_s, _c, params: aiohttp.TraceRequestEndParams) -> None:
        if params.response.status >= 400:
            bodies.append((params.response.status, await params.response.read()))

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(keep)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as http:
        async with asyncio.timeout(90 * SLOW):
            tasks = [asyncio.create_task(start(n, http)) for n in range(500)]
            while len(answers) < 500:
                await asyncio.sleep(0.05)
            hold.set()
            await asyncio.gather(*tasks)

    statuses = sorted({status for status, _ in answers})
    assert set(statuses) <= {101, 429, 503}, statuses
    assert sum(1 for s, _ in answers if s == 101) == 60
    assert len(bodies) == 500 - 60
    for status, body in bodies:
        error = orjson.loads(body)["error"]
        expected = "concurrency_limit_exceeded" if status == 429 else "service_unavailable"
        assert error["code"] == expected, (status, error)


async def test_kill_9_frees_the_dead_process_leases_for_the_survivor(cluster, fresh_pg):
    """On PostgreSQL: a concurrency-1 account with a live session on process
    a: a is killed (SIGKILL); b refuses the account while a's lease is
    live, then admits it once the lease expired (``lease_ttl_s``, 3 s here:
    a sweeper never frees a lost instance's leases early, since a paused
    one may still be relaying until its own clock fences it); b's sweeper
    completed a's session from its last checkpoint (``instance_lost``)."""
    env, (a, b) = await cluster(database_url=fresh_pg(), lease_ttl_s="3",
                                heartbeat_interval_s="0.5", heartbeat_ttl_s="2",
                                jobs__poll_s="0.5",
                                jobs__intervals_s=orjson.dumps({"instance_sweep": 0.5}).decode())
    _, _, key = await new_key(env, "single")
    auth = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(trace_configs=[refusal_trace()]) as http:
        live = await http.ws_connect(a.ws_url + "?model=gpt-realtime", headers=auth,
                                     timeout=aiohttp.ClientWSTimeout(ws_close=1.0))
        session_id = live._response.headers[SESSION_ID_HEADER]
        assert orjson.loads((await live.receive()).data)["type"] == "session.created"
        with pytest.raises(aiohttp.WSServerHandshakeError) as busy:
            await http.ws_connect(b.ws_url + "?model=gpt-realtime", headers=auth)
        assert busy.value.status == 429

        os.kill(a.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        a.proc.wait(10)
        admitted_after = None
        while time.monotonic() - killed < 30 * SLOW:
            try:
                ws = await http.ws_connect(b.ws_url + "?model=gpt-realtime", headers=auth)
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 429, exc
                await asyncio.sleep(0.2)
                continue
            admitted_after = time.monotonic() - killed
            await ws.close()
            break
        await live.close()
    assert admitted_after is not None, "never admitted again after the kill"
    assert admitted_after < 15 * SLOW, admitted_after  # the 3 s lease TTL, not much later
    deadline = time.monotonic() + 10 * SLOW  # the sweep may come just after the admission
    while (record := (await records(env, session_id))[0]).status != "completed":
        assert time.monotonic() < deadline, record
        await asyncio.sleep(0.2)
    assert (record.measurements.closed_by, record.measurements.close_reason) == (
        "server", "instance_lost"), record
    assert not record.billable  # no audio: decided on its checkpoint
    assert record.period == period_of()

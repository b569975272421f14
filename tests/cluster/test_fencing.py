"""Fencing of a paused instance, with two real `voxgate serve` processes on
one PostgreSQL database and one Redis admission (a fresh key prefix), short
TTLs and the shared echo provider (``voxgate_fault=echo``: every append is
answered at once by an audio delta carrying it, so each frame relayed shows
as a server event at the client).

A concurrency-3 account has 3 sessions streaming audio on A; A is paused
(SIGSTOP) for longer than the heartbeat TTL and the lease TTL; B's sweeper
completes A's sessions from their last checkpoints and, once A's leases
expired, B admits 3 sessions of the account; then A resumes (SIGCONT).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from dataclasses import dataclass, field

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from tests.cluster.test_two_processes import fresh_pg  # noqa: F401 - a fixture
from tests.conftest import SLOW, TEST_CATALOG
from tests.served import Served, load, new_key, serve, settings_env
from voxgate.proxy.ws_relay import SESSION_ID_HEADER
from voxgate.store.base import SessionFilter, period_of

REDIS_URL = "redis://127.0.0.1:6379/15"
CATALOG = TEST_CATALOG + """
[plans.trio]
name = "Trio"
sessions_included = 1000
concurrency = 3
requests_per_minute = 100000
projects = 1
"""
HEARTBEAT_INTERVAL_S = 0.5
HEARTBEAT_TTL_S = 2.0
LEASE_TTL_S = 3.0
CHUNK_MS = 100  # A's clients: 100 ms of audio every 100 ms (real time)
CHUNK = "A" * (CHUNK_MS * 48 * 4 // 3)  # base64 of 100 ms of 24 kHz PCM16 (4 800 bytes)
SMALL_CHUNK_MS = 20  # B's clients: 20 ms every 200 ms (they stay below the 5 s billable)
SMALL_CHUNK = "A" * (SMALL_CHUNK_MS * 48 * 4 // 3)


@dataclass
class Client:
    """One client session: what it sent and when it was served."""

    name: str
    ws: aiohttp.ClientWebSocketResponse
    session_id: str
    chunk: str
    chunk_ms: int
    every_s: float
    sent_ms: float = 0.0
    events: list[tuple[float, str, dict]] = field(default_factory=list)  # (monotonic s, type, event)
    closed_at: float | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._send()), asyncio.create_task(self._receive())]

    async def _send(self) -> None:
        message = orjson.dumps({"type": "input_audio_buffer.append", "audio": self.chunk}).decode()
        while not self.ws.closed:
            try:
                await self.ws.send_str(message)
            except (ConnectionError, RuntimeError):
                return
            self.sent_ms += self.chunk_ms
            await asyncio.sleep(self.every_s)

    async def _receive(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                event = orjson.loads(msg.data)
                self.events.append((time.monotonic(), event["type"], event))
            else:
                break
        self.closed_at = time.monotonic()

    def served(self) -> list[float]:
        """When it received a server event other than ``error``."""
        return [t for t, etype, _ in self.events if etype != "error"]

    async def close(self) -> None:
        await self.ws.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def pair(tmp_path, voice_url, fresh_pg):  # noqa: F811 - the fixture imported above
    """Two voxgate processes (A, B) on one fresh PostgreSQL database and one
    Redis prefix, with heartbeat TTL 2 s, lease TTL 3 s and the instance
    sweep every 0.5 s: → (env, a, b)."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    prefix = f"voxgate-test-{uuid.uuid4().hex[:8]}:"
    env = settings_env(
        tmp_path / "data", voice_url, catalog, database_url=fresh_pg(),
        admission_url=REDIS_URL, admission_prefix=prefix, drain_timeout_s="1",
        heartbeat_interval_s=str(HEARTBEAT_INTERVAL_S), heartbeat_ttl_s=str(HEARTBEAT_TTL_S),
        lease_ttl_s=str(LEASE_TTL_S), jobs__poll_s="0.5", jobs__lease_s="3",
        jobs__intervals_s=orjson.dumps({"instance_sweep": 0.5}).decode())
    await new_key(env, "free")  # creates the database before two processes open it
    started: list[Served] = []
    try:
        for n in "ab":
            started.append(await asyncio.to_thread(
                serve, {**env, "VOXGATE_INSTANCE_ID": f"node-{n}"}, tmp_path / f"serve-{n}.log"))
        yield env, started[0], started[1]
    finally:
        for served in started:
            if served.proc.poll() is None:
                os.kill(served.proc.pid, signal.SIGCONT)  # never leave one stopped
            served.stop()
        redis = Redis.from_url(REDIS_URL)
        keys = [k async for k in redis.scan_iter(match=prefix + "*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


async def connect(http: aiohttp.ClientSession, served: Served, key: str, name: str,
                  chunk: str, chunk_ms: int, every_s: float) -> Client:
    """A session on ``served`` (raises ``WSServerHandshakeError`` when
    refused), streaming once ``session.created`` came."""
    ws = await http.ws_connect(served.ws_url + "?model=gpt-realtime&voxgate_fault=echo",
                               headers={"Authorization": f"Bearer {key}"},
                               timeout=aiohttp.ClientWSTimeout(ws_close=2.0))
    first = await ws.receive(timeout=10 * SLOW)
    assert orjson.loads(first.data)["type"] == "session.created", first
    client = Client(name, ws, ws._response.headers[SESSION_ID_HEADER], chunk, chunk_ms, every_s)
    client.events.append((time.monotonic(), "session.created", {}))
    client.start()
    return client


async def completed(store, session_ids: list[str], deadline: float) -> list:
    """The records of ``session_ids`` once all are completed (by ``deadline``)."""
    while True:
        records = [await store.get_session(sid) for sid in session_ids]
        if all(r.status == "completed" for r in records):
            return records
        assert time.monotonic() < deadline, [(r.id, r.status) for r in records]
        await asyncio.sleep(0.1)


async def provisional(store, session_id: str) -> int:
    row = await store._one("SELECT provisional FROM sessions WHERE id = ?", (session_id,))
    return int(row[0])


def most_relayed_at_once(clients: list[Client]) -> int:
    """The most sessions relayed at one moment: each counts from its first
    to its last server event (``error`` excluded)."""
    edges = []
    for client in clients:
        served = client.served()
        if served:
            edges += [(served[0], 1), (served[-1], -1)]
    most = now = 0
    for _, step in sorted(edges, key=lambda e: (e[0], -e[1])):
        now += step
        most = max(most, now)
    return most


async def test_paused_instance_is_fenced_and_its_sessions_billed(pair):
    """At no moment more than 3 sessions of the account relayed (each client
    records when it was served); during the pause A's sessions are completed
    from their checkpoints (billable, audio within one checkpoint of what was
    streamed, ``instance_lost``, provisional); on resume A's sessions get an
    ``error`` event (``lease_expired``) then close 1011 before another frame
    is relayed, A's final records replace the provisional ones, each billable
    session counts once, and A registers anew under a new epoch."""
    env, a, b = pair
    account_id, _, key = await new_key(env, "trio")
    from voxgate.store import open_store

    store = open_store(load(env))
    await store.open()
    try:
        async with aiohttp.ClientSession() as http:
            on_a = [await connect(http, a, key, f"a{n}", CHUNK, CHUNK_MS, CHUNK_MS / 1000)
                    for n in range(3)]
            await asyncio.sleep(4.0)  # 4 s of audio each way: billable (> 5 s exchanged)
            with pytest.raises(aiohttp.WSServerHandshakeError) as busy:
                await connect(http, b, key, "b-early", SMALL_CHUNK, SMALL_CHUNK_MS, 0.2)
            assert busy.value.status == 429  # concurrency 3, all on A
            epoch_a = {i.id: i.epoch for i in await store.list_instances()}["node-a"]

            os.kill(a.proc.pid, signal.SIGSTOP)
            stopped_at = time.monotonic()
            sent_before_stop = {c.session_id: c.sent_ms for c in on_a}
            on_b: list[Client] = []
            try:
                # B admits the account's sessions once A's leases expired
                deadline = stopped_at + 20 * SLOW
                while len(on_b) < 3:
                    assert time.monotonic() < deadline, f"B admitted only {len(on_b)}"
                    try:
                        on_b.append(await connect(http, b, key, f"b{len(on_b)}", SMALL_CHUNK,
                                                  SMALL_CHUNK_MS, 0.2))
                    except aiohttp.WSServerHandshakeError as exc:
                        assert exc.status == 429, exc
                        await asyncio.sleep(0.2)
                admitted_after = time.monotonic() - stopped_at
                assert admitted_after > HEARTBEAT_TTL_S  # not before A's heartbeat expired
                with pytest.raises(aiohttp.WSServerHandshakeError) as busy:
                    await connect(http, b, key, "b-extra", SMALL_CHUNK, SMALL_CHUNK_MS, 0.2)
                assert busy.value.status == 429
                # B's sweeper completed A's sessions from their last checkpoints
                swept = await completed(store, [c.session_id for c in on_a], deadline)
                for record in swept:
                    m = record.measurements
                    streamed = sent_before_stop[record.id]
                    assert (m.closed_by, m.close_reason) == ("server", "instance_lost"), m
                    assert m.audio_in_ms >= streamed - HEARTBEAT_INTERVAL_S * 1000 - 300, (
                        m, streamed)
                    assert record.billable and record.reason == "billable", record
                    assert await provisional(store, record.id) == 1
                # paused longer than the heartbeat TTL + the lease TTL, B's sessions served
                await asyncio.sleep(max(1.0, HEARTBEAT_TTL_S + LEASE_TTL_S + 1.0
                                        - (time.monotonic() - stopped_at)))
                for client in on_a:  # A's clients keep streaming into the paused process
                    assert client.closed_at is None
            finally:
                os.kill(a.proc.pid, signal.SIGCONT)
            resumed_at = time.monotonic()

            async with asyncio.timeout(15 * SLOW):
                while any(c.closed_at is None for c in on_a):
                    await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # B's sessions go on being served
            for client in on_b:
                await client.close()
            for client in on_a:
                await client.close()

        # A's sessions: on resume an error event, then the close, nothing relayed before
        for client in on_a:
            after = [(etype, event) for t, etype, event in client.events if t >= resumed_at]
            assert [etype for etype, _ in after] == ["error"], (client.name, after)
            assert after[0][1]["error"]["code"] == "lease_expired", after
            assert client.ws.close_code == 1011, (client.name, client.ws.close_code)
            assert client.served()[-1] < resumed_at
        for client in on_b:
            assert client.served()[-1] > resumed_at  # B kept serving its sessions
        # at no moment more than 3 sessions of the account relayed
        assert most_relayed_at_once(on_a + on_b) == 3

        deadline = time.monotonic() + 20 * SLOW
        while await store.count_sessions(account_id, SessionFilter(status="active")):
            assert time.monotonic() < deadline, "sessions still active"
            await asyncio.sleep(0.1)
        for client in on_a:
            record = await store.get_session(client.session_id)
            m = record.measurements
            streamed = sent_before_stop[client.session_id]
            assert streamed > 3500
            # within one checkpoint (+ a margin) of what was streamed before the pause
            assert m.audio_in_ms >= streamed - HEARTBEAT_INTERVAL_S * 1000 - 300, (m, streamed)
            assert m.audio_in_ms <= client.sent_ms
            assert record.billable and record.reason == "billable", record
            # A's own final record replaced the provisional one (docs/database.md)
            assert (m.closed_by, m.close_code, m.close_reason) == ("server", 1011,
                                                                   "lease_expired"), m
            assert await provisional(store, record.id) == 0
        for client in on_b:
            record = await store.get_session(client.session_id)
            assert (record.status, record.billable, record.reason) == (
                "completed", False, "too_short"), record
        # each billable session counted once
        assert await store.count_sessions(account_id, SessionFilter(billable=True)) == 3
        usage = await store.get_usage(account_id, period_of())
        assert (usage.sessions, usage.billable_sessions) == (6, 3)
        # A registered anew under a new epoch after its heartbeat was refused
        deadline = time.monotonic() + 10 * SLOW
        while {i.id: i.epoch for i in await store.list_instances()}.get("node-a",
                                                                         epoch_a) == epoch_a:
            assert time.monotonic() < deadline, "A never registered anew"
            await asyncio.sleep(0.1)
        assert "registering anew" in a.stderr()
    finally:
        await store.close()

"""No session hangs with Redis admission and PostgreSQL: short sessions
closed by the client through a real `voxgate serve` (one process, and
``--workers 2``) each get their close answered, their record completed and
their concurrency lease freed in Redis.

Issue 19: a client's close cancelled the upstream→client task while it
awaited Redis (``rate_limits.updated`` after ``session.created``); redis-py
sometimes swallowed the cancellation and the task went back to reading the
provider forever — the close unanswered, the record ``active`` and its
lease renewed for good. The relay no longer relies on cancellation being
honoured (``voxgate.proxy.ws_relay``).

And the same with Redis stalled (a loopback TCP proxy holding every byte)
while a session reads its ``rate_limits.updated`` figures: the client's
close is answered while Redis is still stalled, its record completed; the
lease is freed once Redis answers again. And a fenced session (``Gateway.fence``:
its lease no longer provably valid) gets an ``error`` event
``lease_expired`` before its 1011 close, on a WebSocket and on a WebRTC
call's data channel.

Sessions use the shared local voice provider in echo mode
(``voxgate_fault=echo``): each ``input_audio_buffer.append`` opens a
response (``response.created``) and comes back at once as a
``response.output_audio.delta``; ``input_audio_buffer.commit`` ends it with
``response.done`` (after which voxgate sends the customer's
``rate_limits.updated``, read from Redis).
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
import uuid

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from tests.cluster.test_two_processes import fresh_pg  # noqa: F401 - fixture
from tests.conftest import SLOW, TEST_CATALOG
from tests.served import Served, load, new_key, serve, settings_env
from voxgate.proxy.ws_relay import SESSION_ID_HEADER, stop_tasks, within
from voxgate.store.base import SessionFilter

REDIS_URL = "redis://127.0.0.1:6379/15"
CATALOG = TEST_CATALOG + """
[plans.busy]
name = "Busy"
sessions_included = 100000
concurrency = 100
requests_per_minute = 1000000
projects = 1
"""
CONCURRENT = 64
CLOSE_WAIT_S = 5.0 * SLOW
"""How long a client waits for the answer to its close frame (the server
answers within 1 s; past this the close counts as unanswered)."""
SESSION_S = 20.0 * SLOW
"""Bound on one whole client session (connect to closed)."""
FINISHED_WAIT_S = 5.0 * SLOW
"""How long the records and leases may take to be all finished once every
client is done."""
# 200 ms of PCM16 24 kHz silence, base64
APPEND = orjson.dumps({"type": "input_audio_buffer.append",
                       "audio": base64.b64encode(bytes(9600)).decode()}).decode()
APPEND_40MS = orjson.dumps({"type": "input_audio_buffer.append",
                            "audio": base64.b64encode(bytes(1920)).decode()}).decode()
COMMIT = '{"type":"input_audio_buffer.commit"}'
# Where a random-close client closes: at once after the upgrade, right after
# session.created, after sending 0 to 4 of five 40 ms appends (their echoes on
# their way), after the first response.output_audio.delta of an append and
# commit (response.done on its way), or by dropping the TCP connection
# without a close frame after session.created.
RANDOM_KINDS = ("upgraded", "created", "mid_append", "mid_response", "dropped")


async def _served(tmp_path, voice_url, database_url: str, workers: int
                  ) -> tuple[dict[str, str], Served, str]:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    prefix = f"voxgate-test-{uuid.uuid4().hex[:8]}:"
    env = settings_env(tmp_path / "data", voice_url, catalog, admission_url=REDIS_URL,
                       admission_prefix=prefix, database_url=database_url,
                       drain_timeout_s="1")
    await new_key(env, "free")  # creates the database before the workers open it
    args = ("--workers", str(workers)) if workers > 1 else ()
    served = await asyncio.to_thread(serve, env, tmp_path / "serve.log", *args)
    return env, served, prefix


@pytest.fixture
async def voxgate(tmp_path, voice_url, fresh_pg):  # noqa: F811
    """A factory: ``await voxgate(workers)`` → (env, served, Redis key
    prefix) of a `voxgate serve` on a fresh PostgreSQL database with Redis
    admission; stopped and its Redis keys deleted after the test."""
    started: list[tuple[Served, str]] = []

    async def start(workers: int) -> tuple[dict[str, str], Served, str]:
        env, served, prefix = await _served(tmp_path, voice_url, fresh_pg(), workers)
        started.append((served, prefix))
        return env, served, prefix

    yield start
    redis = Redis.from_url(REDIS_URL)
    for served, prefix in started:
        served.stop()
        keys = [k async for k in redis.scan_iter(match=prefix + "*")]
        if keys:
            await redis.delete(*keys)
    await redis.aclose()


async def _until(ws: aiohttp.ClientWebSocketResponse, etype: str) -> None:
    """Read server events until one of type ``etype``."""
    while True:
        msg = await ws.receive()
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"closed before {etype}: {msg.type} {msg.data!r}")
        if orjson.loads(msg.data)["type"] == etype:
            return


async def _session(http: aiohttp.ClientSession, url: str, key: str, kind: str,
                   rng: random.Random) -> str:
    """One client session closed at ``kind``'s point → ``"answered"`` (the
    server answered the close frame with its code), ``"unanswered"`` (no close
    frame back within ``CLOSE_WAIT_S``) or ``"dropped"`` (the client dropped
    the connection: nothing to answer)."""
    ws = await http.ws_connect(url, headers={"Authorization": f"Bearer {key}"},
                               timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_WAIT_S))
    if kind != "upgraded":
        await _until(ws, "session.created")
    if kind == "short":
        await ws.send_str(APPEND)
    elif kind == "mid_append":  # 0 to 4 of five 40 ms appends sent, the echoes on their way
        for _ in range(rng.randrange(5)):
            await ws.send_str(APPEND_40MS)
    elif kind == "mid_response":
        await ws.send_str(APPEND)
        await ws.send_str(COMMIT)
        await _until(ws, "response.output_audio.delta")
    elif kind == "dropped":
        assert ws._response.connection is not None
        ws._response.connection.transport.abort()  # type: ignore[union-attr]
        return "dropped"
    await ws.close()
    return "answered" if ws.close_code == 1000 and ws.exception() is None else "unanswered"


async def _run(served: Served, key: str, kinds: list[str], seed: int) -> dict[str, int]:
    """Run one client per entry of ``kinds``, ``CONCURRENT`` at a time →
    how many ended each way."""
    rng = random.Random(seed)
    url = served.ws_url + "?model=gpt-realtime&voxgate_fault=echo"
    outcomes: dict[str, int] = {}
    queue = list(reversed(kinds))

    async def worker(http: aiohttp.ClientSession) -> None:
        while queue:
            kind = queue.pop()
            try:
                async with asyncio.timeout(SESSION_S):
                    outcome = await _session(http, url, key, kind, rng)
            except TimeoutError:
                outcome = "unanswered"
            except aiohttp.WSServerHandshakeError as exc:  # 429: leases leaked
                outcome = f"refused {exc.status}"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(worker(http) for _ in range(CONCURRENT)))
    return outcomes


async def _assert_all_finished(env: dict[str, str], prefix: str, account_id: str,
                               sessions: int) -> None:
    """Every record of the account completed (none ``active``), all
    ``sessions`` of them, and no lease of the account left in Redis, within
    ``FINISHED_WAIT_S`` (a dropped client's session ends when the server
    sees its connection gone)."""
    from voxgate.store import open_store

    store = open_store(load(env))
    await store.open()
    redis = Redis.from_url(REDIS_URL)
    try:
        deadline = time.monotonic() + FINISHED_WAIT_S
        while True:
            active = await store.count_sessions(account_id, SessionFilter(status="active"))
            total = await store.count_sessions(account_id)
            leases = await redis.zcard(f"{prefix}leases:{account_id}")
            if (active, leases) == (0, 0) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()
        await store.close()
    assert (active, total, leases) == (0, sessions, 0), \
        f"{active} active records of {total}, {leases} leases left"


@pytest.mark.parametrize("workers", [1, 2])
async def test_500_short_sessions_each_close_answered_record_completed_lease_freed(
        voxgate, workers):
    """500 sessions (connect, ``session.created``, one 200 ms append, close
    at once: the close lands while voxgate reads the customer's
    ``rate_limits.updated`` figures from Redis), 64 at a time: every close answered, every record
    completed, no lease left."""
    env, served, prefix = await voxgate(workers)
    account_id, _, key = await new_key(env, "busy")
    outcomes = await _run(served, key, ["short"] * 500, seed=0)
    assert outcomes == {"answered": 500}, outcomes
    await _assert_all_finished(env, prefix, account_id, 500)


@pytest.mark.parametrize("workers", [1, 2])
async def test_clients_closing_at_random_points_never_hang(voxgate, workers):
    """500 sessions, 64 at a time, each closed at a point a seeded RNG picks
    (``RANDOM_KINDS``): every close frame answered, every record completed,
    no lease left."""
    env, served, prefix = await voxgate(workers)
    account_id, _, key = await new_key(env, "busy")
    rng = random.Random(19 + workers)
    kinds = [rng.choice(RANDOM_KINDS) for _ in range(500)]
    outcomes = await _run(served, key, kinds, seed=19 + workers)
    dropped = kinds.count("dropped")
    assert outcomes == {"answered": 500 - dropped, "dropped": dropped}, outcomes
    await _assert_all_finished(env, prefix, account_id, 500)


class StallingProxy:
    """A loopback TCP proxy to Redis (127.0.0.1:6379) that, while stalled,
    holds every byte either way until ``resume()``."""

    def __init__(self) -> None:
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stall(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 6379)
        self._writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    await self.flowing.wait()
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def stop(self) -> None:
        self.resume()
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()


async def test_close_is_answered_and_recorded_while_redis_is_stalled(make_server):
    """In-process voxgate, Redis admission through a stalling proxy: Redis
    stalls right after the upgrade, so the relay's read of the customer's
    ``rate_limits.updated`` figures (after ``session.created``) and the
    lease's completion hang on it. The client's close is answered while
    Redis is still stalled and the record is completed; once Redis answers
    again the lease is freed."""
    proxy = StallingProxy()
    await proxy.start()
    prefix = f"voxgate-test-{uuid.uuid4().hex[:8]}:"
    try:
        server = await make_server(plan="roomy", admission_url=f"redis://127.0.0.1:{proxy.port}/15",
                                   admission_prefix=prefix, redis_pool_timeout_s=60)
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(
                server.ws_url + "?model=gpt-realtime&voxgate_fault=echo",
                headers={"Authorization": f"Bearer {server.key}"},
                timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_WAIT_S))
            session_id = ws._response.headers[SESSION_ID_HEADER]
            proxy.stall()
            await _until(ws, "session.created")
            await ws.close()
            answered_while_stalled = not proxy.flowing.is_set()
            assert (ws.close_code, ws.exception()) == (1000, None)
        assert answered_while_stalled
        record = await server.session(session_id)
        assert record.measurements.closed_by == "client"
        proxy.resume()
        admission = server.gateway.admission
        deadline = time.monotonic() + FINISHED_WAIT_S
        while await admission.in_flight(server.account_id) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert await admission.in_flight(server.account_id) == 0
    finally:
        await proxy.stop()
        redis = Redis.from_url(REDIS_URL)
        keys = [k async for k in redis.scan_iter(match=prefix + "*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


async def test_a_task_that_swallows_its_cancellation_does_not_hold_the_close():
    """What the relays build on: ``stop_tasks`` returns with a task that
    swallows its cancellation still running (left to end on its own), and
    ``within`` gives up on an awaitable that does."""
    release = asyncio.Event()

    async def stubborn() -> str:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                pass  # what redis-py 8.2 sometimes does
        return "ended"

    async with asyncio.timeout(10 * SLOW):
        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        await stop_tasks([task])
        assert not task.done()
        assert await within(stubborn(), 0.05) == (False, None)
        assert await within(asyncio.sleep(0, "now"), 5) == (True, "now")
        release.set()
        assert await task == "ended"


async def test_a_fenced_session_gets_an_error_event_then_1011(server):
    """``Gateway.fence`` on a live WebSocket session (what an instance does
    once its lease is no longer provably valid): the client gets a
    ``server_error`` ``lease_expired`` event, then close 1011; the record
    says the server closed it 1011, and the transport reports its sockets
    closed."""
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.ws_url + "?model=gpt-realtime",
                                   headers={"Authorization": f"Bearer {server.key}"})
        session_id = ws._response.headers[SESSION_ID_HEADER]
        await _until(ws, "session.created")
        active = server.gateway.active[session_id]
        assert active.transport_open is not None and active.transport_open()
        async with asyncio.timeout(10 * SLOW):
            await server.gateway.fence(active)
            events = []
            while (msg := await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                events.append(orjson.loads(msg.data))
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1011)
        errors = [e["error"] for e in events if e["type"] == "error"]
        assert [(e["type"], e["code"]) for e in errors] == [("server_error", "lease_expired")]
        assert not active.transport_open()
    record = await server.session(session_id)
    assert (record.measurements.closed_by, record.measurements.close_code) == ("server", 1011)


async def test_a_fenced_webrtc_call_gets_an_error_event_on_its_data_channel(make_server):
    """``Gateway.fence`` on a live WebRTC call: a ``server_error``
    ``lease_expired`` event on the data channel, then the call ends; the
    record says the server closed it 1011 and the call's transport reports
    itself closed."""
    from tests.webrtc.client import Client

    server = await make_server(webrtc={"host_addresses": ["127.0.0.1"],
                                       "ice_timeout_s": 5.0 * SLOW})
    client = Client(server.url, b"", then_silence=True)
    try:
        async with aiohttp.ClientSession() as http:
            await client.connect(http, server.key)
        await asyncio.wait_for(client.opened.wait(), 20 * SLOW)
        await client.wait_event("session.created", 10)
        assert client.session_id is not None
        active = server.gateway.active[client.session_id]
        assert active.transport_open is not None and active.transport_open()
        async with asyncio.timeout(10 * SLOW):
            await server.gateway.fence(active)
        error = (await client.wait_event("error", 5))["error"]
        assert (error["type"], error["code"]) == ("server_error", "lease_expired")
        for _ in range(100):  # the call's teardown closes the peer connection
            if not active.transport_open():
                break
            await asyncio.sleep(0.05)
        assert not active.transport_open()
    finally:
        await client.close()
    record = await server.session(client.session_id)
    assert (record.measurements.closed_by, record.measurements.close_code) == ("server", 1011)


@pytest.fixture
async def mute_provider():
    """A "provider" that accepts TCP connections and never answers the
    WebSocket handshake: ``(url, accepted writers)``."""
    accepted: list[asyncio.StreamWriter] = []

    async def mute(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    provider = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = provider.sockets[0].getsockname()[1]
    yield f"ws://127.0.0.1:{port}/v1/realtime", accepted
    provider.close()
    for writer in accepted:
        writer.close()


async def test_close_while_the_provider_handshake_stalls_is_answered(make_server, mute_provider):
    """A provider that never answers the WebSocket handshake (connect
    timeout 60 s): a client that closes right after its upgrade gets its
    close answered and its session recorded (closed by the client), without
    waiting for the provider."""
    url, accepted = mute_provider
    server = await make_server(upstream_url=url, upstream={"connect_timeout_s": 60})
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.ws_url + "?model=gpt-realtime",
                                   headers={"Authorization": f"Bearer {server.key}"},
                                   timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_WAIT_S))
        session_id = ws._response.headers[SESSION_ID_HEADER]
        async with asyncio.timeout(10 * SLOW):
            while not accepted:  # the provider's handshake under way
                await asyncio.sleep(0.01)
        await ws.close()
        assert (ws.close_code, ws.exception()) == (1000, None)
    record = await server.session(session_id)
    assert (record.measurements.closed_by, record.measurements.close_code) == ("client", 1000)


async def test_hangup_while_the_provider_handshake_stalls_ends_the_call(make_server,
                                                                       mute_provider):
    """The same for a WebRTC call: its hang-up is answered and the call
    recorded (closed by the client, ``hangup``) while the provider's
    handshake is still under way."""
    from tests.webrtc.client import Client

    url, accepted = mute_provider
    server = await make_server(upstream_url=url, upstream={"connect_timeout_s": 60},
                               webrtc={"host_addresses": ["127.0.0.1"],
                                       "ice_timeout_s": 5.0 * SLOW})
    client = Client(server.url, b"", then_silence=True)
    try:
        async with aiohttp.ClientSession() as http:
            await client.connect(http, server.key)
            async with asyncio.timeout(10 * SLOW):
                while not accepted:
                    await asyncio.sleep(0.01)
                async with http.post(server.url + client.location + "/hangup",
                                     headers={"Authorization": f"Bearer {server.key}"}) as resp:
                    assert resp.status == 200, await resp.text()
    finally:
        await client.close()
    assert client.session_id is not None
    record = await server.session(client.session_id)
    assert (record.measurements.closed_by, record.measurements.close_reason) == ("client", "hangup")

"""Redis stopped under a running `voxgate serve` (a redis-server of the test's
own, never the machine's): new sessions get 503 ``service_unavailable`` JSON
with ``Retry-After`` (never a 500), the live session carries on and is
recorded with its measurements, and once Redis is back admission is
consistent (a concurrency-1 account gets one session, not two)."""

from __future__ import annotations

import asyncio
import base64

import aiohttp
import pytest
from openai import AsyncOpenAI

from tests.conftest import SLOW
from tests.served import new_key, records, redis_server, serve, settings_env  # noqa: F401
from voxgate.proxy.ws_relay import SESSION_ID_HEADER

SECOND_OF_SILENCE = bytes(24000 * 2)  # 1 s of PCM16 24 kHz


async def _recv_until(conn, etype: str, timeout_s: float = 30.0):
    async with asyncio.timeout(timeout_s * SLOW):
        while (event := await conn.recv()).type != etype:
            pass
    return event


async def _refused(http: aiohttp.ClientSession, url: str, key: str) -> None:
    """Both ways to start a session answer 503 service_unavailable JSON."""
    auth = {"Authorization": f"Bearer {key}"}
    async with http.post(url + "/v1/realtime/client_secrets", headers=auth, json={}) as resp:
        body = await resp.json()
        assert resp.status == 503, body
        assert body["error"]["code"] == "service_unavailable"
        assert body["error"]["type"] == "server_error"
        assert int(resp.headers["Retry-After"]) >= 1
        assert resp.headers["x-should-retry"] == "true"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(url.replace("http", "ws") + "/v1/realtime?model=gpt-realtime",
                              headers=auth)
    assert refused.value.status == 503


async def test_redis_down_refuses_new_sessions_and_keeps_live_ones(
        tmp_path, voice_url, catalog_path, redis_server):  # noqa: F811
    env = settings_env(tmp_path / "data", voice_url, catalog_path,
                       admission_url=redis_server.url, redis_pool_timeout_s="1")
    _, _, key = await new_key(env, "free")  # concurrency 1
    served = serve(env, tmp_path / "serve.log")
    sdk = AsyncOpenAI(api_key=key, base_url=served.url + "/v1", max_retries=0)
    try:
        async with aiohttp.ClientSession() as http:
            async with sdk.realtime.connect(model="gpt-realtime") as conn:
                live = conn._connection.response.headers[SESSION_ID_HEADER]
                await _recv_until(conn, "session.created")

                redis_server.stop()
                await _refused(http, served.url, key)
                async with http.get(served.url + "/readyz") as resp:
                    body = await resp.json()
                    assert resp.status == 503
                    assert body["checks"]["redis"].startswith("unavailable"), body

                # the live session carries on: audio in, a whole response out
                await conn.input_audio_buffer.append(
                    audio=base64.b64encode(SECOND_OF_SILENCE).decode())
                await conn.conversation.item.create(item={
                    "type": "message", "role": "user",
                    "content": [{"type": "input_text", "text": "Say hello."}]})
                await conn.response.create()
                done = await _recv_until(conn, "response.done")
                assert done.response.status == "completed"
            # closed by the client while Redis is still down

            for _ in range(int(150 * SLOW)):  # recorded, though its lease cannot be freed yet
                (record,) = await records(env, live)
                if record.status == "completed":
                    break
                await asyncio.sleep(0.1)
            assert record.status == "completed"
            m = record.measurements
            assert m.closed_by == "client" and m.connected
            assert m.audio_in_ms == pytest.approx(1000, abs=1)
            assert m.responses_completed == 1

            redis_server.start()
            for _ in range(int(150 * SLOW)):
                async with http.get(served.url + "/readyz") as resp:
                    if resp.status == 200:
                        break
                await asyncio.sleep(0.1)
            assert resp.status == 200

            # admission consistent again: one session for a concurrency-1 account, not two
            async with sdk.realtime.connect(model="gpt-realtime") as again:
                await _recv_until(again, "session.created")
                with pytest.raises(aiohttp.WSServerHandshakeError) as second:
                    await http.ws_connect(served.ws_url + "?model=gpt-realtime",
                                          headers={"Authorization": f"Bearer {key}"})
                assert second.value.status == 429
        log = served.stderr()
        assert '" 500 ' not in log and "unhandled error" not in log, log[-3000:]  # no 500s
    finally:
        served.stop()


async def test_a_burst_beyond_the_pool_waits_for_a_connection(
        make_server, http, redis_server):  # noqa: F811
    """200 simultaneous mints through a pool of 2 Redis connections: every
    one is answered 200 (they wait for a connection), none 500."""
    server = await make_server(plan="roomy", admission_url=redis_server.url,
                               redis_max_connections=2, redis_pool_timeout_s=30)
    auth = {"Authorization": f"Bearer {server.key}"}

    async def mint() -> int:
        async with http.post(server.url + "/v1/realtime/client_secrets", headers=auth,
                             json={}) as resp:
            return resp.status

    statuses = await asyncio.gather(*(mint() for _ in range(200)))
    assert statuses.count(200) == 200, sorted(set(statuses))
    assert server.gateway.admission.redis.connection_pool.max_connections == 2


async def test_dependency_errors_become_service_unavailable(tmp_path):
    """Each adapter translates its dependency's "down or overloaded"
    exceptions into ``ServiceUnavailable`` where they are raised, chained
    from the original (the store's connection layer for the database, the
    Redis admission and the cluster's pub/sub for Redis); the edge's
    ``dependency_error`` then only passes those on (and a refused TCP
    connection): a raw driver error reaching it is not taken for one."""
    import sqlite3

    import aiortc.exceptions
    import redis.exceptions

    from voxgate.admission.redis import RedisAdmission
    from voxgate.errors import ServiceUnavailable, dependency_error
    from voxgate.proxy.cluster import Cluster
    from voxgate.store.connection import unavailable

    for exc in (sqlite3.OperationalError("database is locked"),
                sqlite3.OperationalError("disk I/O error")):
        err = unavailable(exc)
        assert isinstance(err, ServiceUnavailable) and err.message.startswith("the database"), exc
    assert unavailable(sqlite3.IntegrityError("unique")) is None
    # Redis down: the admission and the cluster raise ServiceUnavailable from redis-py's error
    dead = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    admission = RedisAdmission(dead, lease_ttl_s=30.0)
    try:
        with pytest.raises(ServiceUnavailable) as raised:
            await admission.usage("acct", "2026-12", lambda: None, 0.0)  # type: ignore[arg-type]
        assert isinstance(raised.value.__cause__, redis.exceptions.ConnectionError)
    finally:
        await admission.close()
    cluster = Cluster(dead, "i1", lambda _: None)
    try:
        with pytest.raises(ServiceUnavailable) as raised:
            await cluster._publish("voxgate:test", {"op": "ping"})
        assert isinstance(raised.value.__cause__, redis.exceptions.ConnectionError)
    finally:
        await cluster.redis.aclose()
    # the edge: translated errors pass, refused connections too, nothing else
    for exc in (ServiceUnavailable("Redis is unavailable; retry shortly"),
                ConnectionRefusedError(111, "refused")):
        err = dependency_error(exc)
        assert isinstance(err, ServiceUnavailable), exc
        assert err.status == 503 and err.code == "service_unavailable" and not err.permanent
        assert "111" not in err.message
    for exc in (ValueError("x"), KeyError("k"), redis.exceptions.ResponseError("WRONGTYPE"),
                redis.exceptions.ConnectionError("raw"), sqlite3.IntegrityError("unique"),
                aiortc.exceptions.InternalError("sctp")):
        assert dependency_error(exc) is None, exc

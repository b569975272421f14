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


def test_dependency_errors_become_service_unavailable():
    """The edge's translation (voxgate.errors.dependency_error) of real
    exceptions of Redis, the database and aiortc; anything else is not one."""
    import sqlite3

    import aiortc.exceptions
    import redis.exceptions

    from voxgate.errors import ServiceUnavailable, dependency_error

    for exc, names in ((redis.exceptions.ConnectionError("refused"), "Redis"),
                       (redis.exceptions.TimeoutError("slow"), "Redis"),
                       (redis.exceptions.MaxConnectionsError("pool"), "Redis"),
                       (sqlite3.OperationalError("database is locked"), "the database"),
                       (aiortc.exceptions.InternalError("sctp"), "WebRTC media"),
                       (ConnectionRefusedError(111, "refused"), "a backing service")):
        err = dependency_error(exc)
        assert isinstance(err, ServiceUnavailable), exc
        assert err.status == 503 and err.code == "service_unavailable" and not err.permanent
        assert err.message.startswith(names) and "refused" not in err.message
    for exc in (ValueError("x"), KeyError("k"), redis.exceptions.ResponseError("WRONGTYPE"),
                sqlite3.IntegrityError("unique")):
        assert dependency_error(exc) is None, exc

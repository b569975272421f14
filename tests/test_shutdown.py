"""Graceful shutdown of a real `voxgate serve` process: SIGTERM with a live
WebSocket session (openai SDK) and a live WebRTC call (aiortc client).

During the drain readiness fails and new sessions are refused with 503,
while the live ones go on; after ``drain_timeout_s`` each gets an ``error``
event and close 1001 "server shutting down"; every record is completed
(``closed_by`` server, code 1001, reason ``shutdown``, its real
measurements); the process exits 0."""

from __future__ import annotations

import asyncio
import base64
import time

import aiohttp
import pytest
import websockets
from openai import AsyncOpenAI

from tests.conftest import SLOW
from tests.served import new_key, records, serve, settings_env
from tests.webrtc.client import Client
from voxgate.proxy.ws_relay import SESSION_ID_HEADER

DRAIN_S = 3.0
SECOND_OF_SILENCE = bytes(24000 * 2)  # 1 s of PCM16 24 kHz


@pytest.fixture
def env(tmp_path, voice_url, catalog_path):
    return settings_env(tmp_path / "data", voice_url, catalog_path,
                        drain_timeout_s=str(DRAIN_S))


async def test_sigterm_drains_then_closes_live_sessions_with_1001(env, tmp_path):
    _, _, key = await new_key(env, "roomy")
    served = serve(env, tmp_path / "serve.log")
    try:
        await _drain_and_close(served, key)
    finally:
        served.stop()


async def _drain_and_close(served, key: str) -> None:
    sdk = AsyncOpenAI(api_key=key, base_url=served.url + "/v1", max_retries=0)
    auth = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as http, \
            sdk.realtime.connect(model="gpt-realtime") as conn:
        ws_session = conn._connection.response.headers[SESSION_ID_HEADER]
        assert (await conn.recv()).type == "session.created"
        await conn.input_audio_buffer.append(audio=base64.b64encode(SECOND_OF_SILENCE).decode())

        call = Client(served.url, b"", then_silence=True)
        await call.connect(http, key)
        await asyncio.wait_for(call.opened.wait(), 20 * SLOW)
        await call.wait_event("session.created")

        async with http.get(served.url + "/readyz") as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["status"] == "ready"

        served.terminate()
        sigterm = time.monotonic()
        await asyncio.sleep(0.3)  # the signal is handled

        # draining: not ready, no new sessions, the live ones go on
        async with http.get(served.url + "/readyz") as resp:
            body = await resp.json()
            assert resp.status == 503, body
            assert body["checks"]["shutdown"] == "draining"
            assert resp.headers["Retry-After"] == "1"
        async with http.get(served.url + "/healthz") as resp:
            assert resp.status == 200  # alive
        async with http.post(served.url + "/v1/realtime/client_secrets", headers=auth,
                             json={}) as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == "service_unavailable"
            assert int(resp.headers["Retry-After"]) >= 1
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(served.ws_url + "?model=gpt-realtime", headers=auth)
        assert refused.value.status == 503
        late = Client(served.url, b"")
        resp, body = await late.connect(http, key, expect=503)
        assert "service_unavailable" in body
        await late.close()
        await conn.input_audio_buffer.append(audio=base64.b64encode(SECOND_OF_SILENCE).decode())

        # after the drain: an error event, then close 1001 with a reason
        async with asyncio.timeout((DRAIN_S + 10) * SLOW):
            event = await conn.recv()
            while event.type != "error":  # session.created's rate_limits.updated, ...
                event = await conn.recv()
            assert event.error.code == "service_unavailable"
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                while True:
                    await conn.recv()
        ended = time.monotonic() - sigterm
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001
        assert closed.value.rcvd.reason == "server shutting down"
        assert ended >= DRAIN_S - 0.5, ended

        error = await call.wait_event("error", 10)
        assert error["error"]["code"] == "service_unavailable"
        await asyncio.wait_for(call.closed.wait(), 10 * SLOW)
        await call.close()

    assert await asyncio.to_thread(served.wait, 30) == 0, served.stderr()[-3000:]
    ws_record, rtc_record = await records(served.env, ws_session, call.session_id)
    for record in (ws_record, rtc_record):
        assert record is not None and record.status == "completed"
        m = record.measurements
        assert (m.closed_by, m.close_code, m.close_reason) == ("server", 1001, "shutdown"), m
        assert m.connected
        assert m.duration_ms >= (DRAIN_S - 0.5) * 1000
    assert ws_record.measurements.audio_in_ms == pytest.approx(2000, abs=1)
    assert rtc_record.measurements.ice_connected_ms is not None


async def test_a_second_sigterm_closes_live_sessions_at_once(tmp_path, voice_url, catalog_path):
    env = settings_env(tmp_path / "data", voice_url, catalog_path, drain_timeout_s="60")
    _, _, key = await new_key(env, "roomy")
    served = serve(env, tmp_path / "serve.log")
    sdk = AsyncOpenAI(api_key=key, base_url=served.url + "/v1", max_retries=0)
    try:
        async with sdk.realtime.connect(model="gpt-realtime") as conn:
            session_id = conn._connection.response.headers[SESSION_ID_HEADER]
            assert (await conn.recv()).type == "session.created"
            served.terminate()
            await asyncio.sleep(0.5)  # draining, for up to 60 s
            started = time.monotonic()
            served.terminate()
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                async with asyncio.timeout(10 * SLOW):
                    while True:
                        await conn.recv()
            assert time.monotonic() - started < 5 * SLOW
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert await asyncio.to_thread(served.wait, 30) == 0, served.stderr()[-3000:]
        (record,) = await records(env, session_id)
        assert (record.measurements.close_code, record.measurements.close_reason) == (
            1001, "shutdown")
    finally:
        served.stop()


async def test_sigterm_without_sessions_exits_at_once(tmp_path, voice_url, catalog_path):
    env = settings_env(tmp_path / "data", voice_url, catalog_path, drain_timeout_s="60")
    served = serve(env, tmp_path / "serve.log")
    try:
        started = time.monotonic()
        served.terminate()
        assert await asyncio.to_thread(served.wait, 40) == 0, served.stderr()[-3000:]
        assert time.monotonic() - started < 30  # nothing to wait for: not the 60 s drain
    finally:
        served.stop()


async def test_readyz_names_a_dependency_that_is_down(tmp_path, voice_url, catalog_path):
    env = settings_env(tmp_path / "data", voice_url, catalog_path,
                       admission_url="redis://127.0.0.1:1/0", redis_pool_timeout_s="1")
    served = serve(env, tmp_path / "serve.log")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(served.url + "/readyz") as resp:
                body = await resp.json()
                assert resp.status == 503
                assert body["checks"]["database"] == "ok"
                assert body["checks"]["redis"].startswith("unavailable"), body
            async with http.get(served.url + "/healthz") as resp:
                assert resp.status == 200
    finally:
        served.stop()

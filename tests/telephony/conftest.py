"""Fixtures for phone calls: a voxgate server with the telephony routes, a
recording proxy in front of the local voice provider (what voxgate sent
upstream, as the provider received it), and real speech as 8 kHz μ-law."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from tests.conftest import SPEECH, free_port, merge_settings, start_server
from voxgate.proxy import telephony
from voxgate.proxy.telephony.twilio import TWILIO_PATH
from voxgate.voice.audio import load_pcm16, ulaw_encode

PLUGIN = "voxgate.proxy.telephony"


def _setup_once(app: web.Application) -> None:
    """``telephony.setup`` unless the composition root already added the
    route (once the lead wires it there)."""
    if not any(getattr(r.resource, "canonical", None) == TWILIO_PATH for r in app.router.routes()):
        telephony.setup(app)


@pytest_asyncio.fixture
async def make_phone_server(tmp_path, voice_url, catalog_path, monkeypatch):
    """Factory: ``await make_phone_server(plan="tiny", upstream_url=None,
    **settings overrides)``: voxgate with ``GET /v1/telephony/twilio``."""
    from voxgate import server as server_module

    monkeypatch.setitem(server_module.PLUGINS, PLUGIN, _setup_once)
    plugins = tuple(dict.fromkeys((*server_module.PLUGINS, PLUGIN)))
    servers = []

    async def factory(plan: str = "tiny", upstream_url: str | None = None, **overrides):
        base = {
            "data_dir": str(tmp_path / f"data{len(servers)}"),
            "catalog": str(catalog_path),
            "upstream": {"provider": "local", "url": upstream_url or voice_url,
                         "connect_timeout_s": 5.0},
        }
        srv = await start_server(merge_settings(base, overrides), plan, plugins=plugins)
        servers.append(srv)
        return srv

    yield factory
    for srv in servers:
        await srv.runner.cleanup()


def twilio_url(server) -> str:
    return server.url.replace("http://", "ws://") + TWILIO_PATH


class Recorder:
    """A WebSocket proxy in front of the provider: relays both ways as is
    and keeps every JSON event voxgate sent (``sent``) and the provider
    answered (``answered``)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.sent: list[dict] = []
        self.answered: list[dict] = []
        self.url = ""
        self.voxgate_side: list[web.WebSocketResponse] = []

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        client = web.WebSocketResponse()
        await client.prepare(request)
        self.voxgate_side.append(client)
        async with aiohttp.ClientSession() as http, http.ws_connect(
                f"{self.target}?{request.query_string}",
                headers={"Authorization": request.headers.get("Authorization", "")}) as up:

            async def pipe(src, dst, log):
                async for msg in src:
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        break
                    log.append(orjson.loads(msg.data))
                    await dst.send_str(msg.data)
                await dst.close()

            tasks = [asyncio.create_task(pipe(client, up, self.sent)),
                     asyncio.create_task(pipe(up, client, self.answered))]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
        return client

    def types_sent(self) -> list[str]:
        return [e.get("type") for e in self.sent]

    async def fail(self, code: int = 1011, reason: bytes = b"provider failure") -> None:
        """The provider closes its sessions with ``code`` (a failure)."""
        for ws in self.voxgate_side:
            await ws.close(code=code, message=reason)


@pytest_asyncio.fixture
async def recorder(voice_url):
    rec = Recorder(voice_url)
    app = web.Application()
    app.router.add_get("/v1/realtime", rec.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    rec.url = f"ws://127.0.0.1:{port}/v1/realtime"
    yield rec
    await runner.cleanup()


def speech_ulaw(name: str) -> bytes:
    """A speech sample of ``tests/data`` as 8 kHz μ-law."""
    return ulaw_encode(load_pcm16(SPEECH / name, 8000))


@pytest.fixture(scope="session")
def question_ulaw() -> bytes:
    """librivox-0880.wav (3.0 s of speech) as 8 kHz μ-law."""
    return speech_ulaw("librivox-0880.wav")


@pytest.fixture(scope="session")
def jfk_ulaw() -> bytes:
    """jfk.flac (11.0 s) as 8 kHz μ-law."""
    return speech_ulaw("jfk.flac")


@pytest.fixture(scope="session")
def barge_ulaw() -> bytes:
    """goforward (2.8 s, "go forward ten meters") as 8 kHz μ-law."""
    return speech_ulaw("goforward-16k-s16le.raw")


@pytest_asyncio.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session

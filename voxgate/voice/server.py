"""The local OpenAI-Realtime-compatible voice provider: an aiohttp WebSocket
server speaking the GA Realtime protocol
(https://platform.openai.com/docs/api-reference/realtime-client-events and
.../realtime-server-events).

Routes:

- ``GET /v1/realtime?model=M`` (WebSocket). Needs ``Authorization: Bearer
  <anything>`` (or the browser subprotocol ``openai-insecure-api-key.<key>``):
  401 JSON error without it. ``model`` must start with ``gpt-`` or be
  ``voxgate-local`` (default ``gpt-realtime``); otherwise HTTP 400
  ``{"error": {"type": "invalid_request_error", "code": "model_not_found",
  "param": "model", ...}}`` before the upgrade.
- ``GET /healthz`` → ``{"status": "ok", "sessions": N}``.

Per session (:class:`voxgate.voice.realtime.RealtimeSession`, handed the
provider's :class:`voxgate.voice.engines.Engines`): server VAD
(webrtcvad), STT (PocketSphinx, in worker processes), a responder
(``assistant`` / ``chat`` / ``echo``) and TTS (Piper, in threads), streamed as
``response.output_audio.delta`` events. Fault injection is described in
:mod:`voxgate.voice.faults`.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from aiohttp import web

from voxgate.config import VoiceSettings
from voxgate.errors import AuthenticationError, InvalidRequest, error_body
from voxgate.voice.engines import ChatUpstream, Engines
from voxgate.voice.faults import Faults, parse_faults
from voxgate.voice.realtime import RealtimeSession
from voxgate.voice.stt import shared_recognizer
from voxgate.voice.tts import shared_synthesizer

__all__ = ["VoiceProvider", "serve_forever", "LOCAL_MODEL", "FAULT_HEADER", "FAULT_QUERY"]

log = logging.getLogger(__name__)

LOCAL_MODEL = "voxgate-local"
DEFAULT_MODEL = "gpt-realtime"
FAULT_QUERY = "voxgate_fault"
FAULT_HEADER = "X-Voxgate-Fault"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class VoiceProvider:
    """The provider: models, an aiohttp app, and the listening site.

    Models are loaded once per process (shared by every provider and
    session); :meth:`start` waits for them unless ``responder`` is ``echo``,
    in which case they load on the first session that needs them.
    """

    def __init__(self, settings: VoiceSettings) -> None:
        self.settings = settings
        self.recognizer = shared_recognizer(settings.workers)
        self.synthesizer = shared_synthesizer()
        self.sessions: set[RealtimeSession] = set()
        self.url: str | None = None
        self.model_load_s: float | None = None
        self.http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._models_task: asyncio.Future[None] | None = None

    # -- lifecycle -----------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application (routes ``/v1/realtime``, ``/healthz``)."""
        app = web.Application()
        app.router.add_get("/v1/realtime", self._realtime)
        app.router.add_get("/healthz", self._healthz)
        return app

    async def ensure_models(self) -> None:
        """Load STT and TTS models (once, off the event loop, in parallel)."""
        if self._models_task is None:
            self._models_task = asyncio.ensure_future(self._load_models())
        await asyncio.shield(self._models_task)

    async def _load_models(self) -> None:
        t0 = time.perf_counter()
        await asyncio.gather(
            asyncio.to_thread(self.recognizer.start), asyncio.to_thread(self.synthesizer.load)
        )
        self.model_load_s = time.perf_counter() - t0
        log.info("voice models loaded in %.2f s", self.model_load_s)

    async def start(self, host: str | None = None, port: int | None = None) -> str:
        """Load models (unless echo), listen, return the WebSocket URL, e.g.
        ``ws://127.0.0.1:43121/v1/realtime``. ``port`` 0 picks a free port."""
        host = host if host is not None else self.settings.host
        port = port if port is not None else self.settings.port
        if self.settings.responder != "echo":
            await self.ensure_models()
        self.http = aiohttp.ClientSession()
        self._runner = web.AppRunner(self.app(), handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"ws://{shown}:{bound_port}/v1/realtime"
        return self.url

    async def stop(self) -> None:
        """Close every session (code 1001), stop listening. Models stay loaded."""
        for session in list(self.sessions):
            await session.shutdown()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.http is not None:
            await self.http.close()
            self.http = None

    def engines(self) -> Engines:
        """What a new session is handed: this provider's STT, TTS, model
        loading, responder settings and (``chat`` responder with a
        ``chat_url``, once started) the chat upstream."""
        s = self.settings
        chat = None
        if s.responder == "chat" and s.chat_url and self.http is not None:
            chat = ChatUpstream(http=self.http, url=s.chat_url, model=s.chat_model,
                                api_key=s.chat_api_key.get_secret_value() if s.chat_api_key else None)
        return Engines(recognizer=self.recognizer, synthesizer=self.synthesizer, ensure_models=self.ensure_models,
                       responder=s.responder, faults_enabled=s.faults_enabled, chat=chat)

    # -- handlers ------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "sessions": len(self.sessions)})

    async def _realtime(self, request: web.Request) -> web.StreamResponse:
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        auth = request.headers.get("Authorization", "")
        has_key = (auth.startswith("Bearer ") and auth[7:].strip()) or any(
            p.startswith("openai-insecure-api-key.") and len(p) > 24 for p in protocols
        )
        if not has_key:
            err = AuthenticationError(
                "You didn't provide an API key. Provide it in an Authorization header "
                "(Authorization: Bearer YOUR_KEY).",
                code="missing_api_key",
            )
            return _json_error(err)
        model = request.query.get("model", DEFAULT_MODEL)
        if not (model.startswith("gpt-") or model == LOCAL_MODEL):
            return _json_error(InvalidRequest(
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found", param="model",
            ))
        try:
            faults = parse_faults(request.query.get(FAULT_QUERY)).merge(
                parse_faults(request.headers.get(FAULT_HEADER))
            )
        except ValueError as exc:
            if self.settings.faults_enabled:
                return _json_error(InvalidRequest(str(exc), code="invalid_value", param=FAULT_QUERY))
            faults = Faults()
        if not self.settings.faults_enabled:
            # Echo is a responder mode, not a fault: always honoured.
            faults = Faults(echo=faults.echo)
        ws = web.WebSocketResponse(
            protocols=("realtime",), max_msg_size=MAX_MESSAGE_BYTES, compress=False, autoping=True
        )
        await ws.prepare(request)
        session = RealtimeSession(self.engines(), ws, request, model=model, faults=faults)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
        return ws


def _json_error(err: InvalidRequest | AuthenticationError) -> web.Response:
    return web.Response(status=err.status, body=error_body(err), content_type="application/json")


async def serve_forever(settings: VoiceSettings, host: str, port: int) -> None:
    """Run a provider until cancelled (``voxgate voice serve``)."""
    provider = VoiceProvider(settings)
    url = await provider.start(host, port)
    log.info("voice provider listening on %s", url)
    print(f"voxgate voice provider: {url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await provider.stop()

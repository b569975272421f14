"""The browser voice client: a static page that calls voxgate over WebRTC.

Routes:

- ``GET  /voice`` — the page (``voxgate/web/voice/index.html``); plain ES
  modules under ``GET /voice/static/…``, no build step.
- ``POST /voice/demo-key`` — mints an ephemeral key for the demo project
  (its API key is ``<data_dir>/demo_api_key``, written by ``ensure_demo``),
  with ``ice_servers``, in the ``POST /v1/realtime/client_secrets`` shape.
  Served only when ``web.demo_page`` is true (local use: anyone who can reach
  the route can spend the demo project's sessions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from voxgate.errors import NotFound
from voxgate.proxy.auth import resolve
from voxgate.proxy.http import json_response
from voxgate.proxy.tokens import mint

__all__ = ["setup", "STATIC_DIR"]

STATIC_DIR = Path(__file__).parent / "voice"
DEMO_SESSION: dict[str, Any] = {
    "type": "realtime",
    "instructions": "You are voxgate's demo voice assistant. Answer briefly.",
    # a longer pause before the turn ends: fewer replies cut into by the next phrase
    "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 800}}},
}


def setup(app: web.Application) -> None:
    app.router.add_get("/voice", voice_page)
    app.router.add_static("/voice/static/", STATIC_DIR, append_version=False)
    app.router.add_post("/voice/demo-key", demo_key)


async def voice_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html",
                            headers={"Cache-Control": "no-cache"})


async def demo_key(request: web.Request) -> web.Response:
    """Mint an ephemeral key for the demo project.

    Raises:
        NotFound: ``web.demo_page`` is off, or there is no demo project.
        RateLimited, QuotaExceeded (429): as ``client_secrets``.
    """
    from voxgate.proxy.app import DEMO_KEY_FILE, GATEWAY

    gw = request.app[GATEWAY]
    settings = gw.settings
    if not settings.web.demo_page:
        raise NotFound("the demo page is disabled (web.demo_page = false)")
    try:
        api_key = (Path(settings.data_dir) / DEMO_KEY_FILE).read_text().strip()
    except OSError as exc:
        raise NotFound("there is no demo project on this server") from exc
    principal = await resolve(gw.store, api_key, allow_ephemeral=False)
    body = await mint(request.app, principal, DEMO_SESSION, settings.tokens.default_ttl_s)
    return json_response(body, headers={"Cache-Control": "no-store"})

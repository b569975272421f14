"""The browser voice client: a static page that calls voxgate over WebRTC.

Routes:

- ``GET  /voice`` — the page (``voxgate/web/voice/index.html``); plain ES
  modules under ``GET /voice/static/…``, no build step.
- ``POST /voice/demo-key`` — mints an ephemeral key for the demo project
  (its API key is ``<data_dir>/demo_api_key``, written by ``ensure_demo``),
  with ``ice_servers``, in the ``POST /v1/realtime/client_secrets`` shape.
  It needs no credentials, so anyone who can reach it can spend the demo
  project's sessions: it exists only when the demo is on (voxgate listens
  on loopback, ``settings.host`` ``127.0.0.1``, ``::1`` or ``localhost``,
  or the operator set ``demo = true``) and ``web.demo_page`` is not false
  (``demo_page_enabled``). At most
  ``DashboardLimits.DEMO_KEYS_PER_MIN`` keys per client IP per minute
  (429 with ``Retry-After`` beyond).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from aiohttp import web

from voxgate.errors import NotFound, RateLimited
from voxgate.proxy.auth import resolve
from voxgate.proxy.http import json_response
from voxgate.proxy.tokens import mint
from voxgate.web.security import DashboardLimits, SlidingWindow

__all__ = ["setup", "STATIC_DIR", "demo_page_enabled", "DEMO_KEY_LIMIT"]

DEMO_KEY_LIMIT = web.AppKey("voxgate.web.demo_key_limit", SlidingWindow)

STATIC_DIR = Path(__file__).parent / "voice"
DEMO_SESSION: dict[str, Any] = {
    "type": "realtime",
    "instructions": "You are voxgate's demo voice assistant. Answer briefly.",
    # a longer pause before the turn ends: fewer replies cut into by the next phrase
    "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 800}}},
}


def demo_page_enabled(settings: Any) -> bool:
    """Whether ``POST /voice/demo-key`` exists, from the ``Settings``.

    ``web.demo_page`` true or false forces it; unset (the default), only
    when the demo is on (``settings.demo_enabled``: ``demo`` unset means
    voxgate listens on loopback, ``host`` ``127.0.0.1``, ``::1`` or
    ``localhost``).
    """
    value = settings.web.demo_page
    return bool(settings.demo_enabled) if value is None else bool(value)


def setup(app: web.Application) -> None:
    app[DEMO_KEY_LIMIT] = SlidingWindow(DashboardLimits.DEMO_KEYS_PER_MIN, 60.0)
    app.router.add_get("/voice", voice_page)
    app.router.add_static("/voice/static/", STATIC_DIR, append_version=False)
    app.router.add_post("/voice/demo-key", demo_key)


async def voice_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html",
                            headers={"Cache-Control": "no-cache"})


async def demo_key(request: web.Request) -> web.Response:
    """Mint an ephemeral key for the demo project.

    Raises:
        NotFound: the demo page is off (``demo_page_enabled``), or there is
            no demo project.
        RateLimited (429, ``Retry-After``): too many keys for this client IP,
            or as ``client_secrets``.
        QuotaExceeded (429): as ``client_secrets``.
    """
    from voxgate.proxy.keys import DEMO_KEY_FILE, GATEWAY

    gw = request.app[GATEWAY]
    settings = gw.settings
    if not demo_page_enabled(settings):
        raise NotFound("the demo page is disabled (web.demo_page, or voxgate does not listen "
                       "on loopback only)")
    wait = request.app[DEMO_KEY_LIMIT].hit(request.remote or "unknown", time.time())
    if wait:
        raise RateLimited(f"too many demo keys from this address: retry in {wait:.0f} s",
                          retry_after_s=wait)
    try:
        api_key = (Path(settings.data_dir) / DEMO_KEY_FILE).read_text().strip()
    except OSError as exc:
        raise NotFound("there is no demo project on this server") from exc
    principal = await resolve(gw.store, api_key, allow_ephemeral=False)
    body = await mint(request.app, principal, DEMO_SESSION, settings.tokens.default_ttl_s)
    return json_response(body, headers={"Cache-Control": "no-store"})

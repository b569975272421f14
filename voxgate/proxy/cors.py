"""CORS for the routes a browser calls with an ephemeral key (Fetch
standard, https://fetch.spec.whatwg.org/#http-cors-protocol).

OpenAI's WebRTC guide posts the SDP offer from the app's own page, so
``POST /v1/realtime/calls`` (and its ``OPTIONS`` preflight), the call's own
routes, ``GET /v1/realtime/ice_servers`` and the WebSocket upgrade of
``GET /v1/realtime`` answer any origin, as OpenAI does. A project that lists
allowed origins has its ephemeral keys refused from other origins by
``voxgate.proxy.auth.authenticate`` (403 ``origin_not_allowed``), after the
key is known; a preflight carries no key, so it is always answered.

Routes that take only a project API key (``client_secrets``, sessions,
billing) get no CORS headers: those keys are server-side credentials, and a
browser page must never hold one.
"""

from __future__ import annotations

import re

from aiohttp import web

__all__ = ["setup", "is_browser_path", "EXPOSED_HEADERS"]

_EXACT = frozenset({"/v1/realtime", "/v1/realtime/calls", "/v1/realtime/ice_servers"})
_PREFIX = "/v1/realtime/calls/"
ALLOWED_METHODS = "GET, POST, DELETE, OPTIONS"
DEFAULT_HEADERS = "Authorization, Content-Type, OpenAI-Beta, OpenAI-Project"
EXPOSED_HEADERS = "Location, Retry-After, X-Voxgate-Session-Id, X-Request-Id"
MAX_AGE_S = 600
_TOKEN_LIST = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+(\s*,\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*$")


def is_browser_path(path: str) -> bool:
    return path in _EXACT or path.startswith(_PREFIX)


def setup(app: web.Application) -> None:
    """Answer preflights and add CORS headers to every response of the
    browser routes (errors included, so a page can read a 403 or 429)."""
    app.middlewares.append(_preflight)
    app.on_response_prepare.append(_add_headers)


@web.middleware
async def _preflight(request: web.Request, handler) -> web.StreamResponse:
    if (request.method == "OPTIONS" and is_browser_path(request.path)
            and "Origin" in request.headers
            and "Access-Control-Request-Method" in request.headers):
        asked = request.headers.get("Access-Control-Request-Headers", "").strip()
        allow_headers = asked if asked and _TOKEN_LIST.match(asked) else DEFAULT_HEADERS
        return web.Response(status=204, headers={
            "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": allow_headers,
            "Access-Control-Max-Age": str(MAX_AGE_S),
        })
    return await handler(request)


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    origin = request.headers.get("Origin")
    if origin is None or not is_browser_path(request.path):
        return
    headers = response.headers
    headers["Access-Control-Allow-Origin"] = origin
    headers.add("Vary", "Origin")
    if request.method != "OPTIONS":
        headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS

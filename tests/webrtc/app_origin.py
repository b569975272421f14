"""The customer's own web app, on another loopback origin than voxgate (a
second port, so the browser's CORS checks are real): it serves its pages
and mints ephemeral keys server-side with its project key, as an app's
backend does (``GET /token``)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from aiohttp import web

from tests.conftest import ROOT, free_port

PAGES = Path(__file__).parent / "pages"
AGENTS_BUNDLE = ROOT / "tests" / "js" / "dist" / "agents-realtime.js"  # scripts/js-bundle.sh
AGENTS_PAGE = ROOT / "tests" / "js" / "agents-page.js"


class AppOrigin:
    """Serves ``/<page>.html`` from ``pages/`` (``{{VOXGATE}}`` and other
    ``{{NAME}}`` placeholders filled in), ``/token``, and the Agents SDK
    bundle (``/agents-realtime.js``) with its page script (``/agents-page.js``)."""

    def __init__(self, voxgate_url: str, project_key: str, session: dict | None = None,
                 **values: str) -> None:
        self.voxgate_url = voxgate_url
        self.project_key = project_key
        self.session = session or {"type": "realtime", "model": "gpt-realtime"}
        self.values = {"VOXGATE": voxgate_url, **values}
        self.minted: list[dict] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> AppOrigin:
        app = web.Application()
        app.router.add_get("/token", self._token)
        app.router.add_get("/agents-realtime.js", self._bundle)
        app.router.add_get("/agents-page.js", self._agents_page)
        app.router.add_get("/{page}.html", self._page)
        app.router.add_get("/helpers.js", self._helpers)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _page(self, request: web.Request) -> web.Response:
        path = PAGES / f"{request.match_info['page']}.html"
        if not path.is_file():
            raise web.HTTPNotFound()
        text = path.read_text()
        for name, value in self.values.items():
            text = text.replace("{{" + name + "}}", str(value))
        return web.Response(text=text, content_type="text/html")

    async def _helpers(self, request: web.Request) -> web.Response:
        return web.Response(body=(PAGES / "helpers.js").read_bytes(),
                            content_type="text/javascript")

    async def _bundle(self, request: web.Request) -> web.Response:
        return web.Response(body=AGENTS_BUNDLE.read_bytes(), content_type="text/javascript")

    async def _agents_page(self, request: web.Request) -> web.Response:
        return web.Response(body=AGENTS_PAGE.read_bytes(), content_type="text/javascript")

    async def _token(self, request: web.Request) -> web.Response:
        async with aiohttp.ClientSession() as http:
            resp = await http.post(self.voxgate_url + "/v1/realtime/client_secrets",
                                   json={"session": self.session},
                                   headers={"Authorization": f"Bearer {self.project_key}"})
            body = await resp.json()
        self.minted.append(body)
        return web.json_response(body, status=resp.status)

"""How the dashboard's responses look: the Jinja templates and their
filters (money, numbers, times, durations), ``render`` (a page with the
common context) and the security headers every dashboard response carries.

Templates live in ``voxgate/web/templates/`` and are rendered
asynchronously with autoescape on for HTML.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from voxgate.models.margin import usd_text
from voxgate.proxy.api import ACCOUNT_KEY
from voxgate.web.auth import CSRF, USER
from voxgate.web.security import SECURITY_HEADERS
from voxgate.web.state import WEB

__all__ = ["TEMPLATES_DIR", "fmt_time", "fmt_ms", "money", "num", "environment", "render",
           "DASHBOARD_PREFIXES", "is_dashboard_path", "add_security_headers"]

TEMPLATES_DIR = Path(__file__).parent / "templates"


def fmt_time(ts: float | None) -> str:
    """Unix seconds as ``YYYY-MM-DD HH:MM:SS`` (UTC); ``—`` for None."""
    if ts is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def fmt_ms(ms: float | None) -> str:
    """A duration in milliseconds as ``850 ms`` or ``12.3 s``; ``—`` for None."""
    if ms is None:
        return "—"
    return f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms:.0f} ms"


def money(cents: int | None) -> str:
    """Cents as dollars: ``$12`` (whole), ``$12.50``; ``—`` for None."""
    if cents is None:
        return "—"
    return f"${cents / 100:,.2f}" if cents % 100 else f"${cents // 100:,}"


def num(value: Any) -> str:
    """A count with thousands separators (a float to 0.1); ``∞`` for None
    (unlimited)."""
    if value is None:
        return "∞"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}"


def environment() -> jinja2.Environment:
    """The dashboard's template environment (async, autoescaped HTML/XML,
    filters ``money``, ``num``, ``time``, ``ms``)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=jinja2.select_autoescape(("html", "xml")),
        trim_blocks=True, lstrip_blocks=True, enable_async=True,
    )
    env.filters.update(money=money, usd=usd_text, num=num, time=fmt_time, ms=fmt_ms)
    return env


async def render(request: web.Request, template: str, status: int = 200,
                 **context: Any) -> web.Response:
    """Render a page with the common context (user, account, CSRF token, nav)."""
    state = request.app[WEB]
    user = request.get(USER)
    html = await state.templates.get_template(template).render_async(
        request=request, user=user, account=request.get(ACCOUNT_KEY) if user else None,
        csrf_token=request.get(CSRF, ""), path=request.path, **context)
    response = web.Response(text=html, status=status, content_type="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


# Paths of the dashboard's own pages, forms, exports and static files (the
# JSON APIs under /v1, /billing/usage, webhooks and metrics are not).
DASHBOARD_PREFIXES = ("/signup", "/signin", "/signout", "/dashboard", "/sessions", "/usage.csv",
                      "/projects", "/pricing", "/simulator", "/admin", "/account", "/static/",
                      "/voice")
_DASHBOARD_EXACT = ("/", "/billing")


def is_dashboard_path(path: str) -> bool:
    return path in _DASHBOARD_EXACT or path.startswith(DASHBOARD_PREFIXES)


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: ``SECURITY_HEADERS`` on every dashboard
    response (pages, redirects, errors, CSV, static files), and HSTS (one
    year) when ``public_url`` is https."""
    if is_dashboard_path(request.path):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if request.app[WEB].base_url.startswith("https://"):  # RFC 6797: served over TLS
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")

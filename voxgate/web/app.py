"""The web dashboard, plugged into ``voxgate serve`` by ``setup(app)``.

Routes (HTML unless noted; POSTs are CSRF-checked forms):

- ``/`` → ``/dashboard`` or ``/signin``; ``/signup``, ``/signin`` (GET, POST),
  ``/signin/2fa`` (GET, POST: the second factor), ``/signout`` (POST)
- ``/account/2fa`` (GET; POST ``action=enroll|confirm|disable``): two-factor
  sign-in (TOTP), mandatory for operators
- ``/dashboard``: quota card, upgrade banner, charts, free-tier badge
- ``/sessions`` (filters, pagination), ``/sessions/{id}`` (receipt),
  ``/sessions.csv``, ``/usage.csv``
- ``/projects`` (GET, POST create), ``/projects/{id}/delete``,
  ``/projects/{id}/keys``, ``/projects/{id}/keys/{key_id}/revoke``,
  ``/projects/{id}/origins`` (allowed web origins of its ephemeral keys)
- ``/billing`` (GET; POST ``action=upgrade|manage`` → Stripe via
  ``app[BILLING]``), ``/pricing`` (signed out too), ``/simulator``
- ``/admin`` (operator page), ``/admin/analytics`` (JSON), ``/admin/audit``
- ``/static/…``

Every response of these routes (and of ``/voice``) carries
``security.SECURITY_HEADERS`` (CSP without inline script, no framing,
nosniff, same-origin referrers). Unauthenticated forms are rate limited per
IP and failed sign-ins throttled per IP and account (``DashboardLimits``).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from voxgate.models import PlanCatalog
from voxgate.web import account_views, admin_views, views
from voxgate.web.auth import (
    CSRF,
    USER,
    hash_password,
    load_secret,
    secure_cookies,
    verify_or_dummy,
    web_middleware,
)
from voxgate.web.db import WebDB
from voxgate.web.security import SECURITY_HEADERS, DashboardLimits

__all__ = ["setup", "WEB", "WebState", "render", "billing_service", "DEMO_PASSWORD_FILE",
           "DASHBOARD_PREFIXES", "add_security_headers", "is_dashboard_path"]

log = logging.getLogger("voxgate.web")

HERE = Path(__file__).parent
DEMO_EMAIL = "demo@voxgate.local"
DEMO_PASSWORD_FILE = "demo_password"


@dataclass(eq=False)
class WebState:
    """What the dashboard handlers share."""

    store: Any
    catalog: PlanCatalog
    templates: jinja2.Environment
    secure_cookies: bool
    base_url: str
    db: WebDB | None = None  # set when the store is open
    limits: DashboardLimits = field(default_factory=DashboardLimits)
    # The clock TOTP codes are checked against (Unix seconds): the wall clock;
    # tests set a clock they step, so that a fresh step needs no 30 s wait.
    totp_clock: Callable[[], float] = time.time


WEB = web.AppKey("voxgate.web", WebState)


def _money(cents: int | None) -> str:
    if cents is None:
        return "—"
    return f"${cents / 100:,.2f}" if cents % 100 else f"${cents // 100:,}"


def _num(value: Any) -> str:
    if value is None:
        return "∞"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=jinja2.select_autoescape(("html", "xml")),
        trim_blocks=True, lstrip_blocks=True, enable_async=True,
    )
    from voxgate.web.views import fmt_ms, fmt_time

    env.filters.update(money=_money, num=_num, time=fmt_time, ms=fmt_ms)
    return env


def billing_service(app: web.Application) -> Any | None:
    """Billing's service object (``app[BILLING]``, with ``checkout_url``,
    ``portal_url``, ``invoices``), or None when billing is not installed or
    Stripe is not configured (no secret key)."""
    try:
        from voxgate.billing.service import BILLING  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - any import problem means "not configured"
        return None
    try:
        service = app.get(BILLING)
    except Exception:  # noqa: BLE001
        return None
    api = getattr(service, "api", None)
    if service is None or getattr(api, "configured", True) is False:
        return None
    return service


async def render(request: web.Request, template: str, status: int = 200,
                 **context: Any) -> web.Response:
    """Render a page with the common context (user, account, CSRF token, nav)."""
    state: WebState = request.app[WEB]
    from voxgate.proxy.api import ACCOUNT_KEY

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


def setup(app: web.Application) -> None:
    """Add the dashboard's middleware, routes and start-up step."""
    from voxgate.proxy.keys import GATEWAY, SETTINGS

    settings = app[SETTINGS]
    gateway = app[GATEWAY]
    app[WEB] = WebState(store=gateway.store, catalog=gateway.catalog,
                        templates=_environment(),
                        secure_cookies=secure_cookies(settings.web.secure_cookies,
                                                      settings.public_url),
                        base_url=settings.base_url)
    app.middlewares.append(web_middleware)
    app.on_response_prepare.append(add_security_headers)
    r = app.router
    r.add_get("/", views.index)
    r.add_get("/signup", views.signup_page)
    r.add_post("/signup", views.signup)
    r.add_get("/signin", views.signin_page)
    r.add_post("/signin", views.signin)
    r.add_get("/signin/2fa", account_views.challenge_page)
    r.add_post("/signin/2fa", account_views.challenge)
    r.add_get("/account/2fa", account_views.twofactor_page)
    r.add_post("/account/2fa", account_views.twofactor_action)
    r.add_post("/signout", views.signout)
    r.add_get("/dashboard", views.dashboard)
    r.add_get("/sessions", views.sessions_page)
    r.add_get("/sessions.csv", views.sessions_csv)
    r.add_get("/sessions/{session_id}", views.receipt)
    r.add_get("/usage.csv", views.usage_csv)
    r.add_get("/projects", views.projects_page)
    r.add_post("/projects", views.create_project)
    r.add_post("/projects/{project_id}/delete", views.delete_project)
    r.add_post("/projects/{project_id}/keys", views.create_key)
    r.add_post("/projects/{project_id}/origins", views.set_origins)
    r.add_post("/admin-keys", views.create_admin_key)
    r.add_post("/admin-keys/{key_id}/revoke", views.revoke_admin_key)
    r.add_post("/projects/{project_id}/keys/{key_id}/revoke", views.revoke_key)
    r.add_get("/billing", views.billing_page)
    r.add_post("/billing", views.billing_action)
    r.add_get("/pricing", views.pricing)
    r.add_get("/simulator", views.simulator)
    r.add_get("/admin", admin_views.admin_page)
    r.add_get("/admin/analytics", admin_views.analytics_json)
    r.add_get("/admin/audit", admin_views.audit_page)
    r.add_post("/admin/packs", admin_views.grant_pack)
    r.add_post("/admin/enterprise", admin_views.set_enterprise)
    r.add_static("/static/", HERE / "static", name="web-static")
    app.cleanup_ctx.append(_lifecycle)


async def _lifecycle(app: web.Application):
    """After the store is open (and the demo account made): open the web
    tables and give the demo account its dashboard user."""
    from voxgate.proxy.keys import SETTINGS

    settings = app[SETTINGS]
    state = app[WEB]
    secret = settings.web.session_secret
    state.db = WebDB(state.store, load_secret(secret.get_secret_value() if secret else None,
                                              settings.data_dir))
    if settings.demo_enabled:  # no demo login off loopback
        await ensure_demo_user(state, Path(settings.data_dir))
    await verify_or_dummy(None, "")  # make the dummy hash before the first sign-in
    yield


async def ensure_demo_user(state: WebState, data_dir: Path) -> str | None:
    """If the demo account has no user: create ``demo@voxgate.local`` with a
    random password, written to ``<data_dir>/demo_password`` (mode 0600) and
    printed once. Returns the password, or None when nothing was done."""
    assert state.db is not None
    account_id = await state.store.get_meta("demo_account_id")
    account = await state.store.get_account(account_id) if account_id else None
    if account is None:
        account = await state.store.get_account_by_email(DEMO_EMAIL)
    if account is None or await state.db.users_of(account.id):
        return None
    if await state.db.user_by_email(account.email) is not None:
        return None
    password = secrets.token_urlsafe(12)
    await state.db.create_user(account.id, account.email, await hash_password(password))
    path = data_dir / DEMO_PASSWORD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    print(f"demo dashboard login: {account.email} / {password}", flush=True)
    return password

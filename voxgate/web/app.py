"""The web dashboard, plugged into ``voxgate serve`` by ``setup(app)``.

Routes (HTML unless noted; POSTs are CSRF-checked forms):

- ``/`` → ``/dashboard`` or ``/signin``; ``/signup``, ``/signin`` (GET, POST),
  ``/signin/2fa`` (GET, POST: the second factor), ``/signout`` (POST)
- ``/account/2fa`` (GET; POST ``action=enroll|confirm|disable``): two-factor
  sign-in (TOTP), mandatory for operators
- ``/account/webhook`` (GET, POST set), ``/account/webhook/delete``,
  ``/account/webhook/test``, ``/account/webhook/deliveries/{id}/resend``:
  the account's webhook endpoint and its deliveries (``settings_views``)
- ``/dashboard``: quota card, upgrade banner, charts, free-tier badge
- ``/sessions`` (filters, pagination), ``/sessions/{id}`` (receipt),
  ``/sessions.csv``, ``/usage.csv``
- ``/projects`` (GET, POST create), ``/projects/{id}/delete``,
  ``/projects/{id}/keys``, ``/projects/{id}/keys/{key_id}/revoke``,
  ``/projects/{id}/origins`` (allowed web origins of its ephemeral keys),
  ``/projects/{id}/provider-key`` (the project's own OpenAI key, BYOK)
- ``/billing`` (GET; POST ``action=upgrade|manage`` → Stripe via
  ``app[BILLING]``), ``/pricing`` (signed out too), ``/simulator``
- ``/admin`` (operator page), ``/admin/analytics`` (JSON), ``/admin/audit``,
  ``/admin/margin`` (revenue, provider cost and margin per month; JSON too),
  ``/admin/spend-limit`` (POST: an account's own provider spend limit)
- ``/static/…``

Every response of these routes (and of ``/voice``) carries
``security.SECURITY_HEADERS`` (CSP without inline script, no framing,
nosniff, same-origin referrers). Unauthenticated forms are rate limited per
IP and failed sign-ins throttled per IP and account (``DashboardLimits``).

Routes and start-up only: the handlers share ``state.WebState``
(``app[WEB]``) and render through ``render``, so none imports this module.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from voxgate.web import account_views, admin_views, margin_views, settings_views, views
from voxgate.web.auth import (
    ensure_demo_user,
    load_secret,
    secure_cookies,
    verify_or_dummy,
    web_middleware,
)
from voxgate.web.db import WebDB
from voxgate.web.render import add_security_headers, environment
from voxgate.web.state import WEB, WebState

__all__ = ["setup"]

HERE = Path(__file__).parent


def setup(app: web.Application) -> None:
    """Add the dashboard's middleware, routes and start-up step."""
    from voxgate.proxy.keys import GATEWAY, SETTINGS

    settings = app[SETTINGS]
    gateway = app[GATEWAY]
    app[WEB] = WebState(store=gateway.store, catalog=gateway.catalog,
                        templates=environment(),
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
    r.add_get("/account/webhook", settings_views.webhook_page)
    r.add_post("/account/webhook", settings_views.set_webhook)
    r.add_post("/account/webhook/delete", settings_views.delete_webhook)
    r.add_post("/account/webhook/test", settings_views.test_webhook)
    r.add_post("/account/webhook/deliveries/{delivery_id}/resend",
               settings_views.resend_delivery)
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
    r.add_post("/projects/{project_id}/provider-key", settings_views.set_provider_key)
    r.add_post("/admin-keys", views.create_admin_key)
    r.add_post("/admin-keys/{key_id}/revoke", views.revoke_admin_key)
    r.add_post("/projects/{project_id}/keys/{key_id}/revoke", views.revoke_key)
    r.add_get("/billing", views.billing_page)
    r.add_post("/billing", views.billing_action)
    r.add_get("/pricing", views.pricing)
    r.add_get("/simulator", views.simulator)
    r.add_get("/admin", admin_views.admin_page)
    r.add_get("/admin/analytics", admin_views.analytics_json)
    r.add_get("/admin/margin", margin_views.margin_page)
    r.add_get("/admin/audit", admin_views.audit_page)
    r.add_post("/admin/packs", admin_views.grant_pack)
    r.add_post("/admin/enterprise", admin_views.set_enterprise)
    r.add_post("/admin/spend-limit", admin_views.set_spend_limit)
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


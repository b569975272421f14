"""Account settings pages: the customer webhook endpoint and a project's own
provider key (issue 21, items 5 and 6).

- ``GET /account/webhook``: the account's endpoint (URL, the event types it
  subscribes to), the form to set it, "Send test event", and its deliveries
  (type, event id, status, attempts, last error, next attempt, delivered
  at), each with "Resend". ``POST /account/webhook`` (``url``, ``events``
  repeated, of ``EVENT_TYPES``): set it; the page then shows the new signing
  secret, once. ``POST /account/webhook/delete``, ``/account/webhook/test``
  and ``/account/webhook/deliveries/{delivery_id}/resend``. The back end is
  ``BillingService`` (``app[BILLING]``), as for ``/v1/webhook``
  (docs/webhooks.md); without the billing room the page says webhooks are
  unavailable and the forms answer 503.
- ``POST /projects/{project_id}/provider-key``: ``action=set`` with
  ``openai_api_key`` stores the project's own OpenAI key (BYOK, sealed by
  ``Gateway.provider_keys``); ``action=remove`` removes it. Only its last 4
  characters are shown afterwards, on ``/projects``; the key is never put
  in a page, a log line or the audit log. With BYOK disabled (no
  ``upstream.provider_key_secret``) setting is refused with a 403 page
  saying so (removing still works).

A bad URL, no event chosen or a malformed key is shown on the form (400),
never a 500.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from voxgate.billing.notify import EVENT_TYPES, SESSION_COMPLETED
from voxgate.billing.service import BILLING, delivery_body
from voxgate.errors import InvalidRequest, PermissionDenied
from voxgate.proxy.api import ACCOUNT_KEY
from voxgate.web.auth import USER, form_post, member
from voxgate.web.render import render
from voxgate.web.views import _audit, _own_project, _projects_view

__all__ = ["webhook_page", "set_webhook", "delete_webhook", "test_webhook", "resend_delivery",
           "set_provider_key", "EVENT_HELP", "DELIVERIES_SHOWN"]

DELIVERIES_SHOWN = 50
EVENT_HELP = {
    SESSION_COMPLETED: "a session ended: its verdict and why, measurements, usage, model, "
                       "transport and its price to you",
    "quota_warning": "80 % or 95 % of this month's included sessions used",
    "quota_exhausted": "100 % of this month's included sessions used",
    "spend_warning": "80 % or 95 % of this month's provider spend limit used",
    "spend_limit_reached": "the provider spend limit is reached: new sessions are refused",
}
WEBHOOK_NOTICES = {
    "removed": "Webhook endpoint removed; its pending deliveries are dropped.",
    "test-queued": "Test event queued: it appears below and is delivered within seconds.",
    "resent": "Delivery queued again, with the same body and event id.",
}
UNAVAILABLE = "Webhooks are not available on this server (billing is not installed)."


def _service(request: web.Request) -> Any | None:
    """``app[BILLING]`` (its ``db``, ``notifier``, ``set_webhook``), or None
    when the billing room is not installed. Stripe need not be configured:
    webhooks do not use it."""
    return request.app.get(BILLING)


def _actor(request: web.Request) -> str:
    user: Any = request.get(USER)
    return str(user.email) if user is not None else "account"


async def _webhook_view(request: web.Request, status: int = 200, *, error: str | None = None,
                        secret: str | None = None, url: str | None = None,
                        chosen: list[str] | None = None) -> web.Response:
    """The webhook page; ``url``/``chosen`` refill the form after an error."""
    svc = _service(request)
    account = request[ACCOUNT_KEY]
    endpoint = deliveries = None
    if svc is not None:
        endpoint = await svc.db.webhook_endpoint(account.id)
        deliveries = [delivery_body(i)
                      for i in await svc.db.list_webhooks(account.id, DELIVERIES_SHOWN)]
    if url is None:
        url = endpoint.url if endpoint is not None else ""
    if chosen is None:
        chosen = list(endpoint.events) if endpoint is not None else [SESSION_COMPLETED]
    return await render(
        request, "webhook.html", status=status, available=svc is not None, endpoint=endpoint,
        deliveries=deliveries or [], events=[(e, EVENT_HELP.get(e, "")) for e in EVENT_TYPES],
        url=url, chosen=chosen, secret=secret, error=error or (None if svc else UNAVAILABLE),
        notice=WEBHOOK_NOTICES.get(request.query.get("notice", "")))


def _required(request: web.Request) -> Any:
    svc = _service(request)
    if svc is None:
        raise web.HTTPServiceUnavailable(text=UNAVAILABLE)
    return svc


@member
async def webhook_page(request: web.Request) -> web.Response:
    return await _webhook_view(request)


@member
@form_post
async def set_webhook(request: web.Request, form: MultiDictProxy) -> web.Response:
    """Set the endpoint (``BillingService.set_webhook``): 200 with the new
    signing secret shown once; 400 with the reason for an unsafe URL or no
    (or an unknown) event type."""
    svc = _required(request)
    url = str(form.get("url", "")).strip()
    chosen = [str(e) for e in form.getall("events", [])]
    try:
        url, chosen, secret = await svc.set_webhook(request[ACCOUNT_KEY], url, chosen)
    except InvalidRequest as err:  # UnsafeUrl too
        message = ("Choose at least one event type." if not chosen else err.message)
        return await _webhook_view(request, 400, error=message, url=url, chosen=chosen)
    return await _webhook_view(request, secret=secret)


@member
@form_post
async def delete_webhook(request: web.Request, form: MultiDictProxy) -> web.Response:
    svc = _required(request)
    account = request[ACCOUNT_KEY]
    found = await svc.db.webhook_endpoint(account.id)
    await svc.db.delete_account_webhook(account.id)
    if found is not None:
        await svc.db.audit(_actor(request), account.id, "webhook_removed", {"url": found.url})
    raise web.HTTPSeeOther("/account/webhook?notice=removed")


@member
@form_post
async def test_webhook(request: web.Request, form: MultiDictProxy) -> web.Response:
    """Queue a ``webhook.test`` event (``Notifier.test_event``) and wake the
    outbox; 400 on the page when no endpoint is set."""
    svc = _required(request)
    if await svc.notifier.test_event(request[ACCOUNT_KEY].id) is None:
        return await _webhook_view(request, 400,
                                   error="Set a webhook endpoint first: there is nowhere to send "
                                         "a test event.")
    svc.kick("outbox")
    raise web.HTTPSeeOther("/account/webhook?notice=test-queued")


@member
@form_post
async def resend_delivery(request: web.Request, form: MultiDictProxy) -> web.Response:
    """Make one of the account's deliveries due now (``resend_webhook``);
    404 for a delivery that is not the account's."""
    svc = _required(request)
    raw = request.match_info["delivery_id"]
    if not raw.isdigit() or not await svc.db.resend_webhook(request[ACCOUNT_KEY].id, int(raw),
                                                            time.time()):
        raise web.HTTPNotFound(text="no such webhook delivery")
    svc.kick("outbox")
    raise web.HTTPSeeOther("/account/webhook?notice=resent")


@member
@form_post
async def set_provider_key(request: web.Request, form: MultiDictProxy) -> web.Response:
    """``action=set`` (``openai_api_key``) or ``action=remove``: 303 to
    ``/projects``; a malformed key is a 400 page, BYOK disabled a 403 page
    (``DISABLED_MESSAGE``). Neither the page nor the audit log carries the
    key: only its last 4 characters are kept in clear."""
    from voxgate.proxy.keys import GATEWAY

    project = await _own_project(request)
    gateway = request.app[GATEWAY]
    action = form.get("action")
    if action == "remove":
        await gateway.store.set_project_provider_key(project.id, None, None)
        await _audit(request, "project.provider_key_removed", project_id=project.id)
        raise web.HTTPSeeOther("/projects?notice=provider-key-removed")
    if action != "set":
        raise web.HTTPBadRequest(text="unknown action: send action=set or action=remove")
    value = form.get("openai_api_key", "")
    try:
        sealed, last4 = gateway.provider_keys.seal(value.strip() if isinstance(value, str)
                                                   else value)
    except (InvalidRequest, PermissionDenied) as err:
        message = err.message.replace("openai_api_key must be", "The key must be")
        return await _projects_view(request, err.status, error=f"{project.name}: {message}")
    await gateway.store.set_project_provider_key(project.id, sealed, last4)
    await _audit(request, "project.provider_key_set", project_id=project.id, last4=last4)
    raise web.HTTPSeeOther("/projects?notice=provider-key-saved")

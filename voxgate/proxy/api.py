"""The usage API.

- ``GET /billing/usage`` → ``{"plan", "sessionsIncluded", "sessionsUsed",
  "sessionsRemaining", "estimatedMinutes", "minutesUsed", "percentUsed"}`` for
  the caller's account this period (``sessionsIncluded``/``sessionsRemaining``
  are null on unlimited plans; ``estimatedMinutes`` is the plan's estimate,
  ``minutesUsed`` the measured minutes of ``voxgate.models.figures.minutes_used``).
- ``GET /v1/sessions?limit=&after=&project_id=&billable=&reason=`` → the
  account's sessions, newest first, as an OpenAI-style list
  ``{"object": "list", "data": [...], "first_id", "last_id", "has_more"}``.
- ``GET /v1/sessions/{id}`` → one session of the caller's account.
  Both carry ``provider_cost_usd`` (what the voice provider charged the
  operator, USD to 1e-6, null when unpriced) and ``provider_cost_reason``
  only when the operator turns ``[pricing] show_provider_cost`` on.
- ``GET /v1/projects/{id}``, ``PUT /v1/projects/{id}/allowed_origins`` → the
  project and the web origins its ephemeral keys may be used from.

Both accept a project API key (``Authorization: Bearer vg_live_…``); the
dashboard's signed-in users reach them through their session cookie (the web
middleware sets ``request["voxgate.account"]``).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from voxgate.config import Settings
from voxgate.errors import InvalidRequest, NotFound, PermissionDenied
from voxgate.models import (
    ADMIN_KEY_PREFIX,
    API_KEY_PREFIX,
    Account,
    Plan,
    PlanCatalog,
    Project,
    SessionRecord,
)
from voxgate.models.figures import minutes_used
from voxgate.models.origins import parse_models, parse_networks, parse_origins
from voxgate.models.packs import PackBalance
from voxgate.proxy.auth import AdminCaller, authenticate, bearer_key, resolve_admin
from voxgate.proxy.gateway import RATE_LIMIT, Gateway
from voxgate.proxy.http import json_response, read_json
from voxgate.proxy.keys import GATEWAY
from voxgate.store.base import MonthlyUsage, SessionFilter, period_of

__all__ = ["usage_handler", "sessions_handler", "session_handler", "usage_body", "caller_account",
           "ACCOUNT_KEY", "project_handler", "update_project_handler", "project_body", "admin_caller",
           "session_scope", "session_body"]

ACCOUNT_KEY = web.RequestKey("voxgate.account", Account)  # set by the dashboard cookie middleware
PINS = {"allowed_origins": parse_origins, "allowed_models": parse_models,
        "allowed_ips": parse_networks}
PROVIDER_KEY_FIELD = "openai_api_key"  # PATCH /v1/projects/{id}: the project's own key (BYOK)
TWILIO_TOKEN_FIELD = "twilio_auth_token"  # PATCH /v1/projects/{id}: its Twilio account's token


def usage_body(plan: Plan, usage: MonthlyUsage, catalog: PlanCatalog,
               packs: PackBalance | None = None) -> dict[str, Any]:
    """The ``/billing/usage`` object for one account and period. ``plan`` is
    the account's plan with its add-on packs (``Gateway.account_plan``):
    ``sessionsIncluded`` counts the packs in, ``planSessionsIncluded`` is the
    plan's own; ``packs`` the balance behind it (``packExpiresAt``: Unix s
    when the first live pack with sessions left expires)."""
    packs = packs or PackBalance()
    included = plan.sessions_included
    used = usage.billable_sessions
    return {
        "plan": plan.id,
        "period": usage.period,
        "sessionsIncluded": included,
        "sessionsUsed": used,
        "sessionsRemaining": None if included is None else max(0, included - used),
        "estimatedMinutes": None if included is None else catalog.estimated_minutes(included),
        "minutesUsed": minutes_used(usage.minutes_used),
        "percentUsed": (round(100.0 * used / included, 1) if included else (100.0 if included == 0 and used else 0.0)),
        "sessionsTotal": usage.sessions,
        "audioSeconds": round(usage.audio_seconds, 1),
        "planSessionsIncluded": plan.plan_sessions_included,
        "packSessionsIncluded": plan.pack_sessions,
        "packSessionsUsed": packs.used_this_period,
        "packSessionsRemaining": packs.remaining,
        "packExpiresAt": None if packs.expires_at is None else int(packs.expires_at),
        "packs": [{"id": p.id, "pack": p.catalog_pack, "source": p.source,
                   "sessions": p.sessions, "sessionsRemaining": p.remaining,
                   "purchasedAt": int(p.purchased_at), "expiresAt": int(p.expires_at)}
                  for p in packs.live],
    }


async def caller_account(request: web.Request) -> Account:
    """The account of an account-wide caller (``admin_caller``): usage and
    billing actions are the account owner's, not a project key's."""
    return (await admin_caller(request)).account


async def session_scope(request: web.Request) -> tuple[Account, str | None]:
    """Who reads session records: ``(account, project_id)``, where a
    project key sees its own project only and the dashboard or an admin key
    the whole account (``project_id`` None). Counts against the rate limit."""
    key = bearer_key(request)
    if request.get(ACCOUNT_KEY) is not None or (key and key.startswith(ADMIN_KEY_PREFIX)):
        return (await admin_caller(request)).account, None
    gw: Gateway = request.app[GATEWAY]
    principal = await authenticate(request, gw.store)
    await gw.check_rate(principal)
    return principal.account, principal.project.id


async def usage_handler(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GATEWAY]
    account = await caller_account(request)
    now = time.time()
    plan = await gw.account_plan(account, now)
    usage = await gw.usage(account.id, period_of(now))
    packs = await gw.store.pack_balance(account.id, usage.period, now)
    return json_response(usage_body(plan, usage, gw.catalog, packs))


def _filters(query) -> SessionFilter:
    billable = query.get("billable")
    if billable not in (None, "", "true", "false"):
        raise InvalidRequest("'billable' must be true or false", param="billable")
    try:
        since = float(query["since"]) if query.get("since") else None
        until = float(query["until"]) if query.get("until") else None
    except ValueError as exc:
        raise InvalidRequest("'since'/'until' must be Unix seconds", param="since") from exc
    return SessionFilter(
        project_id=query.get("project_id") or None,
        billable=None if billable in (None, "") else billable == "true",
        reason=query.get("reason") or None,
        status=query.get("status") or None,
        since=since,
        until=until,
    )


async def sessions_handler(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GATEWAY]
    account, project_id = await session_scope(request)
    filters = _filters(request.query)
    if project_id is not None:
        if filters.project_id not in (None, project_id):
            raise PermissionDenied("a project key reads its own project's sessions only",
                                   param="project_id")
        filters.project_id = project_id
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError as exc:
        raise InvalidRequest("'limit' must be an integer", param="limit") from exc
    if not 1 <= limit <= 100:
        raise InvalidRequest("'limit' must be between 1 and 100", param="limit")
    after = request.query.get("after") or None
    if after is not None:
        anchor = await gw.store.get_session(after)
        if anchor is None or anchor.account_id != account.id or (
                project_id is not None and anchor.project_id != project_id):
            raise NotFound(f"no session {after!r}", param="after")
    rows = await gw.store.list_sessions(account.id, limit=limit + 1, after=after,
                                        filters=filters)
    has_more = len(rows) > limit
    rows = rows[:limit]
    data = [session_body(gw.settings, r) for r in rows]
    return json_response({
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    })


async def session_handler(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GATEWAY]
    account, project_id = await session_scope(request)
    record = await gw.store.get_session(request.match_info["session_id"])
    if record is None or record.account_id != account.id or (
            project_id is not None and record.project_id != project_id):
        raise NotFound(f"no session {request.match_info['session_id']!r}")
    return json_response(session_body(gw.settings, record))


def session_body(settings: Settings, record: SessionRecord) -> dict[str, Any]:
    """The session object of ``GET /v1/sessions/{id}``, as customers see it
    (the provider cost only with ``[pricing] show_provider_cost``); also
    the ``data`` of the session's ``session.completed`` webhook event
    (``voxgate.billing.notify``)."""
    return record.to_api(provider_cost=settings.pricing.show_provider_cost)


def project_body(project: Project) -> dict[str, Any]:
    """The project object; its own provider key (BYOK) only as its last 4
    characters (``openai_api_key_last4``, null when it has none), its Twilio
    auth token likewise (``twilio_auth_token_last4``)."""
    return {"object": "organization.project", "id": project.id, "name": project.name,
            "created_at": int(project.created_at),
            "allowed_origins": list(project.allowed_origins),
            "allowed_models": list(project.allowed_models),
            "allowed_ips": list(project.allowed_ips),
            "openai_api_key_last4": project.provider_key_last4,
            "twilio_auth_token_last4": project.twilio_token_last4}


async def admin_caller(request: web.Request) -> AdminCaller:
    """The account-wide caller: a signed-in dashboard user or an admin key
    (``vg_admin_…``); counts the request against the key's rate limit.

    Raises:
        AuthenticationError (401): no key, an unknown or ephemeral key.
        PermissionDenied (403): a project key (it acts for its project only).
        RateLimited (429).
    """
    account = request.get(ACCOUNT_KEY)
    if account is not None:
        return AdminCaller(account)
    gw: Gateway = request.app[GATEWAY]
    caller = await resolve_admin(gw.store, bearer_key(request))
    assert caller.key is not None
    plan = await gw.account_plan(caller.account)  # as admission sees it (enterprise terms)
    RATE_LIMIT.set(await gw.admission.check_rate(caller.key.id, plan, time.monotonic()))
    return caller


async def _project_of(request: web.Request, *, change: bool) -> tuple[Gateway, Project]:
    """The project named in the path: readable with its own project key,
    changeable by the account owner only (dashboard or admin key)."""
    gw: Gateway = request.app[GATEWAY]
    project_id = request.match_info["project_id"]
    key = bearer_key(request)
    if not change and request.get(ACCOUNT_KEY) is None and key and key.startswith(API_KEY_PREFIX):
        principal = await authenticate(request, gw.store)
        if principal.project.id != project_id:
            raise PermissionDenied("this key belongs to another project", param="project_id")
        await gw.check_rate(principal)
        return gw, principal.project
    caller = await admin_caller(request)
    project = await gw.store.get_project(project_id)
    if project is None or project.account_id != caller.account.id:
        raise NotFound(f"no project {project_id!r}", param="project_id")
    return gw, project


async def project_handler(request: web.Request) -> web.Response:
    """``GET /v1/projects/{project_id}`` (its project key, an admin key or
    the dashboard) → ``{"object", "id", "name", "created_at",
    "allowed_origins", "allowed_models", "allowed_ips"}``."""
    _, project = await _project_of(request, change=False)
    return json_response(project_body(project))


async def update_project_handler(request: web.Request) -> web.Response:
    """``PATCH /v1/projects/{project_id}`` (admin key or dashboard) with any
    of ``{"allowed_origins": ["https://app.example.com"], "allowed_models":
    ["gpt-realtime"], "allowed_ips": ["203.0.113.0/24"]}`` (``[]`` = any) →
    the project. Origins and networks are normalized. Then the project's
    ephemeral keys are refused from other ``Origin``s (403
    ``origin_not_allowed``), its sessions and mints may use only those models
    (400 ``model_not_allowed``), and its API keys work only from those
    networks (403 ``ip_not_allowed``).

    ``{"openai_api_key": "sk-…"}`` stores the project's own OpenAI key
    (BYOK, encrypted: ``voxgate.proxy.provider_keys``); its sessions then use
    it upstream. ``null`` removes it. Only its last 4 characters are returned
    (``openai_api_key_last4``).

    ``{"twilio_auth_token": "…"}`` stores the auth token of the project's own
    Twilio account (encrypted the same way); its phone calls' upgrade
    ``X-Twilio-Signature`` is then checked with it at ``start``
    (docs/telephony.md). ``null`` removes it; ``twilio_auth_token_last4``.

    Raises:
        InvalidRequest (400): no known field, or a field that is not a list of
            origins / model names / CIDRs (at most 50 each), or not a key.
        PermissionDenied (403, ``byok_disabled`` / ``twilio_token_disabled``):
            a key or token sent while the server has no
            ``upstream.provider_key_secret``.
    """
    gw, project = await _project_of(request, change=True)
    body = await read_json(request)
    fields = (*PINS, PROVIDER_KEY_FIELD, TWILIO_TOKEN_FIELD)
    if not isinstance(body, dict) or not body.keys() & set(fields):
        raise InvalidRequest(f"send one or more of {', '.join(fields)}")
    if TWILIO_TOKEN_FIELD in body:
        value = body[TWILIO_TOKEN_FIELD]
        sealed, last4 = (None, None) if value is None else gw.provider_keys.seal_twilio_token(value)
        project = await gw.store.set_project_twilio_token(project.id, sealed, last4)
        if not body.keys() & {*PINS, PROVIDER_KEY_FIELD}:
            return json_response(project_body(project))
    if PROVIDER_KEY_FIELD in body:
        value = body[PROVIDER_KEY_FIELD]
        sealed, last4 = (None, None) if value is None else gw.provider_keys.seal(value)
        project = await gw.store.set_project_provider_key(project.id, sealed, last4)
        if not body.keys() & set(PINS):
            return json_response(project_body(project))
    pins: dict[str, tuple[str, ...]] = {}
    for name, parse in PINS.items():
        if name not in body:
            continue
        value = body[name]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidRequest(f"{name!r} must be a list of strings", param=name)
        try:
            pins[name] = parse(value)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param=name) from exc
    project = await gw.store.update_project(project.id, **pins)
    return json_response(project_body(project))

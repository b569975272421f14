"""The usage API.

- ``GET /billing/usage`` → ``{"plan", "sessionsIncluded", "sessionsUsed",
  "sessionsRemaining", "estimatedMinutes", "minutesUsed", "percentUsed"}`` for
  the caller's account this period (``sessionsIncluded``/``sessionsRemaining``
  are null on unlimited plans; minutes are estimates).
- ``GET /v1/sessions?limit=&after=&project_id=&billable=&reason=`` → the
  account's sessions, newest first, as an OpenAI-style list
  ``{"object": "list", "data": [...], "first_id", "last_id", "has_more"}``.
- ``GET /v1/sessions/{id}`` → one session of the caller's account.
- ``GET /v1/projects/{id}``, ``PUT /v1/projects/{id}/allowed_origins`` → the
  project and the web origins its ephemeral keys may be used from.

Both accept a project API key (``Authorization: Bearer vg_live_…``); the
dashboard's signed-in users reach them through their session cookie (the web
middleware sets ``request["voxgate.account"]``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from voxgate.errors import InvalidRequest, NotFound, PermissionDenied
from voxgate.metering.store import MonthlyUsage, SessionFilter
from voxgate.models import Account, Plan, PlanCatalog, Project
from voxgate.models.origins import parse_origins
from voxgate.proxy.auth import authenticate
from voxgate.proxy.gateway import Gateway
from voxgate.proxy.http import json_response, read_json

__all__ = ["usage_handler", "sessions_handler", "session_handler", "usage_body", "caller_account",
           "ACCOUNT_KEY", "project_handler", "allowed_origins_handler", "project_body"]

ACCOUNT_KEY = web.RequestKey("voxgate.account", object)  # set by the dashboard cookie middleware


def usage_body(plan: Plan, usage: MonthlyUsage, catalog: PlanCatalog) -> dict[str, Any]:
    """The ``/billing/usage`` object for one account and period."""
    included = plan.sessions_included
    used = usage.billable_sessions
    return {
        "plan": plan.id,
        "period": usage.period,
        "sessionsIncluded": included,
        "sessionsUsed": used,
        "sessionsRemaining": None if included is None else max(0, included - used),
        "estimatedMinutes": None if included is None else catalog.estimated_minutes(included),
        "minutesUsed": round(usage.minutes_used, 1),
        "percentUsed": (round(100.0 * used / included, 1) if included else (100.0 if included == 0 and used else 0.0)),
        "sessionsTotal": usage.sessions,
        "audioSeconds": round(usage.audio_seconds, 1),
    }


async def caller_account(request: web.Request) -> Account:
    """The account of a signed-in dashboard user, or of the API key used.
    Counts the request against the key's rate limit."""
    from voxgate.proxy.app import GATEWAY

    account = request.get(ACCOUNT_KEY)
    if account is not None:
        return account
    gw: Gateway = request.app[GATEWAY]
    principal = await authenticate(request, gw.store)
    await gw.check_rate(principal)
    return principal.account


async def usage_handler(request: web.Request) -> web.Response:
    from voxgate.proxy.app import GATEWAY

    gw: Gateway = request.app[GATEWAY]
    account = await caller_account(request)
    plan = gw.catalog.get(account.plan_id) if account.plan_id in gw.catalog.plans else gw.catalog.default
    usage = await gw.usage(account.id)
    return json_response(usage_body(plan, usage, gw.catalog))


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
    from voxgate.proxy.app import GATEWAY

    gw: Gateway = request.app[GATEWAY]
    account = await caller_account(request)
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError as exc:
        raise InvalidRequest("'limit' must be an integer", param="limit") from exc
    if not 1 <= limit <= 100:
        raise InvalidRequest("'limit' must be between 1 and 100", param="limit")
    after = request.query.get("after") or None
    if after is not None:
        anchor = await gw.store.get_session(after)
        if anchor is None or anchor.account_id != account.id:
            raise NotFound(f"no session {after!r}", param="after")
    rows = await gw.store.list_sessions(account.id, limit=limit + 1, after=after,
                                        filters=_filters(request.query))
    has_more = len(rows) > limit
    rows = rows[:limit]
    data = [r.to_api() for r in rows]
    return json_response({
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    })


async def session_handler(request: web.Request) -> web.Response:
    from voxgate.proxy.app import GATEWAY

    gw: Gateway = request.app[GATEWAY]
    account = await caller_account(request)
    record = await gw.store.get_session(request.match_info["session_id"])
    if record is None or record.account_id != account.id:
        raise NotFound(f"no session {request.match_info['session_id']!r}")
    return json_response(record.to_api())


def project_body(project: Project) -> dict[str, Any]:
    return {"object": "organization.project", "id": project.id, "name": project.name,
            "created_at": int(project.created_at),
            "allowed_origins": list(project.allowed_origins)}


async def _own_project(request: web.Request) -> tuple[Gateway, Project]:
    """The project named in the path, for a key of that project or a
    signed-in user of its account."""
    from voxgate.proxy.app import GATEWAY

    gw: Gateway = request.app[GATEWAY]
    project_id = request.match_info["project_id"]
    account = request.get(ACCOUNT_KEY)
    if account is None:
        principal = await authenticate(request, gw.store, allow_ephemeral=False)
        if principal.project.id != project_id:
            raise PermissionDenied("this key belongs to another project", param="project_id")
        return gw, principal.project
    project = await gw.store.get_project(project_id)
    if project is None or project.account_id != account.id:  # type: ignore[attr-defined]
        raise NotFound(f"no project {project_id!r}", param="project_id")
    return gw, project


async def project_handler(request: web.Request) -> web.Response:
    """``GET /v1/projects/{project_id}`` → ``{"object", "id", "name",
    "created_at", "allowed_origins"}``."""
    _, project = await _own_project(request)
    return json_response(project_body(project))


async def allowed_origins_handler(request: web.Request) -> web.Response:
    """``PUT /v1/projects/{project_id}/allowed_origins``
    ``{"allowed_origins": ["https://app.example.com", …]}`` (``[]`` = any
    origin) → the project. Origins are normalized (lowercase, default port
    dropped); ephemeral keys of the project are then refused from other
    ``Origin``s with 403 ``origin_not_allowed``.

    Raises:
        InvalidRequest (400): not a list of at most ``MAX_ORIGINS`` http(s) origins.
    """
    gw, project = await _own_project(request)
    body = await read_json(request)
    origins = body.get("allowed_origins") if isinstance(body, dict) else None
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        raise InvalidRequest("'allowed_origins' must be a list of origin strings",
                             param="allowed_origins")
    try:
        normalized = parse_origins(origins)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="allowed_origins") from exc
    project = await gw.store.set_allowed_origins(project.id, normalized)
    return json_response(project_body(project))

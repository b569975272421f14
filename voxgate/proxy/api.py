"""The usage API.

- ``GET /billing/usage`` → ``{"plan", "sessionsIncluded", "sessionsUsed",
  "sessionsRemaining", "estimatedMinutes", "minutesUsed", "percentUsed"}`` for
  the caller's account this period (``sessionsIncluded``/``sessionsRemaining``
  are null on unlimited plans; minutes are estimates).
- ``GET /v1/sessions?limit=&after=&project_id=&billable=&reason=`` → the
  account's sessions, newest first, as an OpenAI-style list
  ``{"object": "list", "data": [...], "first_id", "last_id", "has_more"}``.
- ``GET /v1/sessions/{id}`` → one session of the caller's account.

Both accept a project API key (``Authorization: Bearer vg_live_…``); the
dashboard's signed-in users reach them through their session cookie (the web
middleware sets ``request["voxgate.account"]``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from voxgate.errors import InvalidRequest, NotFound
from voxgate.metering.store import MonthlyUsage, SessionFilter
from voxgate.models import Account, Plan, PlanCatalog
from voxgate.proxy.auth import authenticate
from voxgate.proxy.gateway import Gateway
from voxgate.proxy.http import json_response

__all__ = ["usage_handler", "sessions_handler", "session_handler", "usage_body", "caller_account",
           "ACCOUNT_KEY"]

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

"""Operator pages: ``/admin`` (figures and charts over time),
``/admin/analytics`` (the same figures as JSON; ``/admin`` also lists the
scheduled jobs' last and next runs) and ``/admin/audit`` (the
audit log of operator and billing actions), and the operator forms: add-on
packs, enterprise plans and an account's own provider spend limit
(``POST /admin/spend-limit``). Operators only: signed-out visitors are sent
to ``/signin``, other users get 403.

The figures are defined in ``voxgate.models.figures.analytics``.
"""

from __future__ import annotations

import functools
import time
from decimal import Decimal
from typing import Any

from aiohttp import web

from voxgate.models import figures
from voxgate.models.plans import parse_spend_limit_usd
from voxgate.proxy.http import json_response
from voxgate.store.base import period_of
from voxgate.store.plans import enterprise_plans
from voxgate.web import charts
from voxgate.web.auth import USER, form_post, operator
from voxgate.web.render import render
from voxgate.web.state import billing_service, web_state

__all__ = ["compute_analytics", "admin_page", "analytics_json", "audit_page", "grant_pack",
           "set_enterprise", "set_spend_limit", "parse_spend_limit"]

HISTORY_MONTHS = 6
ACTIVE_DAYS = 30


def members_told(fn: Any) -> Any:
    """An operator HTML page for a signed-in user who is not an operator: a
    403 page in the app's layout and navigation saying what the page is and
    where to go instead (the ``operator`` decorator below still guards
    everyone else)."""

    @functools.wraps(fn)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        user = request.get(USER)
        if user is not None and not user.is_operator:
            return await render(request, "not_operator.html", status=403)
        return await fn(request)

    return wrapper


async def compute_analytics(state: Any, now: float | None = None) -> figures.Analytics:
    """The operator figures for the period holding ``now``, from the store."""
    now = time.time() if now is None else now
    period = period_of(now)
    return figures.analytics(
        accounts=await state.store.list_accounts(),
        catalog=state.catalog,
        changes=await state.db.plan_changes(until=now + 1),
        active_account_ids=await state.db.active_account_ids(now - ACTIVE_DAYS * 86400),
        sessions_per_account=await state.db.sessions_per_account(period),
        period=period,
        now=now,
        operator_account_ids=await state.db.operator_account_ids(),
        enterprise=await enterprise_plans(state.store),
    )


@operator
async def analytics_json(request: web.Request) -> web.Response:
    """``GET /admin/analytics`` → the ``Analytics`` figures as JSON."""
    return json_response((await compute_analytics(web_state(request))).to_json())


@members_told
@operator
async def admin_page(request: web.Request) -> web.Response:
    state = web_state(request)
    now = time.time()
    figs = await compute_analytics(state, now)
    hist = figures.history(await state.db.plan_changes(until=now + 1), state.catalog,
                           figs.period, now, HISTORY_MONTHS,
                           operator_account_ids=await state.db.operator_account_ids(),
                           enterprise=await enterprise_plans(state.store))
    labels = [h["period"] for h in hist]
    days = await state.db.sessions_per_day_all(now - ACTIVE_DAYS * 86400)
    accounts = await state.store.list_accounts()
    return await render(
        request, "admin.html", figs=figs, history=hist,
        mrr_chart=charts.stacked_bars(
            "MRR by month (dollars)", labels,
            [charts.Series("MRR $", [h["mrr"] / 100 for h in hist], "s-ok")], unit="$"),
        users_chart=charts.lines(
            "Customer accounts by month", labels,
            [charts.Series("all", [h["accounts"] for h in hist], "l-prev"),
             charts.Series("paid", [h["paid_users"] for h in hist], "l-cur")], integer=True),
        churn_chart=charts.lines(
            "Churn rate by month (%)", labels,
            [charts.Series("churn %", [h["churn_rate"] for h in hist], "l-cur")]),
        sessions_chart=charts.stacked_bars(
            f"Sessions per day, last {ACTIVE_DAYS} days", [d[0][5:] for d in days],
            [charts.Series("billable", [d[2] for d in days], "s-ok"),
             charts.Series("not billable", [d[1] - d[2] for d in days], "s-fail")],
            integer=True),
        accounts=len(accounts),
        spend_limits=[a for a in accounts if a.spend_limit_usd is not None],
        jobs=await scheduled_jobs(request, now))


async def scheduled_jobs(request: web.Request, now: float) -> list[dict[str, Any]]:
    """The scheduled jobs with their last run, outcome and next run (``voxgate.jobs``)."""
    from voxgate.jobs import JOBS, JobRunsDB, job_table
    from voxgate.proxy.keys import SETTINGS

    state = web_state(request)
    return job_table(JOBS, await JobRunsDB(state.store).runs(), request.app[SETTINGS], now)


@members_told
@operator
async def audit_page(request: web.Request) -> web.Response:
    try:
        before = float(request.query["before"]) if request.query.get("before") else None
    except ValueError as exc:
        raise web.HTTPBadRequest(text="'before' must be Unix seconds") from exc
    entries = await web_state(request).db.audit_entries(limit=100, before=before)
    return await render(request, "audit.html", entries=entries,
                        next_before=entries[-1].at if len(entries) == 100 else None)


# ---------------------------------------------------------------- add-on packs, enterprise plans

ADDON_NOTICES = {"pack-granted": "Add-on pack granted.",
                 "enterprise-set": "Enterprise plan set."}
ENTERPRISE_COUNTS = ("price_cents", "sessions_included", "overage_cents", "concurrency",
                     "requests_per_minute", "projects")


async def _form_account(request: web.Request, form: Any) -> Any:
    """The account a form names by id or email; 404 when there is none."""
    store = web_state(request).store
    ref = str(form.get("account", "")).strip()
    account = await store.get_account(ref) or await store.get_account_by_email(ref)
    if account is None:
        raise web.HTTPNotFound(text=f"no account {ref!r}")
    return account


def _whole(form: Any, name: str) -> int | None:
    """A whole-number field of a form; None when empty; 400 otherwise."""
    text = str(form.get(name, "")).strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"{name} must be a whole number") from exc


@operator
@form_post
async def grant_pack(request: web.Request, form: Any) -> web.Response:
    """``POST /admin/packs`` (``account`` id or email, ``pack`` of the
    catalog or ``sessions``): grant an add-on pack (``Addons.grant``)."""
    from voxgate.errors import InvalidRequest

    account = await _form_account(request, form)
    try:
        await _addons(request).grant(account.id, _actor(request),
                                     pack_id=str(form.get("pack", "")).strip() or None,
                                     sessions=_whole(form, "sessions"))
    except InvalidRequest as err:
        raise web.HTTPBadRequest(text=err.message) from err
    raise web.HTTPSeeOther("/admin?notice=pack-granted#addons")


@operator
@form_post
async def set_enterprise(request: web.Request, form: Any) -> web.Response:
    """``POST /admin/enterprise`` (``account``, ``name``, the counts of
    ``ENTERPRISE_COUNTS``, ``tiers`` as ``UP_TO:CENTS, …``): give the account
    its enterprise plan, synced to Stripe when billing is configured."""
    from voxgate.errors import InvalidRequest
    from voxgate.models.enterprise import parse_tier

    account = await _form_account(request, form)
    terms: dict[str, Any] = {"name": str(form.get("name", "")).strip() or "Enterprise"}
    for name in ENTERPRISE_COUNTS:
        value = _whole(form, name)
        if value is not None:
            terms[name] = value
    try:
        terms["tiers"] = [parse_tier(t) for t in str(form.get("tiers", "")).split(",")
                          if t.strip()]
        billing = billing_service(request.app)
        if billing is not None:
            await billing.set_enterprise_plan(account.id, terms, _actor(request))
        else:
            await _addons(request).set_enterprise(account.id, terms, _actor(request))
    except (ValueError, InvalidRequest) as err:
        raise web.HTTPBadRequest(text=getattr(err, "message", str(err))) from err
    raise web.HTTPSeeOther("/admin?notice=enterprise-set#addons")


def parse_spend_limit(text: str) -> Decimal | None:
    """The spend-limit form's USD: a decimal ≥ 0 with at most 2 decimals,
    or empty / ``none`` to fall back to the plan's (as ``voxgate admin
    set-spend-limit``).

    Raises:
        ValueError: anything else.
    """
    if text.strip().lower() in ("", "none", "null"):
        return None
    limit = parse_spend_limit_usd(text.strip())
    assert limit is not None
    if limit != limit.quantize(Decimal("0.01")):
        raise ValueError(f"spend limit must be USD with at most 2 decimals, not {text!r}")
    return limit


@operator
@form_post
async def set_spend_limit(request: web.Request, form: Any) -> web.Response:
    """``POST /admin/spend-limit`` (``account`` id or email, ``usd``: USD a
    month, empty for none): the account's own provider spend limit
    (``Account.spend_limit_usd``, over its plan's), audited as
    ``account.spend_limit_set``. 400 for a value that is not USD ≥ 0."""
    state = web_state(request)
    account = await _form_account(request, form)
    try:
        limit = parse_spend_limit(str(form.get("usd", "")))
    except ValueError as err:
        raise web.HTTPBadRequest(text=str(err)) from err
    await state.store.update_account(account.id, spend_limit_usd=limit)
    await state.db.audit(_actor(request), "account.spend_limit_set", account.id,
                         {"spend_limit_usd": None if limit is None else str(limit)})
    raise web.HTTPSeeOther("/admin?notice=spend-limit-set#spend-limit")


def _actor(request: web.Request) -> str:
    """The audit log's actor: the signed-in operator's email."""
    user: Any = request.get(USER)
    return str(user.email)


def _addons(request: web.Request) -> Any:
    from voxgate.billing.addons import Addons
    from voxgate.billing.db import BillingDB

    state = web_state(request)
    return Addons(state.store, BillingDB(state.store), state.catalog)

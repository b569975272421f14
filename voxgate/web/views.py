"""Dashboard pages of a customer account: sign-up/in/out, dashboard,
sessions and receipts, CSV exports, projects and keys, billing, pricing
and the plan simulator.

Every handler is thin: parse the request, read the store, call the pure
code (``figures``, ``charts``), render. A user only ever sees their own
account: every id taken from a URL or a form is checked against
``request[ACCOUNT_KEY]`` and an id of another account is a 404.
"""

from __future__ import annotations

import calendar
import csv
import io
import re
import time
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from voxgate.metering import rules
from voxgate.models import Account, Plan, Reason, SessionRecord, figures
from voxgate.models.origins import parse_origins
from voxgate.proxy.api import ACCOUNT_KEY, usage_body
from voxgate.store.base import SessionFilter, period_of
from voxgate.store.plans import subscribed_plan
from voxgate.web import charts, receipts
from voxgate.web.auth import (
    USER,
    clear_challenge_cookie,
    clear_session_cookie,
    client_ip,
    form_post,
    hash_password,
    member,
    session_token,
    set_challenge_cookie,
    set_session_cookie,
    verify_or_dummy,
)
from voxgate.web.render import fmt_time, render
from voxgate.web.security import (
    MIN_PASSWORD_LEN,
    csv_cell,
    password_problem,
    retry_after_header,
    safe_next,
)
from voxgate.web.spend_view import spend_status
from voxgate.web.state import billing_service, web_state

__all__ = ["PAGE_SIZE", "SIGNUP_REFUSED"]

PAGE_SIZE = 25
ALERT_PERCENT = 80.0
BANNER_PERCENT = 85.0
SIMULATOR_DAYS = 30
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
NOTICES = {
    "project-created": "Project created.",
    "project-deleted": "Project deleted; its keys are revoked.",
    "key-revoked": "Key revoked.",
    "origins-saved": "Allowed origins saved.",
    "provider-key-saved": "The project's own OpenAI key is saved (encrypted; only its last 4 "
                          "characters are shown).",
    "provider-key-removed": "The project's own OpenAI key is removed: its sessions use the "
                            "server's key.",
    "welcome": "Welcome to voxgate! Create a project and an API key to start.",
    "2fa-enabled": "Two-factor sign-in is on.",
    "2fa-disabled": "Two-factor sign-in is off.",
}
# The same words whether or not the email is registered (no enumeration).
SIGNUP_REFUSED = ("We could not create an account with these details. If you already have "
                  "an account, sign in instead, or use another email address.")


def _account(request: web.Request) -> Account:
    return request[ACCOUNT_KEY]


async def account_plan(request: web.Request, account: Account, now: float | None = None) -> Plan:
    """The account's plan as admission sees it: its enterprise plan if it
    has one, its add-on packs counted in (``Gateway.account_plan``)."""
    from voxgate.proxy.keys import GATEWAY

    return await request.app[GATEWAY].account_plan(account, now)


async def _audit(request: web.Request, action: str, **detail: Any) -> None:
    user = request.get(USER)
    account = request.get(ACCOUNT_KEY)
    await web_state(request).db.audit(user.email if user else "anonymous", action,
                                      account.id if account else detail.get("account_id"), detail)


# ---------------------------------------------------------------- sign-up / in / out

async def index(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/dashboard" if request.get(USER) else "/signin")


def _wanted_plan(state: Any, value: Any) -> str | None:
    """A paid plan picked on the pricing page (to upgrade to after sign-up)."""
    plan = state.catalog.plans.get(str(value or ""))
    return plan.id if plan is not None and plan.is_paid else None


async def signup_page(request: web.Request) -> web.Response:
    return await render(request, "signup.html", email="", name="", error=None,
                        plan=_wanted_plan(web_state(request), request.query.get("plan")),
                        min_password_len=MIN_PASSWORD_LEN)


async def too_many(request: web.Request, wait_s: float, template: str,
                   **context: Any) -> web.Response:
    """429 on the page of the form, with ``Retry-After`` (whole seconds)."""
    seconds = retry_after_header(wait_s)
    response = await render(request, template, status=429,
                            error=f"Too many attempts: try again in {seconds} s.", **context)
    response.headers["Retry-After"] = seconds
    return response


async def signin_page(request: web.Request) -> web.Response:
    """The sign-in form; ``next`` is kept only as a same-site path
    (``safe_next``)."""
    if request.get(USER) is not None:
        raise web.HTTPSeeOther(safe_next(request.query.get("next")))
    return await render(request, "signin.html", email="", error=None,
                        next=safe_next(request.query.get("next")))


async def signed_in(request: web.Request, user: Any, to: str,
                    mfa: bool = False) -> web.HTTPSeeOther:
    """A fresh session for ``user`` (the old one ended): a 303 to ``to``
    setting its cookie. ``mfa``: the second factor was passed."""
    state = web_state(request)
    old = session_token(request)
    if old:
        await state.db.end_session(old)
    token, _ = await state.db.start_session(user, mfa=mfa)
    response = web.HTTPSeeOther(to)
    set_session_cookie(response, token, state.secure_cookies)
    clear_challenge_cookie(response)
    return response


async def signin_failed(request: web.Request, email: str, account_id: str | None,
                        now: float) -> None:
    """Count a failed password or code for the client's IP and ``email``;
    the failure that fills a window is audited (``signin.throttled``)."""
    state = web_state(request)
    ip = client_ip(request)
    limits = state.limits
    if limits.failed_account.record(email, now) == limits.failed_account.limit:
        await state.db.audit(email or "anonymous", "signin.throttled", account_id,
                             {"scope": "account", "email": email, "ip": ip,
                              "failures": limits.failed_account.limit,
                              "window_s": limits.failed_account.window_s})
    if limits.failed_ip.record(ip, now) == limits.failed_ip.limit:
        await state.db.audit("anonymous", "signin.throttled", None,
                             {"scope": "ip", "ip": ip, "failures": limits.failed_ip.limit,
                              "window_s": limits.failed_ip.window_s})


def signin_wait(request: web.Request, email: str, now: float) -> float:
    """Seconds before this client may try a password or code for ``email``
    again (0.0: now)."""
    limits = web_state(request).limits
    ip = client_ip(request)
    return max(limits.failed_ip.retry_after(ip, now),
               limits.failed_account.retry_after(email, now))


def _text(form: MultiDictProxy, name: str) -> str:
    value = form.get(name, "")
    return value if isinstance(value, str) else ""


@form_post
async def signup(request: web.Request, form: MultiDictProxy) -> web.Response:
    """Create an account and its user, and sign in.

    400 for an invalid email, a password the policy refuses
    (``password_problem``) or an email that cannot be used: the last with
    ``SIGNUP_REFUSED``, the same words and the same argon2 work whether or
    not the email is registered. 429 (``Retry-After``) past
    ``DashboardLimits.SIGNUP_PER_10_MIN`` per IP.
    """
    state = web_state(request)
    email = _text(form, "email").strip().lower()
    name = _text(form, "name").strip()[:100]
    password = _text(form, "password")
    wanted = _wanted_plan(state, form.get("plan"))
    page = {"email": email, "name": name, "plan": wanted, "min_password_len": MIN_PASSWORD_LEN}
    wait = state.limits.signup_ip.hit(client_ip(request), time.time())
    if wait:
        return await too_many(request, wait, "signup.html", **page)
    error = None
    if not _EMAIL.match(email) or len(email) > 254:
        error = "Enter a valid email address."
    else:
        error = password_problem(password, [email, name])
    if error:
        return await render(request, "signup.html", status=400, error=error, **page)
    password_hash = await hash_password(password)
    if (await state.db.user_by_email(email) is not None
            or await state.store.get_account_by_email(email) is not None):
        return await render(request, "signup.html", status=400, error=SIGNUP_REFUSED, **page)
    account = await state.store.create_account(email, state.catalog.default_plan, name=name)
    user = await state.db.create_user(account.id, email, password_hash)
    await state.db.audit(email, "user.signup", account.id, {"plan": account.plan_id})
    raise await signed_in(request, user, "/billing" if wanted else "/dashboard?notice=welcome")


@form_post
async def signin(request: web.Request, form: MultiDictProxy) -> web.Response:
    """Check the password; then sign in, or (two-factor users) set the
    ``vg_2fa`` cookie and go to ``/signin/2fa``.

    401 for a wrong email or password (as slow for an unknown email: a
    dummy hash is verified). 429 (``Retry-After``) past
    ``DashboardLimits.SIGNIN_PER_MIN`` requests per IP, or when the IP or
    the email has too many recent failures.
    """
    state = web_state(request)
    email = _text(form, "email").strip().lower()[:320]
    password = _text(form, "password")
    to = safe_next(_text(form, "next"))
    now = time.time()
    wait = state.limits.signin_ip.hit(client_ip(request), now) or signin_wait(request, email, now)
    if wait:
        return await too_many(request, wait, "signin.html", email=email, next=to)
    user = await state.db.user_by_email(email) if email else None
    if not await verify_or_dummy(user, password):
        await signin_failed(request, email, user.account_id if user else None, now)
        return await render(request, "signin.html", status=401, email=email, next=to,
                            error="Wrong email or password.")
    assert user is not None
    state.limits.failed_account.clear(email)
    if user.has_2fa:
        token = await state.db.start_challenge(user, to, now)
        response = web.HTTPSeeOther("/signin/2fa")
        set_challenge_cookie(response, token, state.secure_cookies)
        raise response
    raise await signed_in(request, user, to)


@form_post
async def signout(request: web.Request, form: MultiDictProxy) -> web.Response:
    token = session_token(request)
    if token:
        await web_state(request).db.end_session(token)
    response = web.HTTPSeeOther("/signin")
    clear_session_cookie(response)
    raise response


# ---------------------------------------------------------------- dashboard

def _day_series(rows: list[Any], period: str) -> tuple[list[str], list[int], list[int], list[float]]:
    by_day = {r.day: r for r in rows}
    days = figures.days_of(period)
    billable = [by_day[d].billable if d in by_day else 0 for d in days]
    failed = [by_day[d].not_billable if d in by_day else 0 for d in days]
    minutes = [figures.minutes_used(by_day[d].billable_minutes) if d in by_day else 0.0
               for d in days]
    return [d[8:].lstrip("0") for d in days], billable, failed, minutes


async def usage_charts(state: Any, account_id: str, now: float) -> dict[str, Any]:
    """Sessions per day by verdict and billable minutes per day, for the
    current and the previous period (SVG)."""
    current = period_of(now)
    previous = figures.previous_period(current)
    start, _ = figures.period_bounds(previous)
    _, end = figures.period_bounds(current)
    rows = await state.db.sessions_per_day(account_id, start, end)
    out: dict[str, Any] = {"current": current, "previous": previous}
    minutes = []
    for key, period in (("current", current), ("previous", previous)):
        labels, billable, failed, mins = _day_series(rows, period)
        out[f"{key}_sessions"] = charts.stacked_bars(
            f"Sessions per day, {period}", labels,
            [charts.Series("billable", billable, "s-ok"),
             charts.Series("not billable", failed, "s-fail")], unit="sessions", integer=True)
        out[f"{key}_total"] = (sum(billable), sum(failed))
        minutes.append((period, labels, mins))
    labels = max((m[1] for m in minutes), key=len)
    if current == period_of():  # the future days of this month stay empty
        today = int(time.strftime("%d", time.gmtime(now)))
        minutes[0] = (minutes[0][0], minutes[0][1], minutes[0][2][:today])
    out["minutes"] = charts.lines(
        "Billable minutes per day", labels,
        [charts.Series(minutes[0][0], minutes[0][2], "l-cur"),
         charts.Series(minutes[1][0], minutes[1][2], "l-prev")], unit="minutes")
    return out


def badge_html(base_url: str) -> str:
    """The "Powered by voxgate" snippet free-plan accounts put in their app."""
    return (f'<a href="{base_url}/pricing?ref=badge" target="_blank" rel="noopener" '
            'style="display:inline-flex;align-items:center;gap:6px;padding:4px 10px;'
            'border:1px solid #d0d7de;border-radius:999px;font:12px system-ui,sans-serif;'
            'color:#24292f;text-decoration:none;background:#fff">'
            '<span style="color:#5b3cc4">&#9679;</span> Powered by voxgate</a>')


@member
async def dashboard(request: web.Request) -> web.Response:
    state = web_state(request)
    account = _account(request)
    now = time.time()
    plan = await account_plan(request, account, now)
    usage = await state.store.get_usage(account.id, period_of(now))
    packs = await state.store.pack_balance(account.id, usage.period, now)
    quota = usage_body(plan, usage, state.catalog, packs)
    percent = quota["percentUsed"] or 0.0
    upgrades = [p for p in state.catalog.plans.values()
                if p.price_cents > plan.price_cents and p.id != plan.id]
    return await render(
        request, "dashboard.html", plan=plan, quota=quota, percent=min(100.0, percent),
        alert=percent >= ALERT_PERCENT, banner=percent >= BANNER_PERCENT and bool(upgrades),
        upgrade=upgrades[0] if upgrades else None,
        used_minutes=quota["minutesUsed"],
        charts=await usage_charts(state, account.id, now),
        badge=badge_html(state.base_url) if not plan.is_paid else None,
        notice=NOTICES.get(request.query.get("notice", "")),
        projects=await state.store.list_projects(account.id))


# ---------------------------------------------------------------- sessions

VERDICT_CHOICES = ("billable", "not_billable") + tuple(r for r in Reason.ALL if r != "billable")


def _date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(calendar.timegm(time.strptime(value, "%Y-%m-%d")))
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"bad date {value!r}: use YYYY-MM-DD") from exc


def session_filter(query: Any, projects: dict[str, str]) -> SessionFilter:
    """``project`` (one of ``projects``, else 404), ``verdict``
    (``billable``, ``not_billable`` or a reason), ``from`` and ``to``
    (``YYYY-MM-DD``, UTC, both inclusive)."""
    if query.get("project") and query["project"] not in projects:
        raise web.HTTPNotFound(text="no such project")
    verdict = query.get("verdict") or None
    if verdict is not None and verdict not in VERDICT_CHOICES:
        raise web.HTTPBadRequest(text=f"unknown verdict {verdict!r}")
    until = _date(query.get("to"))
    return SessionFilter(
        project_id=query.get("project") or None,
        billable=True if verdict == "billable" else False if verdict == "not_billable" else None,
        reason=verdict if verdict not in (None, "billable", "not_billable") else None,
        since=_date(query.get("from")),
        until=None if until is None else until + 86400,
    )


@member
async def sessions_page(request: web.Request) -> web.Response:
    state = web_state(request)
    account = _account(request)
    names = await state.db.project_names(account.id)
    filters = session_filter(request.query, names)
    after = request.query.get("after") or None
    rows = await state.store.list_sessions(account.id, limit=PAGE_SIZE + 1, after=after,
                                           filters=filters)
    has_more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    query = {k: v for k, v in request.query.items() if k in ("project", "verdict", "from", "to")
             and v}
    return await render(
        request, "sessions.html", rows=rows, has_more=has_more, query=query,
        total=await state.store.count_sessions(account.id, filters),
        projects=await state.store.list_projects(account.id),
        names=names, verdicts=VERDICT_CHOICES,
        first_page=after is None, next_after=rows[-1].id if rows and has_more else None)


@member
async def receipt(request: web.Request) -> web.Response:
    """The session's receipt: the verdict in a sentence, the timeline, the
    measurements with units, the cost, and the raw fields (``receipts``)."""
    from voxgate.proxy.keys import GATEWAY

    state = web_state(request)
    account = _account(request)
    record = await state.store.get_session(request.match_info["session_id"])
    if record is None or record.account_id != account.id:
        raise web.HTTPNotFound(text="no such session")
    names = await state.db.project_names(account.id)
    measurements = record.measurements.to_dict()
    event_counts = measurements.pop("event_counts", {})
    return await render(request, "receipt.html", s=record, m=record.measurements,
                        measurements=measurements, event_counts=event_counts,
                        project=names.get(record.project_id, record.project_id),
                        sentence=receipts.verdict_sentence(record, request.app[GATEWAY].policy),
                        steps=receipts.timeline(record),
                        rows=receipts.measurement_rows(record, provider_cost=shows_provider_cost(request)),
                        cost=receipts.session_cost(record, await account_plan(request, account)))


def shows_provider_cost(request: web.Request) -> bool:
    """Whether the provider cost (the operator's) is shown: to operators,
    and to customers when ``[pricing] show_provider_cost`` is on."""
    from voxgate.proxy.keys import GATEWAY

    return bool(request.app[GATEWAY].settings.pricing.show_provider_cost
                or getattr(request.get(USER), "is_operator", False))


CSV_COLUMNS = ("id", "started_at", "ended_at", "project_id", "project", "transport", "model",
               "status", "duration_ms", "audio_in_ms", "audio_out_ms", "connect_ms",
               "ice_pair_type", "billable", "reason", "settlement", "rule")
COST_COLUMNS = ("provider_cost_usd", "provider_cost_reason")  # when shows_provider_cost


def _csv_row(s: SessionRecord, names: dict[str, str], cost: bool = False) -> list[Any]:
    """One CSV row; text cells that a spreadsheet would run as a formula
    (a client picks ``model``; a user names projects) are neutralised.
    ``cost``: the ``COST_COLUMNS`` too (USD to 1e-6; empty with the reason
    when unknown)."""
    m = s.measurements
    extra = () if not cost else (
        "" if s.provider_cost_usd is None else f"{s.provider_cost_usd:.6f}", s.provider_cost_note or "")
    return [csv_cell(v) for v in (
        s.id, fmt_time(s.started_at), fmt_time(s.ended_at), s.project_id,
        names.get(s.project_id, ""), s.transport, s.model, s.status, round(m.duration_ms),
        round(m.audio_in_ms), round(m.audio_out_ms),
        "" if m.connect_ms is None else round(m.connect_ms, 1), m.ice_pair_type or "",
        "" if s.billable is None else str(bool(s.billable)).lower(), s.reason or "",
        s.settlement, s.rule or "", *extra)]


@member
async def sessions_csv(request: web.Request) -> web.StreamResponse:
    """Every session matching the page's filters, newest first."""
    state = web_state(request)
    account = _account(request)
    names = await state.db.project_names(account.id)
    filters = session_filter(request.query, names)
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": 'attachment; filename="voxgate-sessions.csv"'})
    await response.prepare(request)
    buf = io.StringIO()
    writer = csv.writer(buf)
    cost = shows_provider_cost(request)
    writer.writerow(CSV_COLUMNS + (COST_COLUMNS if cost else ()))
    after = None
    while True:
        rows = await state.store.list_sessions(account.id, limit=500, after=after,
                                               filters=filters)
        for s in rows:
            writer.writerow(_csv_row(s, names, cost))
        await response.write(buf.getvalue().encode())
        buf.seek(0)
        buf.truncate()
        if len(rows) < 500:
            break
        after = rows[-1].id
    await response.write_eof()
    return response


@member
async def usage_csv(request: web.Request) -> web.Response:
    """Monthly usage, newest period first."""
    state = web_state(request)
    account = _account(request)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(("period", "plan", "sessions", "billable_sessions", "estimated_minutes",
                     "minutes_used", "audio_seconds", "bytes"))
    plan = await subscribed_plan(state.store, state.catalog, account)  # enterprise too
    for u in await state.store.list_usage(account.id):
        writer.writerow([csv_cell(v) for v in (
            u.period, plan.id, u.sessions, u.billable_sessions,
            state.catalog.estimated_minutes(u.billable_sessions),
            figures.minutes_used(u.minutes_used), round(u.audio_seconds, 1), u.bytes)])
    return web.Response(body=buf.getvalue().encode(), headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": 'attachment; filename="voxgate-usage.csv"'})


# ---------------------------------------------------------------- projects and keys

async def _projects_view(request: web.Request, status: int = 200, **extra: Any) -> web.Response:
    state = web_state(request)
    account = _account(request)
    plan = await account_plan(request, account)
    projects = await state.store.list_projects(account.id)
    keys = {p.id: await state.store.list_api_keys(p.id) for p in projects}
    admin_keys = await state.store.list_admin_keys(account.id)
    from voxgate.proxy.keys import GATEWAY

    return await render(
        request, "projects.html", status=status, plan=plan, projects=projects, keys=keys,
        admin_keys=admin_keys, byok=request.app[GATEWAY].provider_keys.enabled,
        at_limit=plan.projects is not None and len(projects) >= plan.projects,
        notice=NOTICES.get(request.query.get("notice", "")), **extra)


async def _own_project(request: web.Request) -> Any:
    project = await web_state(request).store.get_project(request.match_info["project_id"])
    if project is None or project.account_id != _account(request).id:
        raise web.HTTPNotFound(text="no such project")
    return project


@member
async def projects_page(request: web.Request) -> web.Response:
    return await _projects_view(request)


@member
@form_post
async def create_project(request: web.Request, form: MultiDictProxy) -> web.Response:
    state = web_state(request)
    account = _account(request)
    plan = await account_plan(request, account)
    name = str(form.get("name", "")).strip()[:80]
    if not name:
        return await _projects_view(request, 400, error="Give the project a name.")
    count = len(await state.store.list_projects(account.id))
    decision = rules.decide_admission(rules.Ask.PROJECT, plan, account.status,
                                     rules.Counters(projects=count))
    if isinstance(decision, rules.Refuse):
        return await _projects_view(request, decision.error.status, error=decision.error.message)
    project = await state.store.create_project(account.id, name)
    await _audit(request, "project.created", project_id=project.id, name=name)
    raise web.HTTPSeeOther("/projects?notice=project-created")


@member
@form_post
async def delete_project(request: web.Request, form: MultiDictProxy) -> web.Response:
    project = await _own_project(request)
    await web_state(request).store.delete_project(project.id)
    await _audit(request, "project.deleted", project_id=project.id, name=project.name)
    raise web.HTTPSeeOther("/projects?notice=project-deleted")


@member
@form_post
async def set_origins(request: web.Request, form: MultiDictProxy) -> web.Response:
    """The web origins the project's ephemeral keys may be used from: one
    per line or comma-separated; empty = any origin."""
    project = await _own_project(request)
    text = str(form.get("origins", ""))
    try:
        origins = parse_origins([o for o in text.replace(",", "\n").split() if o])
    except ValueError as exc:
        return await _projects_view(request, 400, error=f"{project.name}: {exc}")
    await web_state(request).store.update_project(project.id, allowed_origins=origins)
    await _audit(request, "project.origins_set", project_id=project.id,
                 allowed_origins=list(origins))
    raise web.HTTPSeeOther("/projects?notice=origins-saved")


@member
@form_post
async def create_key(request: web.Request, form: MultiDictProxy) -> web.Response:
    """Create a key and show its plaintext on this response only."""
    project = await _own_project(request)
    name = str(form.get("name", "")).strip()[:80]
    key, plaintext = await web_state(request).store.create_api_key(project.id, name)
    await _audit(request, "key.created", project_id=project.id, key_id=key.id,
                 prefix=key.prefix)
    return await _projects_view(request, new_key=plaintext, new_key_project=project)


@member
@form_post
async def create_admin_key(request: web.Request, form: MultiDictProxy) -> web.Response:
    """The account owner creates an admin key (account-wide reads, billing);
    its plaintext is on this response only."""
    account = _account(request)
    name = str(form.get("name", "")).strip()[:80]
    key, plaintext = await web_state(request).store.create_admin_key(account.id, name)
    await _audit(request, "admin_key.created", key_id=key.id, prefix=key.prefix)
    return await _projects_view(request, new_admin_key=plaintext)


@member
@form_post
async def revoke_admin_key(request: web.Request, form: MultiDictProxy) -> web.Response:
    state = web_state(request)
    key_id = request.match_info["key_id"]
    if key_id not in {k.id for k in await state.store.list_admin_keys(_account(request).id)}:
        raise web.HTTPNotFound(text="no such key")
    await state.store.revoke_admin_key(key_id)
    await _audit(request, "admin_key.revoked", key_id=key_id)
    raise web.HTTPSeeOther("/projects?notice=key-revoked")


@member
@form_post
async def revoke_key(request: web.Request, form: MultiDictProxy) -> web.Response:
    project = await _own_project(request)
    state = web_state(request)
    key_id = request.match_info["key_id"]
    if key_id not in {k.id for k in await state.store.list_api_keys(project.id)}:
        raise web.HTTPNotFound(text="no such key")
    await state.store.revoke_api_key(key_id)
    await _audit(request, "key.revoked", project_id=project.id, key_id=key_id)
    raise web.HTTPSeeOther("/projects?notice=key-revoked")


# ---------------------------------------------------------------- billing, pricing, simulator

@member
async def billing_page(request: web.Request) -> web.Response:
    return await _billing_view(request)


async def _billing_view(request: web.Request, error: str | None = None,
                        status: int = 200) -> web.Response:

    state = web_state(request)
    account = _account(request)
    now = time.time()
    plan = await account_plan(request, account, now)
    billing = billing_service(request.app)
    invoices: list[dict[str, Any]] = []
    invoices_error = None
    if billing is not None:
        try:
            invoices = list(await billing.invoices(account))
        except Exception as exc:  # noqa: BLE001 - shown on the page, not a 500
            invoices_error = f"invoices unavailable: {exc}"
    period = period_of()
    start, end = figures.period_bounds(period)
    from voxgate.proxy.keys import GATEWAY

    spend = await spend_status(request.app[GATEWAY], account, plan, period,
                               show_cost=shows_provider_cost(request))
    return await render(
        request, "billing.html", status=status, plan=plan, billing=billing is not None,
        spend=spend,
        plans=[p for p in state.catalog.plans.values() if p.is_paid and p.id != plan.id],
        invoices=invoices, invoices_error=invoices_error, error=error, period=period,
        period_start=start, period_end=end - 1, checkout=request.query.get("checkout"),
        usage=await state.store.get_usage(account.id, period),
        packs=await state.store.pack_balance(account.id, period, now),
        pack_offers=list(state.catalog.packs.values()))


@member
@form_post
async def billing_action(request: web.Request, form: MultiDictProxy) -> web.Response:
    """``action=upgrade`` (with ``plan``, ``enterprise`` for the account's
    own plan) → Stripe Checkout; ``action=buy-pack`` (with ``pack``) → Stripe
    Checkout for an add-on pack; ``action=manage`` → the customer portal."""

    billing = billing_service(request.app)
    account = _account(request)
    if billing is None:
        return await _billing_view(request, "Billing is not configured.", 503)
    action = form.get("action")
    try:
        if action == "upgrade":
            plan_id = str(form.get("plan", ""))
            if plan_id not in web_state(request).catalog.plans and plan_id != "enterprise":
                return await _billing_view(request, "Unknown plan.", 400)
            url = await billing.checkout_url(account, plan_id)
        elif action == "buy-pack":
            if str(form.get("pack", "")) not in web_state(request).catalog.packs:
                return await _billing_view(request, "Unknown add-on pack.", 400)
            url = await billing.pack_checkout_url(account, str(form.get("pack")))
        elif action == "manage":
            url = await billing.portal_url(account)
        else:
            return await _billing_view(request, "Unknown action.", 400)
    except Exception as exc:  # noqa: BLE001 - Stripe trouble is shown, not a 500
        return await _billing_view(request, f"Billing error: {exc}", 502)
    raise web.HTTPSeeOther(url)


async def pricing(request: web.Request) -> web.Response:
    state = web_state(request)
    current = None
    if request.get(USER) is not None:
        current = _account(request).plan_id
    return await render(request, "pricing.html", plans=list(state.catalog.plans.values()),
                        catalog=state.catalog, current=current)


@member
async def simulator(request: web.Request) -> web.Response:
    state = web_state(request)
    account = _account(request)
    since = time.time() - SIMULATOR_DAYS * 86400
    billable = await state.store.count_sessions(
        account.id, SessionFilter(billable=True, since=since, status="completed"))
    total = await state.store.count_sessions(
        account.id, SessionFilter(since=since, status="completed"))
    return await render(request, "simulator.html", billable=billable, total=total,
                        days=SIMULATOR_DAYS, since=since,
                        rows=figures.simulate(state.catalog, billable, account.plan_id))

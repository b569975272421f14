"""The operator's margin view (issue 21, item 3): ``/admin/margin`` — per
plan and per account, for one month (``?period=YYYY-MM``, default this
one), billable and non-billable sessions, revenue, the provider's cost of
each, margin and cost per billable session, the accounts with the lowest
margin first; a browser (``Accept: text/html``) gets the page with its
charts, anything else (or ``?format=json``) the JSON of
``voxgate.models.margin.Margin.to_json``. Operators only.

The figures are defined in ``voxgate.models.margin``.
"""

from __future__ import annotations

import re
import time

from aiohttp import web
from markupsafe import Markup

from voxgate.models.margin import Margin
from voxgate.proxy.http import json_response
from voxgate.store.base import period_of
from voxgate.store.queries.margin import read_margin, read_margin_history
from voxgate.web import charts
from voxgate.web.admin_views import members_told
from voxgate.web.auth import operator
from voxgate.web.render import render
from voxgate.web.state import web_state

__all__ = ["margin_page", "period_param", "HISTORY_MONTHS"]

HISTORY_MONTHS = 6
PERIOD_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
LINE_CLASSES = ("l-cur", "l-prev", "l-3", "l-4", "l-5", "l-6")


def period_param(value: str | None, now: float) -> str:
    """``?period=YYYY-MM`` (default: the month holding ``now``).

    Raises:
        web.HTTPBadRequest: another shape.
    """
    if not value:
        return period_of(now)
    if not PERIOD_RE.match(value):
        raise web.HTTPBadRequest(text="period must be YYYY-MM")
    return value


def _wants_html(request: web.Request) -> bool:
    if request.query.get("format") == "json":
        return False
    return "text/html" in request.headers.get("Accept", "")


def margin_charts(history: list[Margin], current: Margin) -> tuple[Markup, Markup]:
    """The page's SVG charts: billable sessions by provider cost this month;
    margin per plan over the months of ``history`` (USD, may go below 0)."""
    buckets = current.cost_histogram
    labels = [f"<{hi}" if hi is not None else f"≥{lo}" for lo, hi, _ in buckets]
    plans = sorted({p.key for m in history for p in m.plans})
    months = [m.period for m in history]
    series = []
    for i, plan in enumerate(plans):
        values = []
        for m in history:
            row = next((p for p in m.plans if p.key == plan), None)
            values.append(float(row.margin_usd) if row is not None else 0.0)
        series.append(charts.Series(plan, values, LINE_CLASSES[i % len(LINE_CLASSES)]))
    return (
        charts.stacked_bars(
            f"Billable sessions by provider cost (USD), {current.period}", labels,
            [charts.Series("sessions", [n for _, _, n in buckets], "s-ok")], integer=True),
        charts.lines("Margin per plan by month (USD)", months, series, unit="$"),
    )


@members_told
@operator
async def margin_page(request: web.Request) -> web.StreamResponse:
    """``GET /admin/margin[?period=YYYY-MM][&format=json]``."""
    state = web_state(request)
    now = time.time()
    period = period_param(request.query.get("period"), now)
    if not _wants_html(request):
        return json_response((await read_margin(state.store, state.catalog, period, now)).to_json())
    history = await read_margin_history(state.store, state.catalog, period, now, HISTORY_MONTHS)
    current = history[-1]
    cost_chart, margin_chart = margin_charts(history, current)
    return await render(request, "margin.html", m=current, history=history,
                        cost_chart=cost_chart, margin_chart=margin_chart)

"""Pure business figures for the dashboard: the plan simulator, the period
helpers and the operator analytics. No I/O: callers pass accounts, plan
history and counts in.

Periods are calendar months in UTC (``"YYYY-MM"``), as in metering.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from voxgate.models import Account, Plan, PlanCatalog

__all__ = [
    "PAYING_STATUSES",
    "PlanPrice",
    "simulate",
    "period_bounds",
    "previous_period",
    "is_paying",
    "states_at",
    "Analytics",
    "analytics",
    "history",
]

PAYING_STATUSES = ("active", "past_due")


# ---------------------------------------------------------------- periods

def period_bounds(period: str) -> tuple[float, float]:
    """[start, end) of ``"YYYY-MM"`` in Unix seconds (UTC)."""
    year, month = int(period[:4]), int(period[5:7])
    start = calendar.timegm((year, month, 1, 0, 0, 0))
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return float(start), float(calendar.timegm((year, month, 1, 0, 0, 0)))


def previous_period(period: str) -> str:
    year, month = int(period[:4]), int(period[5:7])
    year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return f"{year:04d}-{month:02d}"


def days_of(period: str) -> list[str]:
    """``YYYY-MM-DD`` of every day of the period."""
    start, end = period_bounds(period)
    n = round((end - start) / 86400)
    return [time.strftime("%Y-%m-%d", time.gmtime(start + 86400 * i)) for i in range(n)]


# ---------------------------------------------------------------- simulator

@dataclass(frozen=True, slots=True)
class PlanPrice:
    """One plan's price for the simulated sessions.

    Attributes:
        cost_cents: ``plan.cost_cents(billable)``.
        refused: billable sessions beyond a hard cap (they would have been
            refused, so they cost nothing but were not served).
        cheapest: the cheapest plan that would have served every session.
    """

    plan: Plan
    cost_cents: int
    refused: int
    cheapest: bool = False
    current: bool = False


def simulate(catalog: PlanCatalog, billable: int, current_plan: str = "") -> list[PlanPrice]:
    """Price ``billable`` sessions under every plan of the catalog, in catalog
    order; the cheapest plan that refuses nothing is marked (ties: the first)."""
    rows = []
    for plan in catalog.plans.values():
        refused = 0
        if plan.hard_cap and billable > (plan.sessions_included or 0):
            refused = billable - (plan.sessions_included or 0)
        rows.append(PlanPrice(plan, plan.cost_cents(billable), refused,
                              current=plan.id == current_plan))
    serving = [r for r in rows if r.refused == 0] or rows
    best = min(serving, key=lambda r: r.cost_cents)
    return [PlanPrice(r.plan, r.cost_cents, r.refused, r is best, r.current) for r in rows]


# ---------------------------------------------------------------- analytics

def is_paying(plan_id: str | None, status: str | None, catalog: PlanCatalog) -> bool:
    """On a paid plan (``Plan.is_paid``) with status active or past_due."""
    if plan_id is None or status not in PAYING_STATUSES:
        return False
    try:
        return catalog.get(plan_id).is_paid
    except KeyError:
        return False


def price_of(plan_id: str, catalog: PlanCatalog) -> int:
    try:
        return catalog.get(plan_id).price_cents
    except KeyError:
        return 0


def states_at(changes: Iterable[Any], t: float) -> dict[str, tuple[str, str]]:
    """Each account's (plan, status) at time ``t``, replaying the plan
    history (objects with ``at``, ``account_id``, ``new_plan``,
    ``new_status``) in time order; accounts without a change before ``t``
    did not exist yet."""
    state: dict[str, tuple[str, str]] = {}
    for c in sorted(changes, key=lambda c: c.at):
        if c.at >= t:
            break
        state[c.account_id] = (c.new_plan, c.new_status)
    return state


def churn(changes: list[Any], catalog: PlanCatalog, start: float, end: float) -> tuple[int, int]:
    """(paying at ``start``, of those: lost paid status in [start, end)).

    "Lost paid status" is a recorded change to status ``canceled`` (or any
    status other than active/past_due) or to a plan that is not paid; an
    account that cancels and subscribes again within the period still
    counts as churned."""
    at_start = {a for a, (p, s) in states_at(changes, start).items() if is_paying(p, s, catalog)}
    lost = {c.account_id for c in changes
            if start <= c.at < end and c.account_id in at_start
            and not is_paying(c.new_plan, c.new_status, catalog)}
    return len(at_start), len(lost)


@dataclass(slots=True)
class Analytics:
    """The operator figures (``GET /admin/analytics``). See ``analytics``."""

    period: str
    mrr: int
    active_users: int
    paid_users: int
    free_users: int
    conversion_rate: float
    churn_rate: float
    paid_at_period_start: int
    churned: int
    sessions_by_plan: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "mrr": self.mrr,
            "active_users": self.active_users,
            "paid_users": self.paid_users,
            "free_users": self.free_users,
            "conversion_rate": self.conversion_rate,
            "churn_rate": self.churn_rate,
            "paid_at_period_start": self.paid_at_period_start,
            "churned": self.churned,
            "sessions_by_plan": self.sessions_by_plan,
        }


def analytics(
    accounts: list[Account],
    catalog: PlanCatalog,
    changes: list[Any],
    active_account_ids: set[str],
    sessions_per_account: dict[str, int],
    period: str,
    now: float,
) -> Analytics:
    """The operator figures for ``period`` (normally the current one).

    Definitions (every account counts, operators' own accounts included):

    - ``mrr``: sum of ``price_cents`` of the current plan of every account on
      a paid plan (``Plan.is_paid``) whose status is active or past_due, in
      cents (pay-as-you-go plans add their 0 subscription; overage is not
      recurring revenue).
    - ``paid_users``: those accounts; ``free_users``: every other account
      (free plans, and canceled accounts whatever their plan), so
      ``paid_users + free_users`` is the number of accounts.
    - ``active_users``: accounts with at least one session started in the
      30 days before ``now`` (any verdict).
    - ``conversion_rate``: ``100 × paid_users / accounts`` (0 without accounts).
    - ``churn_rate``: ``100 × churned / paid_at_period_start`` where
      ``paid_at_period_start`` is the number of accounts paying at the first
      second of the period and ``churned`` those of them with a recorded
      change in [period start, now) to a non-paying state (status canceled, or
      a plan that is not paid). The state at period start is replayed from
      ``plan_changes``, which triggers on ``accounts`` fill on every plan or
      status change whoever makes it (billing's webhooks through
      ``store.update_account`` included); accounts that existed before the
      dashboard's migration are assumed unchanged since their creation.
      Accounts that start paying during the period are in neither number.
    - ``sessions_by_plan``: per current plan id, ``total`` completed sessions
      this period of the accounts on it and ``avg`` = total / accounts on
      that plan (accounts without sessions count as 0), rounded to 0.01.
    """
    paying = [a for a in accounts if is_paying(a.plan_id, a.status, catalog)]
    mrr = sum(price_of(a.plan_id, catalog) for a in paying)
    total = len(accounts)
    start, end = period_bounds(period)
    paid_start, churned = churn(changes, catalog, start, min(end, now + 1))
    by_plan: dict[str, list[int]] = {}
    for a in accounts:
        by_plan.setdefault(a.plan_id, []).append(sessions_per_account.get(a.id, 0))
    return Analytics(
        period=period,
        mrr=mrr,
        active_users=len({a.id for a in accounts} & active_account_ids),
        paid_users=len(paying),
        free_users=total - len(paying),
        conversion_rate=round(100.0 * len(paying) / total, 2) if total else 0.0,
        churn_rate=round(100.0 * churned / paid_start, 2) if paid_start else 0.0,
        paid_at_period_start=paid_start,
        churned=churned,
        sessions_by_plan={plan: {"avg": round(sum(v) / len(v), 2), "total": sum(v)}
                          for plan, v in sorted(by_plan.items())},
    )


def history(changes: list[Any], catalog: PlanCatalog, period: str, now: float,
            months: int = 6) -> list[dict[str, Any]]:
    """MRR, paid accounts, all accounts (at the end of each period, or now
    for the current one) and churn rate for the last ``months`` periods,
    oldest first, replayed from the plan history."""
    periods = [period]
    for _ in range(months - 1):
        periods.append(previous_period(periods[-1]))
    out = []
    for p in reversed(periods):
        start, end = period_bounds(p)
        at = min(end, now + 1)
        state = states_at(changes, at)
        paying = [(pl, s) for pl, s in state.values() if is_paying(pl, s, catalog)]
        paid_start, churned = churn(changes, catalog, start, at)
        out.append({
            "period": p,
            "mrr": sum(price_of(pl, catalog) for pl, _ in paying),
            "paid_users": len(paying),
            "accounts": len(state),
            "churn_rate": round(100.0 * churned / paid_start, 2) if paid_start else 0.0,
        })
    return out

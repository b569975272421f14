"""Pure business figures: "minutes used", the period helpers, the plan
simulator and the operator analytics. No I/O: callers pass accounts, plan
history and counts in. Shown by the dashboard (``voxgate.web``), the usage
API (``voxgate.proxy.api``), the jobs and billing's notices.

Periods are calendar months in UTC (``"YYYY-MM"``), as in metering.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from voxgate.models.accounts import Account
from voxgate.models.enterprise import plan_of
from voxgate.models.plans import Plan, PlanCatalog

__all__ = [
    "PAYING_STATUSES",
    "minutes_used",
    "PlanPrice",
    "simulate",
    "period_bounds",
    "previous_period",
    "is_paying",
    "standing",
    "states_at",
    "Analytics",
    "analytics",
    "history",
]

PAYING_STATUSES = ("active", "past_due")


# ---------------------------------------------------------------- minutes

def minutes_used(billable_minutes: float) -> float:
    """"Minutes used", the one definition every page, API and export shows:
    the summed duration of the billable sessions, in minutes, to 0.1 min.

    ``billable_minutes`` is that sum unrounded (``MonthlyUsage.minutes_used``
    for a period, ``DayRow.billable_minutes`` for a day)."""
    return round(max(0.0, billable_minutes), 1)


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

def is_paying(plan_id: str | None, status: str | None, catalog: PlanCatalog,
              account_id: str = "", enterprise: Mapping[str, Plan] | None = None) -> bool:
    """On a paid plan (``Plan.is_paid``) with status active or past_due."""
    if status not in PAYING_STATUSES:
        return False
    plan = plan_of(catalog, plan_id, (enterprise or {}).get(account_id))
    return plan is not None and plan.is_paid


def standing(plan_id: str | None, status: str | None, subscribed: bool,
             catalog: PlanCatalog, account_id: str = "",
             enterprise: Mapping[str, Plan] | None = None) -> str:
    """``"paying"``: on a paid plan, active or past_due, through a Stripe
    subscription; ``"comped"``: the same without a subscription (a plan an
    operator set); ``"free"``: anything else."""
    if not is_paying(plan_id, status, catalog, account_id, enterprise):
        return "free"
    return "paying" if subscribed else "comped"


def price_of(plan_id: str, catalog: PlanCatalog, account_id: str = "",
             enterprise: Mapping[str, Plan] | None = None) -> int:
    """The plan's monthly subscription price, in cents (0 when unknown)."""
    plan = plan_of(catalog, plan_id, (enterprise or {}).get(account_id))
    return plan.price_cents if plan is not None else 0


def states_at(changes: Iterable[Any], t: float) -> dict[str, tuple[str, str, bool]]:
    """Each account's (plan, status, subscribed) at time ``t``, replaying
    the plan history (objects with ``at``, ``account_id``, ``new_plan``,
    ``new_status``, ``subscribed``) in time order; accounts without a change
    before ``t`` did not exist yet."""
    state: dict[str, tuple[str, str, bool]] = {}
    for c in sorted(changes, key=lambda c: c.at):
        if c.at >= t:
            break
        if c.account_id in state and getattr(c, "source", None) == "created":
            # an account's creation is its first change: one stamped a few µs
            # after a change made in the same millisecond (SQLite's trigger
            # clock, julianday('now'), is coarser than the creation's) is
            # not taken as undoing it
            continue
        state[c.account_id] = (c.new_plan, c.new_status, bool(c.subscribed))
    return state


def churn(changes: list[Any], catalog: PlanCatalog, start: float, end: float,
          enterprise: Mapping[str, Plan] | None = None) -> tuple[int, int]:
    """(paying at ``start``, of those: stopped paying in [start, end)).

    "Stopped paying" is a recorded change to any standing but ``"paying"``
    (status canceled, a plan that is not paid, or the Stripe subscription
    gone); an account that cancels and subscribes again within the period
    still counts as churned."""
    at_start = {a for a, (p, s, sub) in states_at(changes, start).items()
                if standing(p, s, sub, catalog, a, enterprise) == "paying"}
    lost = {c.account_id for c in changes
            if start <= c.at < end and c.account_id in at_start
            and standing(c.new_plan, c.new_status, bool(c.subscribed), catalog, c.account_id,
                         enterprise) != "paying"}
    return len(at_start), len(lost)


@dataclass(slots=True)
class Analytics:
    """The operator figures (``GET /admin/analytics``). See ``analytics``."""

    period: str
    mrr: int
    active_users: int
    paid_users: int
    comped_users: int
    free_users: int
    conversion_rate: float
    churn_rate: float
    paid_at_period_start: int
    churned: int
    operator_accounts: int = 0
    sessions_by_plan: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "mrr": self.mrr,
            "active_users": self.active_users,
            "paid_users": self.paid_users,
            "comped_users": self.comped_users,
            "free_users": self.free_users,
            "conversion_rate": self.conversion_rate,
            "churn_rate": self.churn_rate,
            "paid_at_period_start": self.paid_at_period_start,
            "churned": self.churned,
            "operator_accounts": self.operator_accounts,
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
    operator_account_ids: Collection[str] = frozenset(),
    enterprise: Mapping[str, Plan] | None = None,
) -> Analytics:
    """The operator figures for ``period`` (normally the current one).

    Definitions. Customers are the accounts not in ``operator_account_ids``
    (the accounts of operator users, counted apart in ``operator_accounts``
    and left out of every other figure):

    - ``mrr``: sum of ``price_cents`` of the current plan of every paying
      customer (``standing`` ``"paying"``: a paid plan, status active or
      past_due, a Stripe subscription), in cents (pay-as-you-go plans add
      their 0 subscription; overage is not recurring revenue). An account on
      an enterprise plan counts with its own terms (``enterprise``: account
      id → its enterprise Plan; without them the account is not paying).
    - ``paid_users``: those customers; ``comped_users``: customers on a paid
      plan without a Stripe subscription (set by an operator), no MRR;
      ``free_users``: every other customer (free plans, and canceled
      accounts whatever their plan), so the three add up to the customers.
    - ``active_users``: customers with at least one session started in the
      30 days before ``now`` (any verdict).
    - ``conversion_rate``: ``100 × paid_users / customers`` (0 without any).
    - ``churn_rate``: ``100 × churned / paid_at_period_start`` where
      ``paid_at_period_start`` is the number of customers paying at the first
      second of the period and ``churned`` those of them with a recorded
      change in [period start, now) to a standing other than paying. The
      state at period start is replayed from ``plan_changes``, which triggers
      on ``accounts`` fill on every plan, status or subscription change
      whoever makes it (billing's webhooks through ``store.update_account``
      included). Customers that start paying during the period are in
      neither number.
    - ``sessions_by_plan``: per current plan id, ``total`` completed sessions
      this period of the customers on it and ``avg`` = total / customers on
      that plan (customers without sessions count as 0), rounded to 0.01.
    """
    operators = set(operator_account_ids)
    customers = [a for a in accounts if a.id not in operators]
    standings = {a.id: standing(a.plan_id, a.status, a.stripe_subscription_id is not None,
                                catalog, a.id, enterprise) for a in customers}
    paying = [a for a in customers if standings[a.id] == "paying"]
    comped = sum(1 for v in standings.values() if v == "comped")
    total = len(customers)
    start, end = period_bounds(period)
    paid_start, churned = churn([c for c in changes if c.account_id not in operators],
                                catalog, start, min(end, now + 1), enterprise)
    by_plan: dict[str, list[int]] = {}
    for a in customers:
        by_plan.setdefault(a.plan_id, []).append(sessions_per_account.get(a.id, 0))
    return Analytics(
        period=period,
        mrr=sum(price_of(a.plan_id, catalog, a.id, enterprise) for a in paying),
        active_users=len(set(standings) & active_account_ids),
        paid_users=len(paying),
        comped_users=comped,
        free_users=total - len(paying) - comped,
        conversion_rate=round(100.0 * len(paying) / total, 2) if total else 0.0,
        churn_rate=round(100.0 * churned / paid_start, 2) if paid_start else 0.0,
        paid_at_period_start=paid_start,
        churned=churned,
        operator_accounts=len(operators & {a.id for a in accounts}),
        sessions_by_plan={plan: {"avg": round(sum(v) / len(v), 2), "total": sum(v)}
                          for plan, v in sorted(by_plan.items())},
    )


def history(changes: list[Any], catalog: PlanCatalog, period: str, now: float,
            months: int = 6, operator_account_ids: Collection[str] = frozenset(),
            enterprise: Mapping[str, Plan] | None = None) -> list[dict[str, Any]]:
    """MRR, paying, comped and all customers (at the end of each period, or
    now for the current one) and churn rate for the last ``months``
    periods, oldest first, replayed from the plan history; the accounts in
    ``operator_account_ids`` are left out (definitions as in ``analytics``;
    enterprise accounts count with their current terms)."""
    operators = set(operator_account_ids)
    changes = [c for c in changes if c.account_id not in operators]
    periods = [period]
    for _ in range(months - 1):
        periods.append(previous_period(periods[-1]))
    out = []
    for p in reversed(periods):
        start, end = period_bounds(p)
        at = min(end, now + 1)
        state = states_at(changes, at)
        kinds = [(pl, a, standing(pl, s, sub, catalog, a, enterprise))
                 for a, (pl, s, sub) in state.items()]
        paid_start, churned = churn(changes, catalog, start, at, enterprise)
        out.append({
            "period": p,
            "mrr": sum(price_of(pl, catalog, a, enterprise) for pl, a, k in kinds if k == "paying"),
            "paid_users": sum(1 for _, _, k in kinds if k == "paying"),
            "comped_users": sum(1 for _, _, k in kinds if k == "comped"),
            "accounts": len(state),
            "churn_rate": round(100.0 * churned / paid_start, 2) if paid_start else 0.0,
        })
    return out

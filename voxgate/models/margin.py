"""What voxgate earned against what the provider charged, per month, plan
and account (issue 21, "Margin for the operator"). Pure: the store reads
the figures (``voxgate.store.queries.margin``), this module adds them up.

Definitions, for one period (``YYYY-MM``, UTC):

- **revenue** (cents) of an account: what it was invoiced or owes for the
  period —
  - ``subscription_cents``: its plan's monthly price when it is *paying*
    (``voxgate.models.figures.standing``: a paid plan, active or past_due,
    with a Stripe subscription) at the end of the period (now for the
    current one); comped and free accounts pay none;
  - ``overage_cents``: for a paying account, the sessions past its
    included ones and past those its add-on packs paid for, priced by the
    plan (``Plan.cost_cents`` less the subscription: ``overage_cents`` each,
    or the enterprise plan's graduated tiers);
  - ``packs_cents``: the add-on packs it bought in the period (their
    ``price_cents``; operator grants are 0).
- **provider cost** (USD, exact decimals from micro-dollars): the
  ``provider_cost_usd`` of its sessions completed in the period, split into
  *billable* sessions and *non-billable* ones — the latter is what the
  "failed sessions are free" guarantee costs. Sessions paid with the
  customer's own provider key (BYOK) are left out; sessions without a price
  (``provider_cost_usd`` null) are counted in ``unpriced_sessions``.
- **margin** = revenue − provider cost (billable + non-billable), in USD;
  ``cost_per_billable_usd`` = provider cost / billable sessions (null
  without any).

Accounts are listed lowest margin first; plans group their accounts by the
plan each was on at the end of the period.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from voxgate.models.enterprise import plan_of
from voxgate.models.figures import standing
from voxgate.models.plans import Plan, PlanCatalog

__all__ = ["AccountMonth", "MarginRow", "Margin", "margin", "usd", "usd_text", "COST_BUCKETS_USD"]

MICRO = Decimal("0.000001")
CENT = Decimal("0.01")
# Edges of the cost-per-session histogram, USD (the last bucket is open).
COST_BUCKETS_USD: tuple[Decimal, ...] = tuple(Decimal(x) for x in (
    "0", "0.01", "0.02", "0.05", "0.10", "0.20", "0.50", "1", "2", "5"))


def usd_text(value: Decimal | None) -> str:
    """An exact USD amount with its sign before the dollar: ``$0.126438``,
    ``-$1.250000``; ``—`` for None."""
    if value is None:
        return "—"
    return f"-${-value}" if value < 0 else f"${value}"


def usd(micros: int) -> Decimal:
    """Micro-dollars as exact USD (6 decimals)."""
    return (Decimal(micros) * MICRO).quantize(MICRO)


@dataclass(frozen=True, slots=True)
class AccountMonth:
    """One account's figures for a period, as the store reads them.

    Attributes:
        billable / non_billable: sessions completed in the period.
        cost_billable_micros / cost_non_billable_micros: their provider cost,
            micro-USD (priced sessions, operator-paid only).
        unpriced_sessions: completed sessions whose cost is unknown.
        pack_covered: billable sessions paid by add-on packs.
        packs_cents: packs bought in the period, cents.
    """

    account_id: str
    email: str
    billable: int = 0
    non_billable: int = 0
    cost_billable_micros: int = 0
    cost_non_billable_micros: int = 0
    unpriced_sessions: int = 0
    pack_covered: int = 0
    packs_cents: int = 0


@dataclass(slots=True)
class MarginRow:
    """Margin figures of one account or one plan (the sum of its accounts).
    Money: revenue in cents, costs and margin in exact USD."""

    key: str
    label: str
    plan_id: str
    accounts: int = 0
    billable: int = 0
    non_billable: int = 0
    unpriced_sessions: int = 0
    subscription_cents: int = 0
    overage_cents: int = 0
    packs_cents: int = 0
    cost_billable_usd: Decimal = Decimal(0)
    cost_non_billable_usd: Decimal = Decimal(0)

    @property
    def revenue_cents(self) -> int:
        return self.subscription_cents + self.overage_cents + self.packs_cents

    @property
    def revenue_usd(self) -> Decimal:
        return (Decimal(self.revenue_cents) * CENT).quantize(CENT)

    @property
    def cost_usd(self) -> Decimal:
        return self.cost_billable_usd + self.cost_non_billable_usd

    @property
    def margin_usd(self) -> Decimal:
        return self.revenue_usd - self.cost_usd

    @property
    def cost_per_billable_usd(self) -> Decimal | None:
        if not self.billable:
            return None
        return (self.cost_usd / self.billable).quantize(MICRO)

    def add(self, other: MarginRow) -> None:
        self.accounts += other.accounts
        self.billable += other.billable
        self.non_billable += other.non_billable
        self.unpriced_sessions += other.unpriced_sessions
        self.subscription_cents += other.subscription_cents
        self.overage_cents += other.overage_cents
        self.packs_cents += other.packs_cents
        self.cost_billable_usd += other.cost_billable_usd
        self.cost_non_billable_usd += other.cost_non_billable_usd

    def to_json(self) -> dict[str, Any]:
        """Money as decimal strings (USD) and integer cents, never floats."""
        per = self.cost_per_billable_usd
        return {
            "id": self.key, "name": self.label, "plan": self.plan_id,
            "accounts": self.accounts,
            "billable_sessions": self.billable, "non_billable_sessions": self.non_billable,
            "unpriced_sessions": self.unpriced_sessions,
            "revenue_cents": self.revenue_cents,
            "revenue": {"subscription_cents": self.subscription_cents,
                        "overage_cents": self.overage_cents, "packs_cents": self.packs_cents},
            "provider_cost_billable_usd": str(self.cost_billable_usd),
            "provider_cost_non_billable_usd": str(self.cost_non_billable_usd),
            "provider_cost_usd": str(self.cost_usd),
            "margin_usd": str(self.margin_usd),
            "cost_per_billable_session_usd": None if per is None else str(per),
        }


@dataclass(slots=True)
class Margin:
    """The margin view of a period: ``total``, ``plans`` (by plan id) and
    ``accounts`` (lowest margin first), plus the histogram of billable
    sessions' cost (``cost_histogram``: ``(low_usd, high_usd | None, n)``)."""

    period: str
    total: MarginRow
    plans: list[MarginRow]
    accounts: list[MarginRow]
    cost_histogram: list[tuple[Decimal, Decimal | None, int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "object": "margin", "period": self.period,
            "definitions": "see voxgate.models.margin; money: cents (int) and USD (decimal strings)",
            "total": self.total.to_json(),
            "plans": [p.to_json() for p in self.plans],
            "accounts": [a.to_json() for a in self.accounts],
            "cost_per_billable_session_histogram": [
                {"from_usd": str(lo), "to_usd": None if hi is None else str(hi), "sessions": n}
                for lo, hi, n in self.cost_histogram],
        }


def account_margin(row: AccountMonth, plan: Plan | None, state: str) -> MarginRow:
    """One account's ``MarginRow`` under ``plan`` with standing ``state``
    (``paying`` | ``comped`` | ``free``) at the end of the period."""
    out = MarginRow(row.account_id, row.email, plan.id if plan else "", accounts=1,
                    billable=row.billable, non_billable=row.non_billable,
                    unpriced_sessions=row.unpriced_sessions, packs_cents=row.packs_cents,
                    cost_billable_usd=usd(row.cost_billable_micros),
                    cost_non_billable_usd=usd(row.cost_non_billable_micros))
    if plan is not None and state == "paying":
        out.subscription_cents = plan.price_cents
        out.overage_cents = plan.cost_cents(row.billable, row.pack_covered) - plan.price_cents
    return out


def margin(period: str, rows: Iterable[AccountMonth],
           states: Mapping[str, tuple[str, str, bool]], catalog: PlanCatalog,
           enterprise: Mapping[str, Plan] | None = None,
           histogram: Iterable[int] = ()) -> Margin:
    """The margin view of ``period``.

    Args:
        rows: each account's figures (accounts without sessions or packs may
            be left out unless they pay a subscription: pass them too).
        states: account id → (plan id, status, subscribed) at the end of the
            period (``voxgate.models.figures.states_at``); an account missing
            here is taken as free on the catalog's default plan.
        enterprise: account id → its enterprise ``Plan``.
        histogram: the billable sessions per bucket of ``COST_BUCKETS_USD``
            (one count per edge; the last is the open bucket).
    """
    enterprise = enterprise or {}
    accounts: list[MarginRow] = []
    plans: dict[str, MarginRow] = {}
    total = MarginRow("total", "All accounts", "")
    for row in rows:
        plan_id, status, subscribed = states.get(row.account_id, (catalog.default_plan, "", False))
        plan = plan_of(catalog, plan_id, enterprise.get(row.account_id))
        state = standing(plan_id, status, subscribed, catalog, row.account_id, enterprise)
        acct = account_margin(row, plan, state)
        accounts.append(acct)
        key = plan_id or "unknown"
        group = plans.setdefault(key, MarginRow(key, plan.name if plan else key, key))
        group.add(acct)
        total.add(acct)
    accounts.sort(key=lambda a: (a.margin_usd, a.key))
    counts = list(histogram)
    edges = COST_BUCKETS_USD
    buckets = [(edges[i], edges[i + 1] if i + 1 < len(edges) else None,
                counts[i] if i < len(counts) else 0) for i in range(len(edges))]
    return Margin(period, total, sorted(plans.values(), key=lambda p: p.key), accounts, buckets)

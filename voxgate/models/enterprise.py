"""Enterprise plans: one account's own plan, set by an operator (pure).

The terms are stored per account as a JSON object (``plan_terms``) and turned
back into a ``Plan`` (``enterprise_plan``) whose id is
``ENTERPRISE_PLAN_ID`` and whose ``account_id`` is the account's:

- ``name`` (default ``"Enterprise"``), ``price_cents`` (monthly),
  ``sessions_included`` (the quota; None = unlimited), ``concurrency``,
  ``requests_per_minute``, ``projects`` (None = unlimited);
- ``overage_cents``: the price of each billable session beyond the included
  ones (None and no tiers = a hard cap);
- ``tiers``: ``[[up_to, unit_cents], …]`` graduated prices of those sessions
  (counted from the first charged one), ``up_to`` None (Stripe's ``"inf"``)
  for the last, whose price is then ``overage_cents``
  (https://docs.stripe.com/products-prices/pricing-models#graduated-pricing);
- ``max_session_s`` (seconds > 0; None = none of the plan's own) and
  ``models`` (the models its sessions may use; empty = any), as catalog
  plans have them.
"""

from __future__ import annotations

from typing import Any

from voxgate.models.plans import (
    ENTERPRISE_PLAN_ID,
    Plan,
    PlanCatalog,
    Tier,
    parse_max_session_s,
    parse_plan_models,
    parse_spend_limit_usd,
)

__all__ = ["enterprise_plan", "plan_terms", "parse_tiers", "parse_tier", "plan_of", "plan_for"]

_COUNTS = ("price_cents", "sessions_included", "overage_cents", "concurrency",
           "requests_per_minute", "projects")
_TERMS = {*_COUNTS, "name", "tiers", "support", "max_session_s", "models", "spend_limit_usd"}


def _count(name: str, value: Any, *, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a whole number ≥ 0")
    return value


def parse_tier(text: str) -> list[int | None]:
    """A tier as an operator types it: ``"1000:5"`` → ``[1000, 5]`` (sessions
    up to 1000 at 5 cents), ``"inf:3"`` → ``[None, 3]``.

    Raises:
        ValueError: not ``UP_TO:CENTS`` with whole numbers.
    """
    up_to, sep, cents = text.strip().partition(":")
    if not sep:
        raise ValueError(f"tier {text!r} is not UP_TO:CENTS")
    try:
        return [None if up_to.strip() == "inf" else int(up_to), int(cents)]
    except ValueError as exc:
        raise ValueError(f"tier {text!r} is not UP_TO:CENTS with whole numbers") from exc


def parse_tiers(value: Any, overage_cents: int | None) -> tuple[Tier, ...]:
    """Tiers from ``[[up_to, unit_cents], …]``: ``up_to`` increasing whole
    numbers ≥ 1, the last None (or the list closed by an ``overage_cents``
    tier up to ``"inf"``).

    Raises:
        ValueError: not such a list, ``up_to`` not increasing, no last tier
            without a limit.
    """
    if value in (None, [], ()):
        return ()
    if not isinstance(value, (list, tuple)):
        raise ValueError("tiers must be a list of [up_to, unit_cents]")
    tiers: list[Tier] = []
    floor = 0
    for i, item in enumerate(value):
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise ValueError(f"tier {i + 1} must be [up_to, unit_cents]")
        up_to, unit = item
        if tiers and tiers[-1].up_to is None:
            raise ValueError("only the last tier may have no up_to")
        if up_to is not None:
            up_to = _count(f"tier {i + 1} up_to", up_to)
            if up_to is None or up_to <= floor:
                raise ValueError(f"tier {i + 1} up_to must be above {floor}")
            floor = up_to
        tiers.append(Tier(up_to, _count(f"tier {i + 1} unit_cents", unit, optional=False) or 0))
    if tiers[-1].up_to is not None:
        if overage_cents is None:
            raise ValueError("the last tier needs no up_to (\"inf\"), or give overage_cents "
                             "for the sessions beyond it")
        tiers.append(Tier(None, overage_cents))
    return tuple(tiers)


def enterprise_plan(account_id: str, terms: dict[str, Any]) -> Plan:
    """The ``Plan`` of ``account_id``'s enterprise ``terms`` (see the module
    docstring).

    Raises:
        ValueError: an unknown term, a count that is not a whole number ≥ 0,
            bad tiers.
    """
    unknown = set(terms) - _TERMS
    if unknown:
        raise ValueError(f"unknown enterprise plan terms {sorted(unknown)}")
    counts = {name: _count(name, terms.get(name)) for name in _COUNTS}
    tiers = parse_tiers(terms.get("tiers"), counts["overage_cents"])
    overage = counts["overage_cents"]
    if tiers:
        overage = tiers[-1].unit_cents
    return Plan(
        id=ENTERPRISE_PLAN_ID,
        name=str(terms.get("name") or "Enterprise"),
        price_cents=counts["price_cents"] or 0,
        sessions_included=counts["sessions_included"],
        overage_cents=overage,
        concurrency=counts["concurrency"],
        requests_per_minute=100 if counts["requests_per_minute"] is None
        else counts["requests_per_minute"],
        projects=counts["projects"],
        support=str(terms.get("support") or "Dedicated"),
        tiers=tiers,
        account_id=account_id,
        max_session_s=parse_max_session_s(terms.get("max_session_s")),
        models=parse_plan_models(terms.get("models")),
        spend_limit_usd=parse_spend_limit_usd(terms.get("spend_limit_usd")),
    )


def plan_terms(plan: Plan) -> dict[str, Any]:
    """The stored terms of an enterprise ``plan`` (inverse of ``enterprise_plan``)."""
    return {
        "name": plan.name,
        "price_cents": plan.price_cents,
        "sessions_included": plan.plan_sessions_included,
        "overage_cents": plan.overage_cents,
        "concurrency": plan.concurrency,
        "requests_per_minute": plan.requests_per_minute,
        "projects": plan.projects,
        "support": plan.support,
        "tiers": [[t.up_to, t.unit_cents] for t in plan.tiers],
        "max_session_s": plan.max_session_s,
        "models": list(plan.models),
        "spend_limit_usd": None if plan.spend_limit_usd is None else str(plan.spend_limit_usd),
    }


def plan_of(catalog: PlanCatalog, plan_id: str | None,
            enterprise: Plan | None = None) -> Plan | None:
    """The plan ``plan_id`` names for one account: ``enterprise`` (that
    account's own enterprise plan, ``enterprise_plan`` of its stored terms)
    when ``plan_id`` is ``enterprise`` (``ENTERPRISE_PLAN_ID``, never a
    catalog id), else the catalog's plan (a legacy id resolves to its
    successor); None when neither knows it.

    The one place an account's plan id is turned into a ``Plan``:
    ``plan_for`` (stored terms, default plan as fallback), the store's
    ``voxgate.store.plans`` (the gateway, jobs, dashboard, admin command) and
    the analytics of ``voxgate.models.figures`` go through it.
    """
    if plan_id is None:
        return None
    if plan_id == ENTERPRISE_PLAN_ID:
        return enterprise
    try:
        return catalog.get(plan_id)
    except KeyError:
        return None


def plan_for(catalog: PlanCatalog, account_id: str, plan_id: str,
             terms: dict[str, Any] | None) -> Plan:
    """The plan an account with ``plan_id`` is on (``plan_of``): its
    enterprise plan (``terms``, as stored) when ``plan_id`` is
    ``enterprise``, else the catalog's plan (a legacy id resolves to its
    successor); the catalog's default plan when neither applies (unknown id,
    missing or bad terms)."""
    enterprise = None
    if plan_id == ENTERPRISE_PLAN_ID and terms is not None:
        try:
            enterprise = enterprise_plan(account_id, terms)
        except ValueError:
            enterprise = None
    return plan_of(catalog, plan_id, enterprise) or catalog.default

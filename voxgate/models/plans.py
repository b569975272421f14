"""Plans and the plan catalog.

A catalog is a TOML file (see ``catalogs/default.toml``): ``minutes_per_session``,
``default_plan``, a ``[plans.<id>]`` table per plan and an optional ``[legacy]``
table mapping retired plan ids to current ones.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from voxgate.errors import ConfigError

__all__ = ["Plan", "PlanCatalog", "load_catalog", "default_catalog_path"]


@dataclass(frozen=True, slots=True)
class Plan:
    """One plan of the catalog.

    Attributes:
        id: catalog key (``free``, ``starter``, ...).
        price_cents: monthly subscription price in cents.
        sessions_included: billable sessions included per month; None = unlimited.
        overage_cents: price per billable session beyond the included ones, in
            cents; None = no overage, so the plan has a hard cap at
            ``sessions_included``.
        concurrency: simultaneous sessions; None = unlimited.
        requests_per_minute: requests per minute per API key.
        projects: projects per account; None = unlimited.
    """

    id: str
    name: str
    price_cents: int = 0
    sessions_included: int | None = None
    overage_cents: int | None = None
    concurrency: int | None = None
    requests_per_minute: int = 100
    projects: int | None = None
    support: str = "Community"
    trial_days: int = 0

    @property
    def hard_cap(self) -> bool:
        """True when billable sessions beyond ``sessions_included`` are refused."""
        return self.overage_cents is None and self.sessions_included is not None

    @property
    def is_paid(self) -> bool:
        return self.price_cents > 0 or self.overage_cents is not None

    def charges_session(self, billable_before: int) -> bool:
        """Whether the next billable session must be paid for on its own
        (settled as a meter event), given ``billable_before`` billable
        sessions earlier in the period.

        Every billable session on pay-as-you-go; those beyond the included
        sessions on plans with an overage price; never on hard-capped or
        unlimited flat plans.
        """
        if self.overage_cents is None:
            return False
        return billable_before >= (self.sessions_included or 0)

    def cost_cents(self, billable_sessions: int) -> int:
        """Price of a month with ``billable_sessions`` billable sessions, in
        cents: the subscription plus overage. Sessions past a hard cap would
        have been refused, so they cost nothing extra."""
        extra = 0
        if self.overage_cents is not None:
            extra = max(0, billable_sessions - (self.sessions_included or 0)) * self.overage_cents
        return self.price_cents + extra


@dataclass(frozen=True, slots=True)
class PlanCatalog:
    """The plans on offer.

    Attributes:
        plans: plan id → Plan, in catalog order.
        default_plan: plan id new accounts get.
        minutes_per_session: the "≈ minutes" estimate per session.
        legacy: retired plan id → current plan id.
    """

    plans: dict[str, Plan]
    default_plan: str = "free"
    minutes_per_session: float = 2.0
    legacy: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def get(self, plan_id: str) -> Plan:
        """The plan with that id; a legacy id resolves to its successor.

        Raises:
            KeyError: unknown plan id.
        """
        plan = self.plans.get(plan_id)
        if plan is None and plan_id in self.legacy:
            plan = self.plans.get(self.legacy[plan_id])
        if plan is None:
            raise KeyError(plan_id)
        return plan

    @property
    def default(self) -> Plan:
        return self.plans[self.default_plan]

    def estimated_minutes(self, sessions: int) -> int:
        """The "≈ K minutes" figure for ``sessions`` sessions."""
        return round(sessions * self.minutes_per_session)


_PLAN_FIELDS = {
    "name", "price_cents", "sessions_included", "overage_cents", "concurrency",
    "requests_per_minute", "projects", "support", "trial_days",
}


def default_catalog_path() -> Path:
    return Path(str(resources.files("voxgate.models") / "catalogs" / "default.toml"))


def load_catalog(path: str | Path | None = None) -> PlanCatalog:
    """Read a catalog TOML file (the packaged default when ``path`` is None).

    Raises:
        ConfigError: unreadable file, unknown fields, bad values, a
            ``default_plan`` or legacy target that is not in the catalog.
    """
    path = Path(path) if path else default_catalog_path()
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read plan catalog {path}: {exc}") from exc
    plans: dict[str, Plan] = {}
    for plan_id, spec in (raw.get("plans") or {}).items():
        unknown = set(spec) - _PLAN_FIELDS
        if unknown:
            raise ConfigError(f"plan {plan_id!r}: unknown fields {sorted(unknown)}")
        try:
            plan = Plan(id=plan_id, **{"name": plan_id.title(), **spec})
        except TypeError as exc:
            raise ConfigError(f"plan {plan_id!r}: {exc}") from exc
        for name in ("price_cents", "sessions_included", "overage_cents", "concurrency",
                     "requests_per_minute", "projects", "trial_days"):
            value = getattr(plan, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ConfigError(f"plan {plan_id!r}: {name} must be a whole number ≥ 0")
        plans[plan_id] = plan
    if not plans:
        raise ConfigError(f"plan catalog {path} defines no plans")
    catalog = PlanCatalog(
        plans=plans,
        default_plan=raw.get("default_plan", next(iter(plans))),
        minutes_per_session=float(raw.get("minutes_per_session", 2.0)),
        legacy=dict(raw.get("legacy") or {}),
        source=str(path),
    )
    if catalog.default_plan not in plans:
        raise ConfigError(f"default_plan {catalog.default_plan!r} is not in the catalog")
    for old, new in catalog.legacy.items():
        if new not in plans:
            raise ConfigError(f"legacy plan {old!r} maps to unknown plan {new!r}")
    return catalog

"""Plans and the plan catalog.

A catalog is a TOML file (see ``catalogs/default.toml``): ``minutes_per_session``,
``default_plan``, a ``[plans.<id>]`` table per plan, ``[packs.<id>]`` tables
for add-on packs (``sessions``, ``price_cents``, ``name``) and an optional
``[legacy]`` table mapping retired plan ids to current ones.

An enterprise plan is one account's own plan (``ENTERPRISE_PLAN_ID``, never in
a catalog): made by an operator, stored per account, it may price sessions
beyond the included ones in graduated ``Tier``s as Stripe does
(https://docs.stripe.com/products-prices/pricing-models#graduated-pricing).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any

from voxgate.errors import ConfigError
from voxgate.models.accounts import Account

__all__ = ["Plan", "PlanCatalog", "Pack", "Tier", "graduated_cents", "load_catalog",
           "default_catalog_path", "ENTERPRISE_PLAN_ID", "MAX_SESSION_REASON", "session_expired_event",
           "fmt_limit_s", "parse_max_session_s", "parse_plan_models", "parse_spend_limit_usd",
           "spend_limit_of",
           "model_not_allowed_event",
           "update_model"]

ENTERPRISE_PLAN_ID = "enterprise"
MAX_SESSION_REASON = "max_session_s"
"""The close reason of a session voxgate ended at its plan's (or the relay's)
``max_session_s`` (``closed_by: "server"``)."""


@dataclass(frozen=True, slots=True)
class Tier:
    """One graduated price tier (Stripe's ``tiers[]`` with
    ``tiers_mode=graduated``): the sessions up to ``up_to`` (counted from the
    first charged session of the month, inclusive; None = ``"inf"``) that
    the tiers before it did not take cost ``unit_cents`` each."""

    up_to: int | None
    unit_cents: int


def graduated_cents(tiers: tuple[Tier, ...], quantity: int) -> int:
    """Price of ``quantity`` sessions under graduated ``tiers``, in cents:
    each session priced by the tier it falls into (pure, exact).

    Raises:
        ValueError: ``quantity`` is beyond the last tier's ``up_to``.
    """
    total = 0
    floor = 0
    for tier in tiers:
        top = quantity if tier.up_to is None else min(quantity, tier.up_to)
        if top > floor:
            total += (top - floor) * tier.unit_cents
            floor = top
        if floor >= quantity:
            return total
    if floor < quantity:
        raise ValueError(f"{quantity} sessions exceed the last tier (up to {floor})")
    return total


@dataclass(frozen=True, slots=True)
class Pack:
    """An add-on pack on offer: ``sessions`` extra billable sessions for
    ``price_cents``, bought once (Stripe Checkout ``mode=payment``)."""

    id: str
    name: str
    sessions: int
    price_cents: int


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
        tiers: graduated prices of the sessions charged beyond the included
            ones (enterprise plans); the last tier's ``up_to`` is None.
            Empty: ``overage_cents`` each.
        pack_sessions: how many of ``sessions_included`` come from the
            account's add-on packs (set by ``voxgate.models.packs.with_packs``).
        account_id: the account an enterprise plan belongs to; None for
            catalog plans.
        max_session_s: the longest a session may last, seconds; None = no
            limit of the plan's own (``relay.max_session_s`` still applies).
            A session reaching it gets ``session_expired_event`` and is
            closed normally; its verdict is decided as usual.
        spend_limit_usd: the monthly cap on an account's provider cost
            (USD, operator-paid sessions) before new sessions are refused
            (``insufficient_quota``); None = no cap. An account's own
            ``Account.spend_limit_usd`` overrides it.
        models: the models the plan's sessions may use (URL, client
            secret, ``session.update``); empty = any.
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
    tiers: tuple[Tier, ...] = ()
    pack_sessions: int = 0
    account_id: str | None = None
    max_session_s: float | None = None
    models: tuple[str, ...] = ()
    spend_limit_usd: Decimal | None = None

    def allows_model(self, model: str) -> bool:
        """Whether the plan's sessions may use ``model`` (any when ``models`` is empty)."""
        return not self.models or model in self.models

    def session_limit_s(self, relay_max_s: float | None) -> float | None:
        """The longest a session on this plan may last, seconds: the
        shorter of the plan's ``max_session_s`` and the relay's global
        ``relay_max_s`` (None: neither sets one)."""
        limits = [x for x in (self.max_session_s, relay_max_s) if x is not None and x > 0]
        return min(limits) if limits else None

    @property
    def plan_sessions_included(self) -> int | None:
        """The plan's own included sessions, packs left out."""
        if self.sessions_included is None:
            return None
        return self.sessions_included - self.pack_sessions

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

    def overage_cost_cents(self, charged_sessions: int) -> int:
        """Price of ``charged_sessions`` sessions beyond the included ones,
        in cents: graduated over ``tiers``, else ``overage_cents`` each
        (0 on plans without overage)."""
        if self.tiers:
            return graduated_cents(self.tiers, charged_sessions)
        return charged_sessions * (self.overage_cents or 0)

    def cost_cents(self, billable_sessions: int, pack_covered: int = 0) -> int:
        """Price of a month with ``billable_sessions`` billable sessions, in
        cents: the subscription plus overage. ``pack_covered`` of them were
        paid for by add-on packs and cost nothing here; the included count is
        the plan's own (``plan_sessions_included``). Sessions past a hard cap
        would have been refused, so they cost nothing extra."""
        if self.overage_cents is None and not self.tiers:
            return self.price_cents
        included = self.plan_sessions_included or 0
        charged = max(0, billable_sessions - included - pack_covered)
        return self.price_cents + self.overage_cost_cents(charged)


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
    packs: dict[str, Pack] = field(default_factory=dict)

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
    "requests_per_minute", "projects", "support", "trial_days", "max_session_s", "models",
    "spend_limit_usd",
}


def parse_max_session_s(value: Any) -> float | None:
    """A plan's ``max_session_s``: a number of seconds > 0, or None.

    Raises:
        ValueError: anything else.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or value == float("inf"):
        raise ValueError("max_session_s must be a number of seconds > 0")
    return float(value)


def spend_limit_of(account: Account, plan: Plan) -> Decimal | None:
    """The monthly provider-cost cap (USD) of ``account`` under ``plan``:
    the operator's own for that account, else the plan's; None = none."""
    return account.spend_limit_usd if account.spend_limit_usd is not None else plan.spend_limit_usd


def parse_spend_limit_usd(value: Any) -> Decimal | None:
    """A plan's (or an account's) ``spend_limit_usd``: USD ≥ 0 as a number
    or a decimal string (``25``, ``"12.50"``), or None.

    Raises:
        ValueError: anything else.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise ValueError("spend_limit_usd must be USD ≥ 0 (a number or a decimal string)")
    try:
        usd = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"spend_limit_usd must be USD ≥ 0, not {value!r}") from None
    if not usd.is_finite() or usd < 0:
        raise ValueError(f"spend_limit_usd must be USD ≥ 0, not {value!r}")
    return usd


def parse_plan_models(value: Any) -> tuple[str, ...]:
    """A plan's ``models``: a list of model ids (empty or None = any).

    Raises:
        ValueError: not a list of non-empty strings.
    """
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(m, str) and m.strip() for m in value):
        raise ValueError("models must be a list of model ids")
    return tuple(dict.fromkeys(m.strip() for m in value))


def fmt_limit_s(seconds: float) -> str:
    """A duration limit as OpenAI words its own: ``30 minutes``,
    ``1 minute``, ``6 seconds``, ``90 seconds``, ``1.5 seconds``."""
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute{'' if minutes == 1 else 's'}"
    whole = int(seconds) if float(seconds).is_integer() else seconds
    return f"{whole:g} second{'' if whole == 1 else 's'}"


def session_expired_event(limit_s: float, event_id: str | None = None) -> dict[str, Any]:
    """The ``error`` event a session gets when it reaches ``limit_s``, as
    OpenAI sends at its own maximum duration (server event ``error``,
    https://platform.openai.com/docs/api-reference/realtime-server-events/error):
    ``type: "invalid_request_error"``, ``code: "session_expired"``, a
    message naming the limit. Sent before a normal close (1000)."""
    event: dict[str, Any] = {
        "type": "error",
        "error": {"type": "invalid_request_error", "code": "session_expired",
                  "message": f"Your session hit the maximum duration of {fmt_limit_s(limit_s)}.",
                  "param": None, "event_id": None},
    }
    if event_id is not None:
        event["event_id"] = event_id
    return event


def update_model(event: dict[str, Any]) -> str | None:
    """The model a client ``session.update`` asks for (``session.model``),
    None when it names none."""
    session = event.get("session")
    model = session.get("model") if isinstance(session, dict) else None
    return model if isinstance(model, str) and model else None


def model_not_allowed_event(model: str, allowed: tuple[str, ...],
                            client_event_id: str | None = None) -> dict[str, Any]:
    """The ``error`` event answering a client ``session.update`` that asks
    for a model outside ``allowed`` (the plan's ``models``), which is then
    not relayed: OpenAI's error shape (server event ``error``), code
    ``model_not_allowed`` as a refused URL or client secret gets it (400),
    ``event_id`` the update's."""
    return {"type": "error", "error": {
        "type": "invalid_request_error", "code": "model_not_allowed",
        "message": f"model {model!r} is not allowed for your plan; allowed: {', '.join(allowed)}",
        "param": "session.model", "event_id": client_event_id}}


_PACK_FIELDS = {"name", "sessions", "price_cents"}


def _load_packs(raw: dict[str, Any]) -> dict[str, Pack]:
    packs: dict[str, Pack] = {}
    for pack_id, spec in (raw.get("packs") or {}).items():
        unknown = set(spec) - _PACK_FIELDS
        if unknown:
            raise ConfigError(f"pack {pack_id!r}: unknown fields {sorted(unknown)}")
        for name in ("sessions", "price_cents"):
            value = spec.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"pack {pack_id!r}: {name} must be a whole number ≥ 1")
        name = spec.get("name") or f"{spec['sessions']:,} extra sessions"
        packs[pack_id] = Pack(pack_id, str(name), spec["sessions"], spec["price_cents"])
    return packs


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
        if plan_id == ENTERPRISE_PLAN_ID:
            raise ConfigError(f"plan id {ENTERPRISE_PLAN_ID!r} is reserved for enterprise plans")
        unknown = set(spec) - _PLAN_FIELDS
        if unknown:
            raise ConfigError(f"plan {plan_id!r}: unknown fields {sorted(unknown)}")
        try:
            spec = {**spec, "max_session_s": parse_max_session_s(spec.get("max_session_s")),
                    "models": parse_plan_models(spec.get("models")),
                    "spend_limit_usd": parse_spend_limit_usd(spec.get("spend_limit_usd"))}
            plan = Plan(id=plan_id, **{"name": plan_id.title(), **spec})
        except (TypeError, ValueError) as exc:
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
        packs=_load_packs(raw),
    )
    if catalog.default_plan not in plans:
        raise ConfigError(f"default_plan {catalog.default_plan!r} is not in the catalog")
    for old, new in catalog.legacy.items():
        if new not in plans:
            raise ConfigError(f"legacy plan {old!r} maps to unknown plan {new!r}")
    return catalog

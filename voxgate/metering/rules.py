"""The admission decision, in one pure function: may this session start,
this ephemeral key be minted, this project be created?

``decide_admission`` takes what admission knows at one instant (the plan as admission
sees it, add-on packs and enterprise terms included; the account's status;
the period's counters; the rate bucket's answer) and returns ``Admit`` or
``Refuse`` with the OpenAI-style error the client gets. Every caller (the
WebSocket relay and the calls endpoint through ``Gateway.admit``, the token
endpoint, the dashboard's project limit) goes through it, and both
admissions (``InProcessAdmission``, ``RedisAdmission``) raise its refusals.

The counters are only known inside the atomic step that reserves a session
(a Lua script in Redis, a lock-free section in one process), so the
decision also says what that step must re-check: ``Admit.bounds``, derived
from the plan by ``bounds`` and used by ``decide_admission`` itself, so the script
and the function cannot disagree. When the counters the script saw break
the bounds, ``decide_admission`` applied to them gives the refusal.

Checks, in order (the first that fails decides):

1. account status ``canceled`` → 403 ``permission_denied`` (account closed);
2. the rate bucket had no token (``rate_wait_s`` > 0) → 429
   ``rate_limit_exceeded`` with ``retry_after_s``;
3. sessions only: ``in_flight`` ≥ the plan's ``concurrency`` → 429
   ``concurrency_limit_exceeded``;
4. sessions and mints, hard-capped plans only: ``billable_used + in_flight``
   ≥ ``sessions_included`` → 429 ``insufficient_quota`` (sessions in flight
   are reserved, so a burst cannot overshoot);
5. projects only: ``projects`` ≥ the plan's ``projects`` → 403
   ``project_limit_reached``.

Error codes follow https://platform.openai.com/docs/guides/error-codes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from voxgate.errors import (
    ConcurrencyLimited,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    VoxgateError,
)
from voxgate.models.plans import Plan

__all__ = ["Ask", "Counters", "Bounds", "Admit", "Refuse", "Decision", "bounds", "decide_admission",
           "rate_limited", "check_quota", "check_concurrency", "ACTIVE_STATUS", "CLOSED_STATUS"]

CLOSED_STATUS = "canceled"
ACTIVE_STATUS = "active"  # an account in good standing (``Account.status``)


class Ask(enum.Enum):
    """What is asked for."""

    SESSION = "session"  # a realtime session (WebSocket or WebRTC call)
    MINT = "mint"        # an ephemeral key (client secret): no slot is taken
    PROJECT = "project"  # one more project on the account


@dataclass(frozen=True, slots=True)
class Counters:
    """The counters a decision reads.

    Attributes:
        billable_used: billable sessions completed in the period.
        in_flight: sessions holding a lease now (reserved against the quota).
        projects: the account's projects (for ``Ask.PROJECT``).
    """

    billable_used: int = 0
    in_flight: int = 0
    projects: int = 0


@dataclass(frozen=True, slots=True)
class Bounds:
    """What the atomic reservation re-checks against live counters: one more
    session fits while ``in_flight < max_in_flight`` and
    ``billable_used + in_flight < max_sessions``; None = unbounded."""

    max_in_flight: int | None
    max_sessions: int | None


@dataclass(frozen=True, slots=True)
class Admit:
    bounds: Bounds


@dataclass(frozen=True, slots=True)
class Refuse:
    error: VoxgateError


Decision = Admit | Refuse


def bounds(plan: Plan) -> Bounds:
    """The plan's limits on one more session: its concurrency, and its
    included sessions when it is hard-capped (no overage price)."""
    return Bounds(plan.concurrency, plan.sessions_included if plan.hard_cap else None)


def rate_limited(plan: Plan, wait_s: float) -> RateLimited:
    """The refusal of a request the key's bucket had no token for;
    ``wait_s`` is the seconds until one is there."""
    return RateLimited(
        f"rate limit of {plan.requests_per_minute} requests per minute reached "
        f"for this API key; retry in {wait_s:.1f} s",
        retry_after_s=wait_s,
    )


def decide_admission(ask: Ask, plan: Plan, account_status: str, usage: Counters,
           rate_wait_s: float = 0.0) -> Decision:
    """Admit or refuse ``ask`` (the checks and their order: module
    docstring). ``rate_wait_s``: seconds until the rate bucket has a token,
    0 when one was taken for this request."""
    if account_status == CLOSED_STATUS:
        return Refuse(PermissionDenied("this account is closed"))
    if rate_wait_s > 0:
        return Refuse(rate_limited(plan, rate_wait_s))
    limits = bounds(plan)
    if ask is Ask.SESSION and limits.max_in_flight is not None \
            and usage.in_flight >= limits.max_in_flight:
        n = limits.max_in_flight
        return Refuse(ConcurrencyLimited(
            f"the {plan.name} plan allows {n} simultaneous session{'s' if n != 1 else ''}; "
            "end one or upgrade"))
    if ask is not Ask.PROJECT and limits.max_sessions is not None \
            and usage.billable_used + usage.in_flight >= limits.max_sessions:
        return Refuse(QuotaExceeded(
            f"monthly session quota of the {plan.name} plan is used up "
            f"({usage.billable_used} billable, {usage.in_flight} in progress, "
            f"{plan.sessions_included} included); upgrade to continue"))
    if ask is Ask.PROJECT and plan.projects is not None and usage.projects >= plan.projects:
        n = plan.projects
        return Refuse(PermissionDenied(
            f"The {plan.name} plan allows {n} project{'s' if n != 1 else ''}: upgrade for more.",
            code="project_limit_reached"))
    return Admit(limits)


def check_quota(plan: Plan, billable_used: int, in_flight: int) -> None:
    """Raise ``QuotaExceeded`` when a hard-capped plan has no session left:
    ``billable_used + in_flight ≥ sessions_included`` (``decide_admission``)."""
    decision = decide_admission(Ask.MINT, plan, ACTIVE_STATUS, Counters(billable_used, in_flight))
    if isinstance(decision, Refuse):
        raise decision.error


def check_concurrency(plan: Plan, in_flight: int) -> None:
    """Raise ``ConcurrencyLimited`` when ``in_flight`` sessions already fill
    the plan's concurrency (``decide_admission``, quota left out)."""
    decision = decide_admission(Ask.SESSION, plan, ACTIVE_STATUS, Counters(0, in_flight))
    if isinstance(decision, Refuse) and decision.error.code == "concurrency_limit_exceeded":
        raise decision.error

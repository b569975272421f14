"""Add-on packs an account holds, and what they add to its quota (pure).

A pack adds ``sessions`` billable sessions to the account's quota from its
purchase (``purchased_at``) until ``expires_at`` (``PACK_LIFETIME_S`` = 30
days later). Its sessions are used after the plan's included ones: a
billable session that finds the period's included sessions used up takes one
from the live pack that expires first (``pack_to_use``), in the same
transaction as its verdict, and is then never charged as overage.

The effective quota of a period (``with_packs``) is the plan's included
sessions + the pack sessions already used this period + the sessions left
in live packs: billable sessions up to it are admitted on a hard-capped plan.
Times are Unix seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from voxgate.models.plans import Plan

__all__ = ["PACK_LIFETIME_S", "AccountPack", "PackBalance", "pack_expiry", "pack_balance",
           "pack_to_use", "with_packs"]

PACK_LIFETIME_S = 30 * 86400


def pack_expiry(purchased_at: float) -> float:
    """When a pack bought at ``purchased_at`` expires (Unix s): 30 days later."""
    return purchased_at + PACK_LIFETIME_S


@dataclass(frozen=True, slots=True)
class AccountPack:
    """A pack an account holds.

    Attributes:
        catalog_pack: the catalog pack (``sessions_1000``), or ``operator``
            for a grant of an arbitrary size.
        sessions: sessions it adds; ``sessions_used`` of them are used.
        source: ``checkout`` (bought through Stripe Checkout) or ``operator``.
        ref: what credited it: the Checkout Session id (``cs_…``) or the
            operator's grant id; unique, so a replayed webhook credits once.
        price_cents: what was paid (0 for an operator grant).
    """

    id: str
    account_id: str
    catalog_pack: str
    sessions: int
    sessions_used: int
    price_cents: int
    source: str
    ref: str
    purchased_at: float
    expires_at: float

    @property
    def remaining(self) -> int:
        return max(0, self.sessions - self.sessions_used)

    def live(self, now: float) -> bool:
        """Bought and not expired at ``now``."""
        return self.purchased_at <= now < self.expires_at


@dataclass(frozen=True, slots=True)
class PackBalance:
    """An account's packs as they count in one period.

    Attributes:
        used_this_period: pack sessions billable sessions of the period used
            (also those of packs expired since).
        remaining: sessions left in live packs.
        expires_at: expiry of the live pack with sessions left that expires
            first; None when there is none.
        live: the live packs, first to expire first.
    """

    used_this_period: int = 0
    remaining: int = 0
    expires_at: float | None = None
    live: tuple[AccountPack, ...] = ()

    @property
    def sessions(self) -> int:
        """What the packs add to the period's quota."""
        return self.used_this_period + self.remaining


def pack_to_use(packs: Iterable[AccountPack], now: float) -> AccountPack | None:
    """The pack the next billable session beyond the included ones takes a
    session from: live with sessions left, the one expiring first (ties: the
    older purchase). None when there is none."""
    usable = [p for p in packs if p.live(now) and p.remaining > 0]
    return min(usable, key=lambda p: (p.expires_at, p.purchased_at, p.id), default=None)


def pack_balance(packs: Iterable[AccountPack], used_this_period: int, now: float) -> PackBalance:
    """The balance of ``packs`` at ``now``, ``used_this_period`` pack
    sessions having been used in the period so far."""
    live = sorted((p for p in packs if p.live(now)), key=lambda p: (p.expires_at, p.id))
    with_left = [p for p in live if p.remaining > 0]
    return PackBalance(
        used_this_period=used_this_period,
        remaining=sum(p.remaining for p in with_left),
        expires_at=with_left[0].expires_at if with_left else None,
        live=tuple(live),
    )


def with_packs(plan: Plan, balance: PackBalance) -> Plan:
    """``plan`` with the packs added to its included sessions (the effective
    quota; ``Plan.pack_sessions`` says how many came from packs). Unlimited
    plans are returned as they are."""
    if plan.sessions_included is None or balance.sessions == 0:
        return plan
    base = plan.plan_sessions_included or 0
    return replace(plan, sessions_included=base + balance.sessions,
                   pack_sessions=balance.sessions)

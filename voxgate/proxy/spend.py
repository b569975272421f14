"""Spend limits (issue 21, "plans that cap cost"): an account's provider
cost this month against its cap — its own ``Account.spend_limit_usd`` (set
by an operator: ``voxgate admin set-spend-limit``), else its plan's
``spend_limit_usd`` (catalog and enterprise terms). At the cap, new sessions
are refused with ``insufficient_quota``; live ones finish. Sessions on the
customer's own provider key (BYOK) cost the operator nothing and are neither
counted nor refused. The alerts at 80/95/100 % are billing's
(``voxgate.billing.service``)."""

from __future__ import annotations

import time
from decimal import Decimal

from voxgate.caches import BoundedDict
from voxgate.errors import QuotaExceeded
from voxgate.models import Account, Plan
from voxgate.models.plans import spend_limit_of
from voxgate.store.base import Store

__all__ = ["SpendLimits", "SPEND_CACHE_S", "SPEND_THRESHOLDS", "spend_thresholds_reached"]

SPEND_CACHE_S = 5.0  # an account's month-to-date provider cost is read again after this
SPEND_THRESHOLDS = (80, 95, 100)  # % of the spend limit that send an alert
CACHE_MAX = 16_384  # (account, period) figures kept in memory at most


def spend_thresholds_reached(spent_micros: int, limit_usd: Decimal) -> list[int]:
    """The ``SPEND_THRESHOLDS`` (%) that ``spent_micros`` (micro-USD) has
    reached of ``limit_usd`` (a limit of 0 is reached at once)."""
    limit_micros = limit_usd * 1_000_000
    return [t for t in SPEND_THRESHOLDS if spent_micros * 100 >= limit_micros * t]


class SpendLimits:
    """Month-to-date provider cost per account, read from the store at most
    every ``SPEND_CACHE_S`` per account (and afresh in this process once one
    of the account's sessions completes: ``forget``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._spent: BoundedDict[tuple[str, str], tuple[int, float]] = BoundedDict(CACHE_MAX)

    async def spent_micros(self, account_id: str, period: str, *, fresh: bool = False) -> int:
        """The account's operator-paid provider cost of ``period``, micro-USD."""
        key = (account_id, period)
        cached = self._spent.get(key)
        if not fresh and cached is not None and time.monotonic() - cached[1] < SPEND_CACHE_S:
            return cached[0]
        micros = await self.store.provider_spend_micros(account_id, period)
        self._spent[key] = (micros, time.monotonic())
        return micros

    def forget(self, account_id: str, period: str) -> None:
        self._spent.pop((account_id, period), None)

    async def check(self, account: Account, plan: Plan, period: str) -> None:
        """Refuse a new session once the account's provider cost this period
        has reached its spend limit.

        Raises:
            QuotaExceeded (429 ``insufficient_quota``), the message naming the
            limit and what was spent.
        """
        limit = spend_limit_of(account, plan)
        if limit is None:
            return
        spent = await self.spent_micros(account.id, period)
        if spent >= limit * 1_000_000:
            raise QuotaExceeded(
                f"this account's provider spend limit of ${limit} for {period} is reached "
                f"(${Decimal(spent) / 1_000_000:.2f} spent): new sessions are refused until the "
                f"next month or until the limit is raised")

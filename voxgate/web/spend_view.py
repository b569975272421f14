"""What a customer sees of its provider spend limit (issue 21, item 4,
``spend_limit_usd``; the admission check is ``voxgate.proxy.spend``).

The limit (USD a month: the account's own, set by an operator, else its
plan's) and the share of it used this month, as a percentage. The dollars
spent are the operator's provider cost: shown only when ``show_cost``
(operators, or ``[pricing] show_provider_cost`` on).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from voxgate.models import Account, Plan
from voxgate.models.plans import spend_limit_of

__all__ = ["SpendStatus", "spend_status"]

MICROS = 1_000_000


@dataclass(frozen=True, slots=True)
class SpendStatus:
    """An account's spend limit this month.

    Attributes:
        limit_usd: the monthly cap on its operator-paid provider cost, USD.
        percent: the share of it used, % to 0.1 (may pass 100: live
            sessions finish past the cap; a limit of 0 is 100 % at once).
        reached: new sessions are refused (``insufficient_quota``).
        own: the limit is the account's own (an operator set it), not its
            plan's.
        spent_usd: the provider cost this month, USD to 0.01; None when the
            viewer may not see it.
    """

    limit_usd: Decimal
    percent: float
    reached: bool
    own: bool
    spent_usd: Decimal | None


async def spend_status(gateway: Any, account: Account, plan: Plan, period: str, *,
                       show_cost: bool) -> SpendStatus | None:
    """The account's ``SpendStatus`` for ``period`` (``YYYY-MM``), read
    through ``gateway.spend`` (``SpendLimits``: at most ``SPEND_CACHE_S``
    old); None when it has no spend limit."""
    limit = spend_limit_of(account, plan)
    if limit is None:
        return None
    spent = await gateway.spend.spent_micros(account.id, period)
    limit_micros = limit * MICROS
    reached = spent >= limit_micros
    if limit_micros == 0:
        percent = 100.0
    else:
        percent = float((Decimal(spent) * 100 / limit_micros).quantize(Decimal("0.1"),
                                                                      ROUND_HALF_UP))
    spent_usd = (Decimal(spent) / MICROS).quantize(Decimal("0.01"), ROUND_HALF_UP) \
        if show_cost else None
    return SpendStatus(limit, percent, reached, account.spend_limit_usd is not None, spent_usd)

"""The margin view's queries (``voxgate.models.margin`` adds them up): per
account and period, sessions by verdict with their provider cost, add-on
packs bought and the billable sessions packs paid for; the histogram of
billable sessions' cost. Portable SQL (SQLite and PostgreSQL), read on the
background lane. Costs are micro-USD (``sessions.provider_cost_micros``);
sessions paid with the customer's own provider key (``paid_by =
'customer'``) are left out of the operator's cost."""

from __future__ import annotations

from typing import Any

from voxgate.models.figures import period_bounds, previous_period, states_at
from voxgate.models.margin import COST_BUCKETS_USD, AccountMonth, Margin, margin
from voxgate.models.plans import PlanCatalog
from voxgate.store.connection import lane
from voxgate.store.plans import enterprise_plans
from voxgate.store.queries.web import plan_changes

__all__ = ["MarginDB", "read_margin", "read_margin_history"]

_OPERATOR_PAID = "(s.paid_by IS NULL OR s.paid_by <> 'customer')"


class MarginDB:
    """Margin figures of an open store (``voxgate.store.sql.SQLStore``)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def _rows(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with lane("background"):
            return list(await self.store.db.execute_fetchall(sql, params))

    async def months(self, period: str, start: float, end: float) -> list[AccountMonth]:
        """Every account with a completed session or a pack bought in
        ``period`` (whose packs' purchase times fall in ``[start, end)``, Unix
        s), plus every other account (all zeros), by account id."""
        sessions = await self._rows(
            "SELECT s.account_id,"
            " SUM(CASE WHEN s.billable = 1 THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN s.billable = 1 THEN 0 ELSE 1 END),"
            f" SUM(CASE WHEN s.billable = 1 AND {_OPERATOR_PAID}"
            "  THEN COALESCE(s.provider_cost_micros, 0) ELSE 0 END),"
            f" SUM(CASE WHEN s.billable = 1 OR NOT {_OPERATOR_PAID} THEN 0"
            "  ELSE COALESCE(s.provider_cost_micros, 0) END),"
            f" SUM(CASE WHEN s.provider_cost_micros IS NULL AND {_OPERATOR_PAID} THEN 1 ELSE 0 END)"
            " FROM sessions s WHERE s.period = ? AND s.status = 'completed'"
            " GROUP BY s.account_id", (period,))
        covered = dict(await self._rows(
            "SELECT account_id, COUNT(*) FROM pack_sessions WHERE period = ? GROUP BY account_id",
            (period,)))
        packs = dict(await self._rows(
            "SELECT account_id, SUM(price_cents) FROM session_packs"
            " WHERE purchased_at >= ? AND purchased_at < ? GROUP BY account_id", (start, end)))
        emails = dict(await self._rows("SELECT id, email FROM accounts", ()))
        seen = {r[0]: r for r in sessions}
        out = []
        for account_id in sorted(emails):
            r = seen.get(account_id)
            out.append(AccountMonth(
                account_id, emails[account_id],
                billable=int(r[1]) if r else 0, non_billable=int(r[2]) if r else 0,
                cost_billable_micros=int(r[3]) if r else 0,
                cost_non_billable_micros=int(r[4]) if r else 0,
                unpriced_sessions=int(r[5]) if r else 0,
                pack_covered=int(covered.get(account_id, 0)),
                packs_cents=int(packs.get(account_id) or 0)))
        return out

    async def cost_histogram(self, period: str) -> list[int]:
        """Billable, priced, operator-paid sessions of ``period`` per bucket
        of ``COST_BUCKETS_USD`` (the last bucket open-ended)."""
        edges = [int(e * 1_000_000) for e in COST_BUCKETS_USD]
        cases = " ".join(f"WHEN s.provider_cost_micros < {hi} THEN {i}"
                         for i, hi in enumerate(edges[1:]))
        rows = await self._rows(
            f"SELECT CASE {cases} ELSE {len(edges) - 1} END AS bucket, COUNT(*)"
            f" FROM sessions s WHERE s.period = ? AND s.status = 'completed' AND s.billable = 1"
            f" AND s.provider_cost_micros IS NOT NULL AND {_OPERATOR_PAID}"
            " GROUP BY bucket", (period,))
        counts = [0] * len(edges)
        for bucket, n in rows:
            counts[int(bucket)] = int(n)
        return counts


async def read_margin(store: Any, catalog: PlanCatalog, period: str, now: float) -> Margin:
    """The margin view of ``period`` (``voxgate.models.margin.margin``): each
    account's plan and standing replayed from the plan history at the end of
    the period (``now`` for the current one), enterprise accounts under their
    current terms. Operator accounts are customers here too (their sessions
    cost the provider as much)."""
    db = MarginDB(store)
    start, end = period_bounds(period)
    at = min(end, now + 1)
    changes = await plan_changes(store, until=at)
    return margin(period, await db.months(period, start, end), states_at(changes, at), catalog,
                  await enterprise_plans(store), await db.cost_histogram(period))


async def read_margin_history(store: Any, catalog: PlanCatalog, period: str, now: float,
                              months: int = 6) -> list[Margin]:
    """``read_margin`` of the ``months`` periods up to ``period``, oldest first."""
    periods = [period]
    for _ in range(months - 1):
        periods.append(previous_period(periods[-1]))
    return [await read_margin(store, catalog, p, now) for p in reversed(periods)]

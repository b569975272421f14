"""Recovery of the sessions a lost instance left active (docs/database.md,
"Instances and recovery"): completing them from their last checkpoint by the
verdict rules (``complete_orphans``, used by the gateway at start and by the
``instance_sweep`` job) and freeing their admission leases when their holder
is gone for good (``release_orphans``). It combines the store, admission and
the metering rules, so it sits above all three.
"""

from __future__ import annotations

import inspect
from typing import Any

from voxgate.admission.base import Admission, Lease
from voxgate.metering.verdict import VerdictPolicy, decide_verdict
from voxgate.models import Verdict
from voxgate.models.plans import Plan, PlanCatalog
from voxgate.models.pricing import PriceList, session_cost
from voxgate.store.base import Orphan, Store
from voxgate.store.plans import account_plan

__all__ = ["LOST_CLOSE_REASON", "complete_orphans", "release_orphans"]

LOST_CLOSE_REASON = "instance_lost"  # Measurements.close_reason of a session completed for a lost instance


async def release_orphans(admission: Admission | None, orphans: list[Orphan]) -> None:
    """Free the admission leases of ``orphans`` at once (instead of after
    their TTL); nothing for those without a lease or without an admission.
    Only for sessions whose holder is known to be gone for good (a previous
    run of this very instance id): a sweeper never frees another instance's
    leases early (a paused instance may still be relaying until its own
    clock fences it; the leases expire after ``lease_ttl_s``)."""
    if admission is None:
        return
    for orphan in orphans:
        if orphan.lease_id:
            await admission.release(Lease(orphan.lease_id, orphan.account_id, orphan.session_id, 0.0))


def _accepts_provisional(store: Any) -> bool:
    try:
        return "provisional" in inspect.signature(store.complete_session).parameters
    except (TypeError, ValueError):
        return False


async def complete_orphans(store: Store, catalog: PlanCatalog, policy: VerdictPolicy,
                           orphans: list[Orphan], now: float, detail: str,
                           prices: PriceList | None = None) -> list[Verdict]:
    """Complete each orphan from its last checkpoint, provisionally: its
    checkpointed measurements closed by ``server`` with close reason
    ``instance_lost``, the verdict decided on them by the verdict rules
    (``voxgate.metering.verdict.decide_verdict`` with ``policy``; ``detail``, e.g.
    "instance X lost", prefixes the rule), ending at the checkpoint (``now``
    if never checkpointed), charged under the account's plan at ``now``
    exactly as ``Gateway.finish`` charges (``settle_from``/``pack_from``),
    with ``provisional=True`` so that the owning instance's own final record
    may still replace it (``Store.complete_session``). Returns the verdicts
    in ``orphans``' order. A session completed meanwhile is left as it is
    (``complete_session`` is idempotent)."""
    plans: dict[str, Plan | None] = {}
    provisional = {"provisional": True} if _accepts_provisional(store) else {}
    verdicts = []
    for orphan in orphans:
        record = orphan.record
        if record is None:
            record = await store.get_session(orphan.session_id)
            if record is None or record.status != "active":
                continue
        if record.account_id not in plans:
            account = await store.get_account(record.account_id)
            plans[record.account_id] = (None if account is None
                                        else await account_plan(store, catalog, account, now))
        plan = plans[record.account_id]
        m = record.measurements
        m.closed_by, m.close_code, m.close_reason = "server", None, LOST_CLOSE_REASON
        decided = decide_verdict(m, policy)
        checkpoint = ("its last checkpoint" if orphan.checkpoint_at is not None
                      else "no checkpoint (as opened)")
        verdict = Verdict(decided.billable, decided.reason,
                          f"{detail}; decided on {checkpoint}: {decided.rule}")
        record.status = "completed"
        record.ended_at = orphan.checkpoint_at if orphan.checkpoint_at is not None else now
        record.billable, record.reason, record.rule = verdict.billable, verdict.reason, verdict.rule
        if prices is not None:  # the provider cost of the checkpointed usage
            cost = session_cost(prices, record.model, m)
            record.provider_cost_usd, record.provider_cost_reason = cost.usd, cost.reason
        included = None if plan is None else plan.plan_sessions_included
        settle_from = None if plan is None or plan.overage_cents is None else (included or 0)
        await store.complete_session(record, verdict, settle_from=settle_from,
                                     pack_from=included, **provisional)
        verdicts.append(verdict)
    return verdicts

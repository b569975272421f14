"""An account's plan as the store knows it: its catalog or enterprise plan
(``voxgate.models.enterprise``) and the add-on packs live at a moment
(``voxgate.models.packs``), read through the ``Store`` protocol. The one
place the effective plan is worked out: the gateway (admission and
charging), the jobs, the dashboard and the admin command call these.
"""

from __future__ import annotations

from voxgate.models import Account
from voxgate.models.enterprise import enterprise_plan, plan_for
from voxgate.models.packs import with_packs
from voxgate.models.plans import ENTERPRISE_PLAN_ID, Plan, PlanCatalog
from voxgate.store.base import Store, period_of

__all__ = ["account_plan", "subscribed_plan", "enterprise_plans"]


async def subscribed_plan(store: Store, catalog: PlanCatalog, account: Account) -> Plan:
    """The account's plan without add-on packs: its enterprise plan when its
    plan is ``enterprise``, else its catalog plan
    (``voxgate.models.enterprise.plan_for``)."""
    terms = None
    if account.plan_id == ENTERPRISE_PLAN_ID:
        terms = await store.get_enterprise_terms(account.id)
    return plan_for(catalog, account.id, account.plan_id, terms)


async def enterprise_plans(store: Store) -> dict[str, Plan]:
    """Account id → enterprise Plan, for every account with valid stored
    enterprise terms (whatever plan the account is on now)."""
    plans = {}
    for account_id, terms in (await store.list_enterprise_terms()).items():
        try:
            plans[account_id] = enterprise_plan(account_id, terms)
        except ValueError:
            continue
    return plans


async def account_plan(store: Store, catalog: PlanCatalog, account: Account, now: float) -> Plan:
    """The plan the account's sessions are admitted and charged under at
    ``now`` (Unix s): ``subscribed_plan`` with the add-on packs live at
    ``now`` added to the included sessions (``voxgate.models.packs.with_packs``)."""
    plan = await subscribed_plan(store, catalog, account)
    if plan.sessions_included is None:
        return plan
    return with_packs(plan, await store.pack_balance(account.id, period_of(now), now))

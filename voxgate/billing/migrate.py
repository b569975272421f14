"""``voxgate billing migrate-plans``: move accounts off retired plans.

The catalog's ``[legacy]`` table maps retired plan ids to current ones
(build → starter, pro → growth, agency → growth). Dry run by default: the
plan says what would change; ``apply`` changes the accounts, writes the
audit log and queues a notice email per migrated account.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from voxgate.billing.db import BillingDB
from voxgate.billing.notify import Notifier
from voxgate.models import Account, PlanCatalog

__all__ = ["PlanMigration", "plan_migrations", "apply_migrations"]


@dataclass(frozen=True, slots=True)
class PlanMigration:
    account_id: str
    email: str
    old_plan: str
    new_plan: str

    def __str__(self) -> str:
        return f"{self.account_id} <{self.email}>: {self.old_plan} → {self.new_plan}"


def plan_migrations(accounts: list[Account], catalog: PlanCatalog) -> list[PlanMigration]:
    """The accounts on a legacy plan and where each goes (pure). Accounts on
    unknown plans that are not legacy are left alone."""
    out = []
    for account in accounts:
        if account.plan_id in catalog.plans:
            continue
        new = catalog.legacy.get(account.plan_id)
        if new is not None:
            out.append(PlanMigration(account.id, account.email, account.plan_id, new))
    return out


async def apply_migrations(store: Any, bdb: BillingDB, notifier: Notifier,
                           catalog: PlanCatalog, migrations: list[PlanMigration],
                           actor: str = "cli") -> int:
    """Apply the migrations; returns how many accounts changed."""
    done = 0
    for m in migrations:
        account = await store.get_account(m.account_id)
        if account is None or account.plan_id != m.old_plan:
            continue  # changed meanwhile
        account = await store.update_account(m.account_id, plan_id=m.new_plan)
        await bdb.audit(actor, m.account_id, "plan_migrated",
                        {"from": m.old_plan, "to": m.new_plan})
        await notifier.plan_migrated(account, m.old_plan, catalog.plans[m.new_plan])
        done += 1
    return done

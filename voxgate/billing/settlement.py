"""Settlement: billable sessions that must be paid for, sent to Stripe
exactly once.

The gateway puts each such session in the durable settlement outbox in the
same transaction as its verdict. ``SettlementWorker.run_once`` drains it in
one of two modes (``billing.settlement_mode``):

- ``meter_events``: one Stripe meter event per session
  (``POST /v1/billing/meter_events``, https://docs.stripe.com/api/billing/meter-event/create)
  with ``identifier`` = the session id, so Stripe itself refuses a second
  event for the same session ("An event already exists with identifier …",
  which we take as delivered); the session becomes ``charged``.
- ``invoice_items``: at period close, one invoice item per account and period
  (``POST /v1/invoiceitems``) for ``quantity × overage_cents``; the set of
  sessions and the quantity are fixed in ``invoice_settlements`` before the
  first attempt, whose id is the Idempotency-Key; the sessions become
  ``invoiced`` with the invoice item id.

Failures back off exponentially (``billing.retry_base_s`` doubling up to
``billing.retry_max_s``); nothing leaves the outbox until Stripe has it.
Workers in any number of processes share the outbox: each pass claims the
due items (``Store.claim_outbox``, ``BillingDB.claim_settlements``: their next
attempt moves ``billing.claim_lease_s`` ahead in one atomic step), so each is
sent by one worker, and one whose worker died is due again after the lease.
The pure part (``meter_event_params``, ``invoice_item_params``) says what is
sent; the worker carries it out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from voxgate.billing.db import BillingDB, InvoiceSettlement, backoff_s
from voxgate.billing.stripe_api import BillingError, StripeApi, is_duplicate_meter_event
from voxgate.config import BillingSettings
from voxgate.models import Account, Plan, PlanCatalog
from voxgate.models.enterprise import plan_for
from voxgate.models.plans import ENTERPRISE_PLAN_ID
from voxgate.store.base import OutboxItem, period_of

__all__ = ["SettlementWorker", "meter_event_params", "invoice_item_params", "period_bounds",
           "NO_CUSTOMER"]

log = logging.getLogger("voxgate.billing.settlement")

NO_CUSTOMER = ("account has no Stripe customer: kept pending until it subscribes "
               "(POST /billing/checkout)")


def meter_event_params(event_name: str, customer_id: str, session_id: str,
                       ended_at: float) -> dict[str, Any]:
    """The meter event for one billable session: value 1, ``identifier`` =
    session id, ``timestamp`` = session end (whole Unix seconds)."""
    return {
        "event_name": event_name,
        "payload": {"stripe_customer_id": customer_id, "value": "1"},
        "identifier": session_id,
        "timestamp": int(ended_at),
    }


def period_bounds(period: str) -> tuple[int, int]:
    """(start, end) Unix seconds of a ``"YYYY-MM"`` period (end exclusive)."""
    import calendar

    year, month = (int(x) for x in period.split("-"))
    start = calendar.timegm((year, month, 1, 0, 0, 0))
    year2, month2 = (year + 1, 1) if month == 12 else (year, month + 1)
    return start, calendar.timegm((year2, month2, 1, 0, 0, 0))


def invoice_item_params(settlement: InvoiceSettlement, customer_id: str, currency: str,
                        plan_name: str) -> dict[str, Any]:
    """The invoice item for a settlement: ``amount`` = quantity × unit price
    (sent as one amount: accepted by Stripe and by servers without
    quantity/unit pricing), the quantity and unit price in the description
    and metadata. The period is in the metadata too: servers differ on the
    ``period`` parameter (localstripe wants ``period_start``/``period_end``)."""
    unit = settlement.unit_cents
    if settlement.amount_cents == settlement.quantity * unit:
        priced = f" × {unit / 100:.2f} {currency.upper()}"
    else:
        priced = f", graduated tiers: {settlement.amount_cents / 100:.2f} {currency.upper()}"
    return {
        "customer": customer_id,
        "amount": settlement.amount_cents,
        "currency": currency,
        "description": (f"voxgate {plan_name}: {settlement.quantity} billable session(s)"
                        f"{priced} ({settlement.period})"),
        "metadata": {
            "voxgate_account": settlement.account_id,
            "voxgate_period": settlement.period,
            "voxgate_quantity": str(settlement.quantity),
            "voxgate_unit_cents": str(unit),
            "voxgate_settlement": settlement.id,
        },
    }


def _tiered_amount(plan: Plan) -> Any:
    """``amount_of(before, quantity)`` for ``BillingDB.claim_settlement``: the
    graduated price of sessions ``before + 1 … before + quantity`` of the period."""
    def amount_of(before: int, quantity: int) -> int:
        return plan.overage_cost_cents(before + quantity) - plan.overage_cost_cents(before)
    return amount_of


class SettlementWorker:
    """Drains the settlement outbox. ``run_once`` is one pass; the service
    calls it every ``billing.settle_interval_s``."""

    def __init__(self, settings: BillingSettings, store: Any, bdb: BillingDB, api: StripeApi,
                 catalog: PlanCatalog) -> None:
        self.settings = settings
        self.store = store
        self.bdb = bdb
        self.api = api
        self.catalog = catalog
        self._lock = asyncio.Lock()  # one pass at a time in this process

    def _delay(self, attempts: int) -> float:
        return backoff_s(attempts, self.settings.retry_base_s, self.settings.retry_max_s)

    async def run_once(self, now: float | None = None) -> dict[str, int]:
        """One pass; returns counts ``{"settled", "failed"}``."""
        now = time.time() if now is None else now
        async with self._lock:
            if self.settings.settlement_mode == "invoice_items":
                return await self._invoice_items(now)
            return await self._meter_events(now)

    # -- meter events ----------------------------------------------------

    async def _meter_events(self, now: float) -> dict[str, int]:
        counts = {"settled": 0, "failed": 0}
        accounts: dict[str, Account | None] = {}
        until = now + self.settings.claim_lease_s
        for item in await self.store.claim_outbox(now, until):
            if item.account_id not in accounts:
                accounts[item.account_id] = await self.store.get_account(item.account_id)
            account = accounts[item.account_id]
            ok = await self._send_meter_event(item, account, now)
            counts["settled" if ok else "failed"] += 1
        return counts

    async def _send_meter_event(self, item: OutboxItem, account: Account | None,
                                now: float) -> bool:
        if account is None or not account.stripe_customer_id:
            await self.store.retry_outbox(item.session_id, error=NO_CUSTOMER,
                                          next_attempt_at=now + self._delay(item.attempts))
            return False
        record = await self.store.get_session(item.session_id)
        ended_at = (record.ended_at if record and record.ended_at else item.created_at)
        params = meter_event_params(self.settings.meter_event_name, account.stripe_customer_id,
                                    item.session_id, ended_at)
        try:
            await self.api.create_meter_event(params,
                                              idempotency_key=f"voxgate-meter-{item.session_id}")
        except BillingError as err:
            if not is_duplicate_meter_event(err):
                log.warning("meter event for %s failed (attempt %d): %s", item.session_id,
                            item.attempts + 1, err.message)
                await self.store.retry_outbox(item.session_id, error=err.message,
                                              next_attempt_at=now + self._delay(item.attempts))
                return False
            log.info("meter event for %s was already recorded by Stripe", item.session_id)
        await self.store.settle_outbox(item.session_id, settlement="charged", ref=item.session_id)
        return True

    # -- invoice items ---------------------------------------------------

    async def _invoice_items(self, now: float) -> dict[str, int]:
        counts = {"settled": 0, "failed": 0}
        for account_id, period, session_ids in await self.bdb.unclaimed_closed(period_of(now)):
            account = await self.store.get_account(account_id)
            plan = await self._plan(account)
            unit = plan.overage_cents or 0
            await self.bdb.claim_settlement(
                account_id, period, session_ids, unit, now,
                amount_of=_tiered_amount(plan) if plan.tiers else None)
        for settlement in await self.bdb.claim_settlements(now, now + self.settings.claim_lease_s):
            ok = await self._send_invoice_item(settlement, now)
            counts["settled" if ok else "failed"] += settlement.quantity
        return counts

    async def _plan(self, account: Account | None) -> Plan:
        """The account's plan (its enterprise plan when it has one)."""
        if account is None:
            return self.catalog.default
        terms = None
        if account.plan_id == ENTERPRISE_PLAN_ID:
            terms = await self.store.get_enterprise_terms(account.id)
        return plan_for(self.catalog, account.id, account.plan_id, terms)

    async def _send_invoice_item(self, settlement: InvoiceSettlement, now: float) -> bool:
        account = await self.store.get_account(settlement.account_id)
        delay = self._delay(settlement.attempts)
        if account is None or not account.stripe_customer_id:
            await self.bdb.settlement_failed(settlement.id, now + delay, NO_CUSTOMER)
            return False
        plan_name = (await self._plan(account)).name
        params = invoice_item_params(settlement, account.stripe_customer_id,
                                     self.settings.currency, plan_name)
        try:
            item = await self.api.create_invoice_item(params, idempotency_key=settlement.id)
        except BillingError as err:
            log.warning("invoice item %s failed (attempt %d): %s", settlement.id,
                        settlement.attempts + 1, err.message)
            await self.bdb.settlement_failed(settlement.id, now + delay, err.message)
            return False
        await self.bdb.settlement_done(settlement.id, item["id"])
        return True

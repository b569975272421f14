"""Stripe webhook events → account state.

Stripe delivers events at least once and in any order
(https://docs.stripe.com/webhooks#event-ordering), so the handlers here do
not trust the order: for subscription and invoice events they re-read the
subscription from Stripe and apply *its current state* (``subscription_state``,
a pure function), which converges whatever order the events came in.

Handled: ``checkout.session.completed`` (and
``checkout.session.async_payment_succeeded``: a one-time payment for an
add-on pack that settled later, ``voxgate.billing.addons``),
``customer.subscription.created``, ``customer.subscription.updated``,
``customer.subscription.deleted``, ``invoice.payment_succeeded``,
``invoice.payment_failed``. Others are ignored.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from voxgate.billing.addons import PAID_STATUSES, Addons, paid_pack
from voxgate.billing.db import BillingDB
from voxgate.billing.notify import Notifier
from voxgate.billing.stripe_api import StripeApi
from voxgate.models import Account, PlanCatalog

__all__ = ["HANDLED", "SubscriptionState", "plan_of_subscription", "subscription_state",
           "period_end_of", "EventProcessor", "LOOKUP_PREFIX", "CANCEL_AT_KEY"]

log = logging.getLogger("voxgate.billing.events")

LOOKUP_PREFIX = "voxgate_"
# meta key of a cancellation scheduled at period end: value "<sub id> <unix s>"
CANCEL_AT_KEY = "billing:cancel_at:"
HANDLED = frozenset({
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
})

ACTIVE = ("active", "trialing")
DELINQUENT = ("past_due", "unpaid")
ENDED = ("canceled", "incomplete_expired")


def _plan_key(value: Any) -> str | None:
    if isinstance(value, str) and value.startswith(LOOKUP_PREFIX):
        key = value[len(LOOKUP_PREFIX):]
        return key.removesuffix("_overage")
    return None


def plan_of_subscription(sub: dict[str, Any], catalog: PlanCatalog) -> str | None:
    """The voxgate plan a subscription is for: from the licensed item's
    price ``lookup_key`` (``voxgate_<plan>``), price or product metadata
    ``voxgate_plan``, or a plan id ``voxgate_<plan>`` (localstripe, legacy
    Plans); legacy ids resolve to their successor. None if no item maps."""
    items = ((sub.get("items") or {}).get("data") or [])
    candidates: list[dict[str, Any]] = []
    for item in items:
        for key in ("price", "plan"):
            obj = item.get(key)
            if isinstance(obj, dict):
                candidates.append(obj)
    if isinstance(sub.get("plan"), dict):
        candidates.append(sub["plan"])
    # licensed (flat) prices first: a metered overage price names the same plan
    candidates.sort(key=lambda p: ((p.get("recurring") or {}).get("usage_type")
                                   or p.get("usage_type")) == "metered")
    for obj in candidates:
        found = [_plan_key(obj.get("lookup_key")),
                 (obj.get("metadata") or {}).get("voxgate_plan"),
                 _plan_key(obj.get("id"))]
        product = obj.get("product")
        if isinstance(product, dict):
            found.append((product.get("metadata") or {}).get("voxgate_plan"))
        for plan_id in found:
            if plan_id:
                try:
                    return catalog.get(plan_id).id
                except KeyError:
                    continue
    return None


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    """What a subscription means for its account. ``plan_id`` None = keep
    the current plan; ``subscription_id`` None = the account has none."""

    plan_id: str | None
    status: str
    subscription_id: str | None
    past_due: bool = False
    change: bool = True


def period_end_of(sub: dict[str, Any]) -> float | None:
    """The end of the subscription's current period (Unix s): on the
    subscription (older API versions, localstripe) or on its items (basil+)."""
    period_end = sub.get("current_period_end")
    if period_end is None:
        items = ((sub.get("items") or {}).get("data") or [])
        if items:
            period_end = items[0].get("current_period_end")
    return None if period_end is None else float(period_end)


def subscription_state(sub: dict[str, Any], catalog: PlanCatalog, now: float) -> SubscriptionState:
    """The account state a subscription calls for (pure).

    active/trialing → its plan, ``active``; past_due/unpaid → ``past_due``
    (plan kept through the grace period); canceled/incomplete_expired, or
    ``cancel_at_period_end`` with the period over → the default plan;
    incomplete (first payment pending) → no change.
    """
    status = sub.get("status")
    sub_id = sub.get("id")
    period_end = period_end_of(sub)
    ended_by_schedule = bool(sub.get("cancel_at_period_end")) and period_end is not None \
        and period_end <= now
    cancel_at = sub.get("cancel_at")
    if cancel_at is not None and float(cancel_at) <= now:
        ended_by_schedule = True
    if status in ENDED or ended_by_schedule:
        return SubscriptionState(catalog.default_plan, "active", None)
    if status in ACTIVE:
        return SubscriptionState(plan_of_subscription(sub, catalog), "active", sub_id)
    if status in DELINQUENT:
        return SubscriptionState(None, "past_due", sub_id, past_due=True)
    return SubscriptionState(None, "active", sub_id, change=False)


def _subscription_id_of_invoice(invoice: dict[str, Any]) -> str | None:
    sub = invoice.get("subscription")
    if isinstance(sub, dict):
        sub = sub.get("id")
    if not sub:
        parent = invoice.get("parent") or {}
        details = parent.get("subscription_details") or {}
        sub = details.get("subscription")
        if isinstance(sub, dict):
            sub = sub.get("id")
    return sub or None


class EventProcessor:
    """Applies verified Stripe events to accounts (see the module docstring)."""

    def __init__(self, store: Any, bdb: BillingDB, api: StripeApi, catalog: PlanCatalog,
                 notifier: Notifier) -> None:
        self.store = store
        self.bdb = bdb
        self.api = api
        self.catalog = catalog
        self.notifier = notifier
        self.addons = Addons(store, bdb, catalog)

    async def process(self, event: dict[str, Any]) -> str:
        """Apply one event; returns what was done (for logs and tests).

        Raises:
            BillingError: Stripe could not be asked (the event is retried).
        """
        etype = event.get("type", "")
        obj = (event.get("data") or {}).get("object") or {}
        if etype not in HANDLED:
            return "ignored"
        if etype.startswith("checkout.session.") and obj.get("mode") == "payment":
            return await self._pack_paid(obj, event)
        if etype == "checkout.session.completed":
            return await self._checkout_completed(obj, event["id"])
        if etype.startswith("checkout.session."):
            return "ignored"
        if etype.startswith("customer.subscription."):
            fresh = await self.api.get_subscription(obj["id"]) if obj.get("id") else None
            return await self._apply_subscription(fresh or obj, event["id"])
        # invoice.payment_succeeded / invoice.payment_failed
        sub_id = _subscription_id_of_invoice(obj)
        fresh = await self.api.get_subscription(sub_id) if sub_id else None
        if fresh is not None and fresh.get("status") not in ("incomplete",):
            return await self._apply_subscription(fresh, event["id"])
        account = await self._account_for(obj.get("customer"), None)
        if account is None:
            return "no account"
        if etype == "invoice.payment_failed":
            if account.stripe_subscription_id is None:
                return "no subscription"
            return await self._set(account, event["id"], status="past_due",
                                   past_due_since=account.past_due_since or time.time())
        if account.status == "past_due":
            return await self._set(account, event["id"], status="active", past_due_since=None)
        return "unchanged"

    async def _account_for(self, customer: Any, metadata: dict[str, Any] | None
                           ) -> Account | None:
        if isinstance(customer, dict):
            customer = customer.get("id")
        account_id = (metadata or {}).get("voxgate_account")
        if account_id:
            account = await self.store.get_account(account_id)
            if account is not None:
                return account
        if customer:
            return await self.bdb.account_by_customer(customer)
        return None

    async def _checkout_account(self, session: dict[str, Any]) -> Account | None:
        """The account a Checkout Session is for: its ``client_reference_id``,
        else its customer or metadata (``_account_for``)."""
        account_id = session.get("client_reference_id")
        account = await self.store.get_account(account_id) if account_id else None
        if account is None:
            account = await self._account_for(session.get("customer"), session.get("metadata"))
        return account

    async def _checkout_completed(self, session: dict[str, Any], event_id: str) -> str:
        account = await self._checkout_account(session)
        if account is None:
            return "no account"
        customer = session.get("customer")
        if isinstance(customer, dict):
            customer = customer.get("id")
        sub_id = session.get("subscription")
        if isinstance(sub_id, dict):
            sub_id = sub_id.get("id")
        fields: dict[str, Any] = {}
        if customer and customer != account.stripe_customer_id:
            fields["stripe_customer_id"] = customer
        if fields:
            account = await self.store.update_account(account.id, **fields)
            await self.bdb.audit("stripe", account.id, "customer_linked",
                                 {"customer": customer, "event": event_id})
        if sub_id:
            sub = await self.api.get_subscription(sub_id)
            if sub is not None:
                return await self._apply_subscription(sub, event_id, account=account)
        return "linked"

    async def _pack_paid(self, session: dict[str, Any], event: dict[str, Any]) -> str:
        """A one-time Checkout payment: credit the add-on pack it paid for,
        once per Checkout Session; bought when the event was created."""
        pack = paid_pack(session, self.catalog)
        if pack is None:
            wanted = (session.get("metadata") or {}).get("voxgate_pack")
            if wanted and session.get("payment_status") in PAID_STATUSES:
                log.warning("checkout session %s paid for pack %r, which is not in the "
                            "catalog: nothing credited", session.get("id"), wanted)
            return "not a paid pack"
        account = await self._checkout_account(session)
        if account is None:
            return "no account"
        created = event.get("created")
        purchased_at = float(created) if isinstance(created, (int, float)) else time.time()
        _, credited = await self.addons.credit_checkout(account, pack, session, purchased_at,
                                                        event["id"])
        return "pack credited" if credited else "pack already credited"

    async def _apply_subscription(self, sub: dict[str, Any], event_id: str, *,
                                  account: Account | None = None,
                                  now: float | None = None) -> str:
        if account is None:
            account = await self._account_for(sub.get("customer"), sub.get("metadata"))
        if account is None:
            return "no account"
        now = time.time() if now is None else now
        await self._schedule_cancellation(account.id, sub, now)
        await self.notifier.note_trial(account.id, sub)  # for the trial-ending reminder
        customer = sub.get("customer")
        if isinstance(customer, dict):
            customer = customer.get("id")
        state = subscription_state(sub, self.catalog, now)
        if not state.change:
            return "unchanged"
        sub_id = sub.get("id")
        if state.subscription_id is None:
            # An ended subscription only downgrades the account it is the
            # current subscription of (not one that moved on to a new one).
            if account.stripe_subscription_id not in (None, sub_id):
                return "stale subscription"
            return await self._set(account, event_id, plan_id=state.plan_id, status="active",
                                   stripe_subscription_id=None, past_due_since=None)
        fields: dict[str, Any] = {"status": state.status,
                                  "stripe_subscription_id": state.subscription_id}
        if customer and not account.stripe_customer_id:
            fields["stripe_customer_id"] = customer
        if state.plan_id is not None:
            fields["plan_id"] = state.plan_id
        if state.past_due:
            fields["past_due_since"] = account.past_due_since or time.time()
        else:
            fields["past_due_since"] = None
        new_subscription = account.stripe_subscription_id != state.subscription_id
        result = await self._set(account, event_id, **fields)
        if new_subscription and state.status == "active" and state.plan_id:
            fresh = await self.store.get_account(account.id)
            await self.notifier.welcome(fresh, self.catalog.get(state.plan_id),
                                        state.subscription_id)
        return result

    async def _schedule_cancellation(self, account_id: str, sub: dict[str, Any],
                                     now: float) -> None:
        """Remember a ``cancel_at_period_end`` still ahead, so that
        ``apply_due_cancellations`` ends it even if no event comes then."""
        period_end = period_end_of(sub)
        cancel_at = sub.get("cancel_at") or (period_end if sub.get("cancel_at_period_end")
                                             else None)
        key = CANCEL_AT_KEY + account_id
        if sub.get("status") in ACTIVE + DELINQUENT and cancel_at and float(cancel_at) > now:
            await self.store.set_meta(key, f"{sub.get('id')} {float(cancel_at)}")
        elif await self.store.get_meta(key):
            await self.store.set_meta(key, "")

    async def apply_due_cancellations(self, now: float) -> int:
        """Subscriptions set to cancel at period end whose time has come:
        re-read from Stripe (or, if Stripe cannot be asked, taken as ended)
        and applied. Returns how many accounts were looked at."""
        rows = await self.bdb.meta_with_prefix(CANCEL_AT_KEY)
        n = 0
        for key, value in rows:
            sub_id, _, at = value.partition(" ")
            if float(at) > now:
                continue
            account = await self.store.get_account(key[len(CANCEL_AT_KEY):])
            await self.store.set_meta(key, "")
            if account is None or account.stripe_subscription_id != sub_id:
                continue
            from voxgate.billing.stripe_api import BillingError

            try:
                sub = await self.api.get_subscription(sub_id)
            except BillingError:
                sub = None
            if sub is None:
                sub = {"id": sub_id, "status": "canceled"}
            await self._apply_subscription(sub, "scheduled-cancellation", account=account, now=now)
            n += 1
        return n

    async def _set(self, account: Account, event_id: str, **fields: Any) -> str:
        changed = {k: v for k, v in fields.items() if getattr(account, k) != v}
        if not changed:
            return "unchanged"
        await self.store.update_account(account.id, **changed)
        await self.bdb.audit("stripe", account.id, "account_updated",
                             {"event": event_id, **changed,
                              "was": {k: getattr(account, k) for k in changed}})
        log.info("account %s: %s (event %s)", account.id, changed, event_id)
        return "updated"

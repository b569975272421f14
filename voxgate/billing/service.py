"""Billing in the running app: routes, the ``BillingService`` the dashboard
uses (``app[BILLING]``), and the background workers.

Routes:

- ``POST /billing/checkout`` ``{"plan": "starter"}`` → ``{"url"}``: a Stripe
  Checkout Session (subscription mode) for the caller's account
  (``"enterprise"``: the account's own enterprise plan);
  ``{"pack": "sessions_1000"}``: one for an add-on pack (one-time payment
  mode, ``voxgate.billing.addons``).
- ``POST /billing/portal`` → ``{"url"}``: a Customer Portal session.
- ``GET  /billing/invoices`` → ``{"data": [...]}``: the account's invoices.
- ``GET|PUT|DELETE /v1/webhook``: the account's webhook endpoint, for every
  event type (``PUT {"url", "events"}`` → ``{"url", "events", "secret"}``:
  the signing secret is answered once, by the PUT that makes it; ``GET`` →
  ``{"url", "events"}``); ``POST /v1/webhook/test`` queues a
  ``webhook.test`` event; ``GET /v1/webhook/deliveries`` lists the
  account's deliveries, ``POST /v1/webhook/deliveries/{id}/resend`` sends
  one again (docs/webhooks.md).
- ``GET|PUT|DELETE /billing/alerts-webhook``: the same endpoint seen through
  the quota alert events only (``PUT {"url"}`` subscribes it to them and
  answers a new signing secret; ``DELETE`` unsubscribes them).
- ``POST /webhooks/stripe``: Stripe events, verified with ``Stripe-Signature``.

All but the Stripe webhook authenticate with
``voxgate.proxy.api.caller_account`` (admin key or dashboard; project keys 403).

Workers (started with the app, stopped with it): settlement every
``billing.settle_interval_s``, Stripe events not processed yet, the email and
customer-webhook outbox every ``smtp.send_interval_s``, and the past-due grace
check every ``billing.grace_check_interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import stripe
from aiohttp import web

from voxgate.billing.addons import Addons, pack_checkout_params
from voxgate.billing.db import BillingDB
from voxgate.billing.events import HANDLED, EventProcessor
from voxgate.billing.notify import (
    ALERT_EVENTS,
    EVENT_TYPES,
    SESSION_COMPLETED,
    Notifier,
    OutboxWorker,
)
from voxgate.billing.outbound import check_url
from voxgate.billing.settlement import SettlementWorker
from voxgate.billing.stripe_api import BillingError, BillingNotConfigured, StripeApi
from voxgate.config import Settings
from voxgate.errors import InvalidRequest, NotFound, RateLimited
from voxgate.metering.rate import SlidingWindow
from voxgate.models import Account, Plan, PlanCatalog
from voxgate.models.enterprise import plan_for
from voxgate.models.plans import ENTERPRISE_PLAN_ID, spend_limit_of
from voxgate.proxy.http import json_response, read_json
from voxgate.proxy.spend import SpendLimits, spend_thresholds_reached

__all__ = ["BillingService", "BILLING", "setup"]

log = logging.getLogger("voxgate.billing")

WEBHOOK_TOLERANCE_S = 300
INVOICE_FIELDS = ("id", "number", "status", "amount_due", "amount_paid", "currency", "created",
                  "hosted_invoice_url")


class BillingService:
    """Stripe billing for one voxgate instance.

    Args:
        store: the open store (a ``voxgate.store.sql.SQLStore``).
    """

    def __init__(self, settings: Settings, store: Any, catalog: PlanCatalog) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.api = StripeApi(settings.billing)
        self.db = BillingDB(store)
        self.notifier = Notifier(settings, self.db)
        # accounts' provider spend; setup() shares the gateway's, so the figure
        # read after a completion is the one its next admission checks
        self.spend = SpendLimits(store)
        self.events = EventProcessor(store, self.db, self.api, catalog, self.notifier)
        self.settlement = SettlementWorker(settings.billing, store, self.db, self.api, catalog)
        self.outbox = OutboxWorker(settings, self.db)
        self.addons = Addons(store, self.db, catalog)
        self._tasks: list[asyncio.Task] = []
        self._kicks: dict[str, asyncio.Event] = {}
        self._events_lock = asyncio.Lock()

    # -- for the dashboard -----------------------------------------------

    async def ensure_customer(self, account: Account) -> str:
        """The account's Stripe customer id, created on first use."""
        if account.stripe_customer_id:
            return account.stripe_customer_id
        customer = await self.api.create_customer(account.email, account.name, account.id)
        await self.store.update_account(account.id, stripe_customer_id=customer["id"])
        account.stripe_customer_id = customer["id"]
        await self.db.audit("system", account.id, "customer_created", {"customer": customer["id"]})
        return customer["id"]

    async def checkout_url(self, account: Account, plan_id: str) -> str:
        """A Checkout Session URL subscribing the account to ``plan_id``.

        Raises:
            InvalidRequest: unknown or free plan.
            BillingError: Stripe not configured, unreachable, or the plan not
                synced (``voxgate billing sync``).
        """
        plan = await self._plan_offered(account, plan_id)
        if plan is None:
            raise InvalidRequest(f"unknown plan {plan_id!r}", param="plan", code="unknown_plan")
        if not plan.is_paid:
            raise InvalidRequest(f"plan {plan.id!r} is free: no checkout needed", param="plan",
                                 code="free_plan")
        from voxgate.billing.catalog_sync import lookup_key

        line_items: list[dict[str, Any]] = []
        if plan.price_cents > 0:
            price = await self.api.price_for(lookup_key(plan))
            if price is None:
                raise BillingError(f"no Stripe price for plan {plan.id!r}: run `voxgate billing sync`")
            line_items.append({"price": price, "quantity": 1})
        if plan.overage_cents is not None:
            price = await self.api.price_for(lookup_key(plan, overage=True))
            if price is not None:
                line_items.append({"price": price})  # metered: no quantity
        if not line_items:
            raise BillingError(f"no Stripe price for plan {plan.id!r}: run `voxgate billing sync`")
        customer = await self.ensure_customer(account)
        b = self.settings.billing
        meta = {"voxgate_account": account.id, "voxgate_plan": plan.id}
        subscription_data: dict[str, Any] = {"metadata": meta}
        if plan.trial_days > 0:
            subscription_data["trial_period_days"] = plan.trial_days
        session = await self.api.checkout_session({
            "mode": "subscription",
            "customer": customer,
            "client_reference_id": account.id,
            "line_items": line_items,
            "success_url": b.success_url,
            "cancel_url": b.cancel_url,
            "subscription_data": subscription_data,
            "metadata": meta,
        })
        await self.db.audit("system", account.id, "checkout_started",
                            {"plan": plan.id, "checkout_session": session.get("id")})
        return session["url"]

    async def _plan_offered(self, account: Account, plan_id: object) -> Plan | None:
        """A catalog plan, or ``enterprise`` for an account that has one."""
        if plan_id == ENTERPRISE_PLAN_ID:
            terms = await self.store.get_enterprise_terms(account.id)
            plan = plan_for(self.catalog, account.id, ENTERPRISE_PLAN_ID, terms)
            return plan if plan.id == ENTERPRISE_PLAN_ID else None
        return self.catalog.plans.get(plan_id) if isinstance(plan_id, str) else None

    async def pack_checkout_url(self, account: Account, pack_id: object) -> str:
        """A Checkout Session URL (one-time payment) buying the catalog pack
        ``pack_id`` for the account; the ``checkout.session.completed``
        webhook credits it.

        Raises:
            InvalidRequest: unknown pack.
            BillingError: Stripe not configured or unreachable.
        """
        pack = self.catalog.packs.get(pack_id) if isinstance(pack_id, str) else None
        if pack is None:
            valid = ", ".join(self.catalog.packs) or "none"
            raise InvalidRequest(f"unknown pack {pack_id!r} (catalog packs: {valid})",
                                 param="pack", code="unknown_pack")
        customer = await self.ensure_customer(account)
        b = self.settings.billing
        session = await self.api.checkout_session(pack_checkout_params(
            pack, account, customer, b.currency, b.success_url, b.cancel_url))
        await self.db.audit("system", account.id, "pack_checkout_started",
                            {"pack": pack.id, "checkout_session": session.get("id")})
        return session["url"]

    async def set_enterprise_plan(self, account_id: str, terms: dict[str, Any],
                                  actor: str) -> tuple[Plan, list[str]]:
        """Give the account its enterprise plan (``Addons.set_enterprise``)
        and sync it to Stripe as the account's own prices when Stripe is
        configured: (the plan, the sync report; a failed sync is one line
        saying so, the plan is set anyway and ``voxgate billing sync`` retries).

        Raises:
            InvalidRequest: bad terms. KeyError: unknown account.
        """
        from voxgate.billing.catalog_sync import sync_plans

        plan = await self.addons.set_enterprise(account_id, terms, actor)
        if not self.api.configured:
            return plan, ["Stripe not configured: not synced"]
        try:
            report = await sync_plans(self.api, [plan], self.settings.billing)
        except BillingError as err:
            return plan, [f"Stripe sync failed (run `voxgate billing sync` later): {err.message}"]
        await self.db.audit(actor, account_id, "enterprise_plan_synced", {"changes": report})
        return plan, report

    async def portal_url(self, account: Account) -> str:
        """A Customer Portal session URL for the account (customer created if needed)."""
        customer = await self.ensure_customer(account)
        session = await self.api.portal_session(customer, self.settings.billing.portal_return_url)
        return session["url"]

    async def invoices(self, account: Account) -> list[dict[str, Any]]:
        """The account's invoices as Stripe reports them (amounts in cents);
        [] when the account has no Stripe customer."""
        if not account.stripe_customer_id:
            return []
        found = await self.api.list_invoices(account.stripe_customer_id)
        return [{k: inv.get(k) for k in INVOICE_FIELDS} for inv in found]

    async def audit(self, actor: str, action: str, detail: dict[str, Any] | None = None,
                    account_id: str | None = None) -> None:
        """Write the audit log; ``account_id`` defaults to ``detail["account_id"]``."""
        detail = dict(detail or {})
        await self.db.audit(actor, account_id or detail.get("account_id"), action, detail)

    async def audit_log(self, account_id: str | None = None,
                        limit: int = 100) -> list[dict[str, Any]]:
        return await self.db.list_audit(account_id, limit)

    async def set_alerts_webhook(self, account: Account, url: object) -> str:
        """Set the account's webhook endpoint to ``url`` subscribed to the
        alert events (besides those it subscribed to already); returns its
        new signing secret.

        Raises:
            UnsafeUrl (400): not https, or a host that resolves to a
                non-public address (see ``voxgate.billing.outbound``).
        """
        url = await check_url(url, dev_mode=self.settings.dev_mode)
        found = await self.db.webhook_endpoint(account.id)
        had = found.events if found is not None else ()
        events = [*had, *(e for e in ALERT_EVENTS if e not in had)]
        secret = "whsec_" + secrets.token_urlsafe(24)
        await self.db.set_account_webhook(account.id, url, secret, events)
        await self.db.audit("account", account.id, "alerts_webhook_set", {"url": url})
        return secret

    async def remove_alerts_webhook(self, account: Account) -> None:
        """Unsubscribe the account's endpoint from the alert events; the
        endpoint goes when no event is left."""
        found = await self.db.webhook_endpoint(account.id)
        if found is None:
            return
        events = [e for e in found.events if e not in ALERT_EVENTS]
        if events:
            await self.db.set_webhook_events(account.id, events)
        else:
            await self.db.delete_account_webhook(account.id)
        await self.db.audit("account", account.id, "alerts_webhook_removed", {"url": found.url})

    async def set_webhook(self, account: Account, url: object,
                          events: object) -> tuple[str, list[str], str]:
        """Set the account's webhook endpoint (``PUT /v1/webhook``): its URL
        and the event types it subscribes to. Returns (url, events, the new
        signing secret).

        Raises:
            UnsafeUrl (400): not https, or a host that resolves to a
                non-public address (see ``voxgate.billing.outbound``).
            InvalidRequest (400): ``events`` not a non-empty list of
                ``EVENT_TYPES`` (code ``unknown_event`` for one that is not).
        """
        chosen = parse_events(events)
        url = await check_url(url, dev_mode=self.settings.dev_mode)
        secret = "whsec_" + secrets.token_urlsafe(24)
        await self.db.set_account_webhook(account.id, url, secret, chosen)
        await self.db.audit("account", account.id, "webhook_set", {"url": url, "events": chosen})
        return url, chosen, secret

    async def on_session_recorded(self, active: Any, verdict: Any, usage: Any) -> None:
        """Gateway hook: queue the ``session.completed`` event of the session
        just recorded (its object as ``GET /v1/sessions/{id}`` returns it,
        read back from the store) when the account's endpoint subscribes
        to it; once per session (``Notifier.session_completed``)."""
        from voxgate.proxy.api import session_body

        account_id = active.record.account_id
        endpoint = await self.db.webhook_endpoint(account_id)
        if endpoint is None or SESSION_COMPLETED not in endpoint.events:
            return
        record = await self.store.get_session(active.record.id)
        if record is None or record.status != "completed":
            return
        if await self.notifier.session_completed(account_id, session_body(self.settings, record)):
            self.kick("outbox")

    # -- Stripe webhooks -------------------------------------------------

    def webhook_secret(self) -> str:
        secret = self.settings.billing.stripe_webhook_secret
        if secret is None or not secret.get_secret_value():
            raise BillingNotConfigured(
                "Stripe webhooks are not configured: set STRIPE_WEBHOOK_SECRET")
        return secret.get_secret_value()

    async def receive_webhook(self, payload: bytes, signature: str) -> dict[str, Any]:
        """Verify and record one Stripe event; processing happens in the
        background. Returns the response body.

        Raises:
            InvalidRequest: bad signature, stale timestamp, not a JSON event.
        """
        secret = self.webhook_secret()
        try:
            stripe.Webhook.construct_event(payload.decode("utf-8"), signature, secret,
                                           tolerance=WEBHOOK_TOLERANCE_S)
        except stripe.SignatureVerificationError as exc:
            raise InvalidRequest(f"invalid Stripe-Signature: {exc.user_message or exc}",
                                 code="invalid_signature") from exc
        except (ValueError, AttributeError, TypeError) as exc:
            # not UTF-8, not JSON, or JSON that is not an object (the SDK
            # trips over a list with an AttributeError)
            raise InvalidRequest("webhook body is not a JSON event",
                                 code="invalid_json") from exc
        event = orjson.loads(payload)
        if not isinstance(event, dict) or not isinstance(event.get("id"), str) \
                or not isinstance(event.get("type"), str):
            raise InvalidRequest("webhook body is not a Stripe event", code="invalid_event")
        if not await self.db.record_event(event["id"], event["type"], payload):
            return {"received": True, "duplicate": True}
        if event["type"] not in HANDLED:
            await self.db.event_done(event["id"])
            return {"received": True, "ignored": True}
        self.kick("events")
        return {"received": True}

    async def process_events(self) -> int:
        """Process the recorded events not processed yet, oldest first;
        returns how many succeeded. A failure is kept for the next pass."""
        done = 0
        async with self._events_lock:
            for event_id, payload in await self.db.unprocessed_events():
                try:
                    result = await self.events.process(orjson.loads(payload))
                except BillingError as err:
                    log.warning("stripe event %s failed: %s", event_id, err.message)
                    await self.db.event_failed(event_id, err.message)
                    continue
                except Exception as exc:  # noqa: BLE001 - keep it for a retry, log it
                    log.exception("stripe event %s failed", event_id)
                    await self.db.event_failed(event_id, f"{type(exc).__name__}: {exc}")
                    continue
                log.info("stripe event %s: %s", event_id, result)
                await self.db.event_done(event_id)
                done += 1
        if done:
            self.kick("outbox")
        return done

    # -- hooks and periodic checks -----------------------------------------

    async def on_session_completed(self, active: Any, verdict: Any, usage: Any) -> None:
        """Gateway hook: quota alerts for the account's new usage, spend-limit
        alerts for its provider cost."""
        account = active.principal.account
        if await self.notifier.quota(account, active.plan, usage):
            self.kick("outbox")
        limit = spend_limit_of(account, active.plan)
        if limit is not None and active.record.paid_by != "customer":
            period = active.record.period
            spent = await self.spend.spent_micros(account.id, period, fresh=True)
            reached = spend_thresholds_reached(spent, limit)
            if reached and await self.notifier.spend(account, period, spent, limit, reached):
                self.kick("outbox")
        if verdict.billable and active.plan.overage_cents is not None:
            self.kick("settle")

    async def check_grace(self, now: float | None = None) -> int:
        """Accounts past due for longer than ``billing.grace_period_days``
        go back to the default plan, and subscriptions set to cancel at
        period end whose period is over end; returns how many accounts
        went back to the default plan for being past due."""
        now = time.time() if now is None else now
        await self.events.apply_due_cancellations(now)
        cutoff = now - self.settings.billing.grace_period_days * 86400
        n = 0
        for account in await self.db.past_due_accounts(cutoff):
            await self.store.update_account(account.id, plan_id=self.catalog.default_plan,
                                            status="active", past_due_since=None)
            await self.db.audit("system", account.id, "grace_expired",
                                {"from": account.plan_id, "to": self.catalog.default_plan,
                                 "past_due_since": account.past_due_since})
            n += 1
        return n

    # -- workers ---------------------------------------------------------

    def kick(self, name: str) -> None:
        """Wake a worker up now rather than at its next interval."""
        event = self._kicks.get(name)
        if event is not None:
            event.set()

    def _loop(self, name: str, interval_s: float, fn: Callable[[], Awaitable[Any]]) -> None:
        kick = self._kicks.setdefault(name, asyncio.Event())

        async def run() -> None:
            while True:
                kick.clear()
                try:
                    await fn()
                except asyncio.CancelledError:
                    raise
                except BillingNotConfigured:
                    pass  # nothing to do until Stripe is configured; outboxes keep it all
                except Exception:  # noqa: BLE001 - a worker must survive anything
                    log.exception("billing worker %s failed", name)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(kick.wait(), interval_s)

        self._tasks.append(asyncio.create_task(run(), name=f"billing-{name}"))

    async def _settle(self) -> None:
        if self.api.configured:
            await self.settlement.run_once()

    async def start(self) -> None:
        b = self.settings.billing
        self._loop("settle", b.settle_interval_s, self._settle)
        self._loop("events", b.settle_interval_s, self.process_events)
        self._loop("outbox", self.settings.smtp.send_interval_s, self.outbox.run_once)
        self._loop("grace", b.grace_check_interval_s, self.check_grace)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.outbox.close()
        await self.api.close()


def parse_events(events: object) -> list[str]:
    """The event types of a ``PUT /v1/webhook`` body, in the order given,
    each once.

    Raises:
        InvalidRequest (400): not a non-empty list of strings, or a type
            not in ``EVENT_TYPES`` (code ``unknown_event``).
    """
    valid = ", ".join(EVENT_TYPES)
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise InvalidRequest(f"'events' must be a non-empty list of event types ({valid})",
                             param="events")
    unknown = [e for e in events if e not in EVENT_TYPES]
    if unknown:
        raise InvalidRequest(f"unknown event type {unknown[0]!r}: one of {valid}",
                             param="events", code="unknown_event")
    return list(dict.fromkeys(events))


BILLING = web.AppKey("billing", BillingService)
WEBHOOK_LIMIT = web.AppKey("billing_webhook_limit", SlidingWindow)


# -- HTTP handlers -------------------------------------------------------------

async def checkout_handler(request: web.Request) -> web.Response:
    from voxgate.proxy.api import caller_account

    account = await caller_account(request)
    body = await read_json(request)
    if isinstance(body, dict) and "pack" in body:
        svc = request.app[BILLING]
        account = await svc.store.get_account(account.id) or account
        return json_response({"url": await svc.pack_checkout_url(account, body["pack"])})
    if not isinstance(body, dict) or not isinstance(body.get("plan"), str):
        raise InvalidRequest("'plan' (or 'pack') is required", param="plan")
    svc = request.app[BILLING]
    account = await svc.store.get_account(account.id) or account
    return json_response({"url": await svc.checkout_url(account, body["plan"])})


async def portal_handler(request: web.Request) -> web.Response:
    from voxgate.proxy.api import caller_account

    account = await caller_account(request)
    svc = request.app[BILLING]
    account = await svc.store.get_account(account.id) or account
    return json_response({"url": await svc.portal_url(account)})


async def invoices_handler(request: web.Request) -> web.Response:
    from voxgate.proxy.api import caller_account

    account = await caller_account(request)
    svc = request.app[BILLING]
    account = await svc.store.get_account(account.id) or account
    return json_response({"object": "list", "data": await svc.invoices(account)})


async def alerts_webhook_handler(request: web.Request) -> web.Response:
    """``/billing/alerts-webhook``: ``/v1/webhook`` for the alert events
    (``GET`` → ``{"url"}``, null unless the endpoint gets them)."""
    from voxgate.proxy.api import caller_account

    account = await caller_account(request)
    svc = request.app[BILLING]
    if request.method == "PUT":
        body = await read_json(request)
        url = body.get("url") if isinstance(body, dict) else None
        secret = await svc.set_alerts_webhook(account, url)
        return json_response({"url": url, "secret": secret})
    if request.method == "DELETE":
        await svc.remove_alerts_webhook(account)
        return json_response({"deleted": True})
    found = await svc.db.webhook_endpoint(account.id)
    alerts = found is not None and any(e in found.events for e in ALERT_EVENTS)
    return json_response({"url": found.url if alerts and found else None})


async def webhook_handler(request: web.Request) -> web.Response:
    """``GET|PUT|DELETE /v1/webhook``: the account's webhook endpoint.

    ``PUT {"url": "https://…", "events": ["session.completed", …]}`` →
    ``{"object": "webhook_endpoint", "url", "events", "secret"}`` (a new
    secret at each PUT, shown only here); ``GET`` → the same without the
    secret (``url`` null and ``events`` [] when none is set); ``DELETE`` →
    ``{"deleted": true}`` (pending deliveries are dropped).

    Raises:
        InvalidRequest/UnsafeUrl (400): see ``BillingService.set_webhook``.
    """
    from voxgate.proxy.api import caller_account

    account = await caller_account(request)
    svc = request.app[BILLING]
    if request.method == "PUT":
        body = await read_json(request)
        if not isinstance(body, dict):
            raise InvalidRequest("send {\"url\": …, \"events\": […]}")
        url, events, secret = await svc.set_webhook(account, body.get("url"), body.get("events"))
        return json_response({"object": "webhook_endpoint", "url": url, "events": events,
                              "secret": secret})
    if request.method == "DELETE":
        found = await svc.db.webhook_endpoint(account.id)
        await svc.db.delete_account_webhook(account.id)
        if found is not None:
            await svc.db.audit("account", account.id, "webhook_removed", {"url": found.url})
        return json_response({"deleted": True})
    found = await svc.db.webhook_endpoint(account.id)
    return json_response({"object": "webhook_endpoint", "url": found.url if found else None,
                          "events": list(found.events) if found else []})


async def webhook_test_handler(request: web.Request) -> web.Response:
    """``POST /v1/webhook/test`` → ``{"queued": true, "id": "evt_…"}``: a
    ``webhook.test`` event queued for the account's endpoint.

    Raises:
        NotFound (404): the account has no webhook endpoint.
    """
    from voxgate.proxy.api import caller_account

    account = await caller_account(request)
    svc = request.app[BILLING]
    event_id = await svc.notifier.test_event(account.id)
    if event_id is None:
        raise NotFound("no webhook endpoint: set one with PUT /v1/webhook first")
    svc.kick("outbox")
    return json_response({"queued": True, "id": event_id})


def delivery_body(item: Any) -> dict[str, Any]:
    """One ``webhook_outbox`` row (``WebhookDelivery``) as the API shows it."""
    payload = orjson.loads(item.payload)
    return {"object": "webhook_delivery", "id": item.id, "event_id": payload.get("id"),
            "type": item.event_type, "created": int(item.created_at),
            "status": "delivered" if item.delivered_at is not None else "pending",
            "attempts": item.attempts, "last_error": item.last_error,
            "next_attempt_at": None if item.delivered_at is not None else item.next_attempt_at,
            "delivered_at": item.delivered_at, "payload": payload}


async def webhook_deliveries_handler(request: web.Request) -> web.Response:
    """``GET /v1/webhook/deliveries?limit=`` → ``{"object": "list", "data":
    [delivery, …]}``: the account's deliveries, newest first (delivered ones
    until ``retention.outbox_days``).

    Raises:
        InvalidRequest (400): ``limit`` not an integer from 1 to 100.
    """
    from voxgate.proxy.api import caller_account

    account = await caller_account(request)
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError as exc:
        raise InvalidRequest("'limit' must be an integer", param="limit") from exc
    if not 1 <= limit <= 100:
        raise InvalidRequest("'limit' must be between 1 and 100", param="limit")
    items = await request.app[BILLING].db.list_webhooks(account.id, limit)
    return json_response({"object": "list", "data": [delivery_body(i) for i in items]})


async def webhook_resend_handler(request: web.Request) -> web.Response:
    """``POST /v1/webhook/deliveries/{delivery_id}/resend`` → ``{"queued":
    true}``: the delivery is due again now (same body, same event id).

    Raises:
        NotFound (404): no such delivery of the account's.
    """
    from voxgate.proxy.api import caller_account

    account = await caller_account(request)
    svc = request.app[BILLING]
    raw = request.match_info["delivery_id"]
    if not raw.isdigit() or not await svc.db.resend_webhook(account.id, int(raw), time.time()):
        raise NotFound(f"no webhook delivery {raw!r}", param="delivery_id")
    svc.kick("outbox")
    return json_response({"queued": True})


async def stripe_webhook_handler(request: web.Request) -> web.Response:
    """``POST /webhooks/stripe``: verify and record a Stripe event.

    Raises:
        RateLimited (429): more than ``billing.webhook_ip_limit_per_min``
            requests a minute from the client's address (checked before the
            body is read or the signature verified).
    """
    wait = request.app[WEBHOOK_LIMIT].hit(request.remote or "?", time.monotonic())
    if wait > 0:
        raise RateLimited("too many webhook requests from this address", retry_after_s=wait)
    payload = await request.read()
    signature = request.headers.get("Stripe-Signature", "")
    body = await request.app[BILLING].receive_webhook(payload, signature)
    return json_response(body)


async def _billing_ctx(app: web.Application):
    svc = app[BILLING]
    await svc.start()
    try:
        yield
    finally:
        await svc.stop()


def setup(app: web.Application) -> None:
    """Plug billing into the app (called by ``voxgate.server.create_app``)."""
    from voxgate.proxy.keys import GATEWAY, SETTINGS

    gateway = app[GATEWAY]
    svc = BillingService(app[SETTINGS], gateway.store, gateway.catalog)
    svc.spend = gateway.spend
    app[BILLING] = svc
    app[WEBHOOK_LIMIT] = SlidingWindow(app[SETTINGS].billing.webhook_ip_limit_per_min, 60.0)
    gateway.on_completed.append(svc.on_session_completed)
    gateway.on_completed.append(svc.on_session_recorded)
    app.router.add_post("/billing/checkout", checkout_handler)
    app.router.add_post("/billing/portal", portal_handler)
    app.router.add_get("/billing/invoices", invoices_handler)
    for method in ("GET", "PUT", "DELETE"):
        app.router.add_route(method, "/billing/alerts-webhook", alerts_webhook_handler)
        app.router.add_route(method, "/v1/webhook", webhook_handler)
    app.router.add_post("/v1/webhook/test", webhook_test_handler)
    app.router.add_get("/v1/webhook/deliveries", webhook_deliveries_handler)
    app.router.add_post("/v1/webhook/deliveries/{delivery_id}/resend", webhook_resend_handler)
    app.router.add_post("/webhooks/stripe", stripe_webhook_handler)
    app.cleanup_ctx.append(_billing_ctx)

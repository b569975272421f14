"""End to end against a real localstripe: catalog sync, subscriptions driven
by signed webhooks, payment failure and grace, cancellation, and
invoice-item settlement (including a Stripe restart in the middle)."""

from __future__ import annotations

import time

from tests.billing.conftest import (
    LocalStripe,
    add_sessions,
    eventually,
    last_month,
    post_event,
    stripe_event,
)
from voxgate.billing.catalog_sync import sync_catalog
from voxgate.errors import ConcurrencyLimited
from voxgate.models import Principal


async def _usage_plan(http, server) -> str:
    async with http.get(server.url + "/billing/usage", headers=server.headers()) as resp:
        assert resp.status == 200
        return (await resp.json())["plan"]


async def _subscribed(localstripe, http, server, plan: str = "starter",
                      card: str = "4242424242424242") -> tuple[str, str]:
    """Sync, register the webhook, give the account a customer and subscribe
    it in Stripe; waits for the webhooks to upgrade the account."""
    svc = server.billing
    await sync_catalog(svc.api, server.catalog, svc.settings.billing)
    await localstripe.register_webhook(server.url + "/webhooks/stripe")
    account = await server.store.get_account(server.account_id)
    customer = await svc.ensure_customer(account)
    await localstripe.set_card(customer, card)
    sub = await localstripe.call("POST", "/v1/subscriptions", {
        "customer": customer, "items": [{"plan": f"voxgate_{plan}"}]})

    async def upgraded():
        a = await server.store.get_account(server.account_id)
        return a if a.plan_id == plan and a.stripe_subscription_id == sub["id"] else None

    await eventually(upgraded, timeout_s=10)
    return customer, sub["id"]


async def test_sync_is_idempotent_and_degrades_on_localstripe(localstripe, make_billing_server):
    server = await make_billing_server(api_base=localstripe.url)
    svc = server.billing
    first = await sync_catalog(svc.api, server.catalog, svc.settings.billing)
    second = await sync_catalog(svc.api, server.catalog, svc.settings.billing)
    assert "no Prices or Meters API" in first[0]
    assert "plan voxgate_starter: created" in first or "plan voxgate_starter: unchanged" in first
    assert all("created" not in line for line in second[1:])
    assert "plan voxgate_pro_overage: skipped (no meters on this server)" in second
    plan = await localstripe.call("GET", "/v1/plans/voxgate_growth")
    assert plan["amount"] == 9900 and plan["interval"] == "month"
    assert plan["metadata"] == {"voxgate_plan": "growth"}


async def test_subscription_webhooks_change_plan_and_admission(localstripe, make_billing_server,
                                                                http):
    server = await make_billing_server(api_base=localstripe.url)
    assert await _usage_plan(http, server) == "free"
    customer, sub_id = await _subscribed(localstripe, http, server)

    assert await _usage_plan(http, server) == "starter"
    account = await server.store.get_account(server.account_id)
    assert (account.status, account.stripe_customer_id) == ("active", customer)

    # admission follows at once: free allows 1 concurrent session, starter 5
    found = await server.store.find_api_key(server.key)
    principal = Principal(account=found[2], project=found[1], api_key=found[0])
    sessions = [await server.gateway.admit(principal, "websocket", "m") for _ in range(5)]
    try:
        await server.gateway.admit(principal, "websocket", "m")
        raise AssertionError("a sixth concurrent session was admitted on starter")
    except ConcurrencyLimited:
        pass
    for active in sessions:
        await server.gateway.finish(active)

    emails = await server.billing.db.list_emails(server.account_id)
    assert [e.kind for e in emails] == ["welcome"]
    invoices = await server.billing.invoices(account)
    assert invoices and invoices[0]["amount_paid"] == 2900 and invoices[0]["status"] == "paid"
    audit = await server.billing.audit_log(server.account_id)
    assert any(a["action"] == "account_updated" and a["detail"].get("plan_id") == "starter"
               for a in audit)


async def test_payment_failure_past_due_then_grace_then_cancel(localstripe, make_billing_server,
                                                               http):
    server = await make_billing_server(api_base=localstripe.url)
    customer, sub_id = await _subscribed(localstripe, http, server)

    # the next invoice cannot be paid: the card asks for 3-D Secure and the
    # customer fails it (localstripe's way to a failed recurring payment)
    await localstripe.set_card(customer, "4000002500003155")
    invoice = await localstripe.call("POST", "/v1/invoices",
                                     {"customer": customer, "subscription": sub_id})
    invoice = await localstripe.call("POST", f"/v1/invoices/{invoice['id']}/pay")
    intent = await localstripe.call("GET", f"/v1/payment_intents/{invoice['payment_intent']}")
    await localstripe.call("POST", f"/v1/payment_intents/{intent['id']}/_authenticate",
                           {"client_secret": intent["client_secret"], "success": False})

    async def past_due():
        a = await server.store.get_account(server.account_id)
        return a if a.status == "past_due" else None

    account = await eventually(past_due, timeout_s=10)
    assert account.past_due_since is not None and account.plan_id == "starter"
    assert await _usage_plan(http, server) == "starter"  # still in the grace period
    svc = server.billing
    assert await svc.check_grace(time.time()) == 0
    assert await svc.check_grace(time.time() + 8 * 86400) == 1
    account = await server.store.get_account(server.account_id)
    assert (account.plan_id, account.status, account.past_due_since) == ("free", "active", None)

    # cancellation: the subscription is deleted → default plan, no subscription
    await server.store.update_account(server.account_id, plan_id="starter")
    await localstripe.call("DELETE", f"/v1/subscriptions/{sub_id}")

    async def canceled():
        a = await server.store.get_account(server.account_id)
        return a if a.stripe_subscription_id is None else None

    account = await eventually(canceled, timeout_s=10)
    assert (account.plan_id, account.status) == ("free", "active")
    assert await _usage_plan(http, server) == "free"


async def test_out_of_order_events_converge(localstripe, make_billing_server, http):
    """A stale ``created`` arriving after ``deleted`` re-reads the
    subscription from Stripe and leaves the account on the default plan."""
    server = await make_billing_server(api_base=localstripe.url)
    customer, sub_id = await _subscribed(localstripe, http, server)
    stale = await localstripe.call("GET", f"/v1/subscriptions/{sub_id}")
    await localstripe.call("DELETE", f"/v1/subscriptions/{sub_id}")

    async def canceled():
        a = await server.store.get_account(server.account_id)
        return a if a.plan_id == "free" else None

    await eventually(canceled, timeout_s=10)
    assert stale["status"] == "active"
    status, body = await post_event(http, server,
                                    stripe_event("customer.subscription.created", stale))
    assert status == 200 and body == {"received": True}
    await eventually(lambda: _all_processed(server), timeout_s=5)
    account = await server.store.get_account(server.account_id)
    assert (account.plan_id, account.stripe_subscription_id) == ("free", None)


async def _all_processed(server) -> bool:
    return not await server.billing.db.unprocessed_events()


async def test_invoice_items_settle_billable_overage_to_the_cent(localstripe, make_billing_server):
    server = await make_billing_server(api_base=localstripe.url, plan="pro",
                                       billing={"settlement_mode": "invoice_items"})
    store, svc = server.store, server.billing
    # subscribed to pro ($29 with 3 sessions included, then 7 cents each)
    customer, _ = await _subscribed(localstripe, None, server, plan="pro")
    # last month: 8 billable, 4 not
    ids = await add_sessions(store, server.catalog, server.account_id, server.project_id,
                             billable=8, not_billable=4, started_at=last_month())
    # one more this month: its period is still open, so it is not settled yet
    await add_sessions(store, server.catalog, server.account_id, server.project_id,
                       billable=4, not_billable=0, started_at=time.time() - 60)

    counts = await svc.settlement.run_once()
    assert counts == {"settled": 5, "failed": 0}
    assert (await svc.settlement.run_once()) == {"settled": 0, "failed": 0}

    items = (await localstripe.call("GET", "/v1/invoiceitems", {"customer": customer}))["data"]
    assert len(items) == 1 and items[0]["amount"] == 5 * 7
    assert items[0]["metadata"]["voxgate_quantity"] == "5"
    invoice = await localstripe.call("POST", "/v1/invoices", {"customer": customer})
    lines = {line["type"]: line["amount"] for line in invoice["lines"]["data"]}
    assert lines == {"subscription": 2900, "invoiceitem": 35}
    assert invoice["amount_due"] == server.catalog.get("pro").cost_cents(8) == 2935

    records = [await store.get_session(i) for i in ids]
    assert [r.settlement for r in records] == (["included"] * 3 + ["invoiced"] * 5
                                               + ["none"] * 4)
    assert {r.settlement_ref for r in records[3:8]} == {items[0]["id"]}
    pending = await svc.db.outbox_errors(server.account_id)
    assert len(pending) == 1  # this month's overage session waits for period close


async def test_invoice_items_survive_a_stripe_restart(tmp_path, make_billing_server):
    ls = LocalStripe(tmp_path / "localstripe.log")
    ls.start()
    try:
        server = await make_billing_server(
            api_base=ls.url, plan="pro",
            billing={"settlement_mode": "invoice_items", "settle_interval_s": 0.1})
        store, svc = server.store, server.billing
        account = await store.get_account(server.account_id)
        await svc.ensure_customer(account)
        ls.stop()
        await add_sessions(store, server.catalog, server.account_id, server.project_id,
                           billable=6, not_billable=2, started_at=last_month())
        svc.kick("settle")

        async def backing_off():
            pending = await svc.db.outbox_errors(server.account_id)
            return pending if pending and all(a >= 2 and "unavailable" in (e or "")
                                              for _, a, e in pending) else None

        pending = await eventually(backing_off, timeout_s=10)
        assert len(pending) == 3
        settlements = await svc.db.list_settlements(server.account_id)
        assert [(s.quantity, s.status) for s in settlements] == [(3, "pending")]

        ls.start()  # same port, empty: the customer must be made again
        await store.update_account(server.account_id, stripe_customer_id=None)
        customer = await svc.ensure_customer(await store.get_account(server.account_id))

        async def settled():
            return not await svc.db.outbox_errors(server.account_id)

        await eventually(settled, timeout_s=10)
        await svc.settlement.run_once()
        items = (await ls.call("GET", "/v1/invoiceitems", {"customer": customer}))["data"]
        assert [i["amount"] for i in items] == [21]
        # the subscription's first invoice takes the pending overage item
        await sync_catalog(svc.api, server.catalog, svc.settings.billing)
        await ls.set_card(customer, "4242424242424242")
        sub = await ls.call("POST", "/v1/subscriptions",
                            {"customer": customer, "items": [{"plan": "voxgate_pro"}]})
        invoice = await ls.call("GET", f"/v1/invoices/{sub['latest_invoice']}")
        assert invoice["amount_due"] == 2900 + 3 * 7
        settlements = await svc.db.list_settlements(server.account_id)
        assert [(s.quantity, s.status) for s in settlements] == [(3, "created")]
    finally:
        ls.stop()


async def test_cancel_at_period_end_ends_at_period_end(localstripe, make_billing_server, http):
    """Canceled in the portal "at period end": the plan stays until then,
    and the periodic check ends it when the period is over (even if the
    ``deleted`` event never comes)."""
    server = await make_billing_server(api_base=localstripe.url)
    customer, sub_id = await _subscribed(localstripe, http, server)
    sub = await localstripe.call("POST", f"/v1/subscriptions/{sub_id}",
                                 {"cancel_at_period_end": True})
    # localstripe sends no customer.subscription.updated: send what Stripe would
    status, _ = await post_event(http, server,
                                 stripe_event("customer.subscription.updated", sub))
    assert status == 200
    await eventually(lambda: _all_processed(server))
    svc = server.billing
    await svc.check_grace(time.time())
    assert await _usage_plan(http, server) == "starter"
    await svc.check_grace(sub["current_period_end"] + 1)
    account = await server.store.get_account(server.account_id)
    assert (account.plan_id, account.stripe_subscription_id) == ("free", None)
    assert await _usage_plan(http, server) == "free"

"""``POST /billing/checkout`` and ``POST /billing/portal``.

localstripe has no Checkout or Portal, so a small loopback front answers
those two endpoints (recording the form it got) and passes every other
request through to localstripe unchanged; customers, plans, subscriptions
and invoices are localstripe's."""

from __future__ import annotations

from urllib.parse import parse_qsl

import aiohttp
import pytest
from aiohttp import web

from tests.billing.conftest import eventually, post_event, stripe_event
from tests.conftest import free_port
from voxgate.billing.catalog_sync import sync_catalog


class CheckoutFront:
    """Checkout and Portal sessions, recorded; the rest proxied to ``upstream``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.checkouts: list[dict[str, str]] = []
        self.portals: list[dict[str, str]] = []
        self.port = free_port()
        self.runner: web.AppRunner | None = None
        self.http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def checkout(self, request: web.Request) -> web.Response:
        form = dict(parse_qsl(await request.text()))
        self.checkouts.append(form)
        n = len(self.checkouts)
        return web.json_response({"id": f"cs_test_{n}", "object": "checkout.session",
                                  "url": f"https://checkout.stripe.test/c/pay/cs_test_{n}"})

    async def portal(self, request: web.Request) -> web.Response:
        form = dict(parse_qsl(await request.text()))
        self.portals.append(form)
        return web.json_response({"id": "bps_1", "object": "billing_portal.session",
                                  "url": "https://billing.stripe.test/p/session/bps_1"})

    async def passthrough(self, request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("authorization", "content-type", "idempotency-key")}
        async with self.http.request(request.method, self.upstream + request.path_qs,
                                     data=await request.read(), headers=headers) as resp:
            return web.Response(status=resp.status, body=await resp.read(),
                                content_type="application/json")

    async def start(self) -> None:
        self.http = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_post("/v1/checkout/sessions", self.checkout)
        app.router.add_post("/v1/billing_portal/sessions", self.portal)
        app.router.add_route("*", "/{tail:.*}", self.passthrough)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.http is not None:
            await self.http.close()


@pytest.fixture
async def front(localstripe):
    f = CheckoutFront(localstripe.url)
    await f.start()
    yield f
    await f.stop()


async def test_checkout_then_completed_webhook_links_and_upgrades(front, localstripe,
                                                                   make_billing_server, http):
    server = await make_billing_server(api_base=front.url)
    svc = server.billing
    await sync_catalog(svc.api, server.catalog, svc.settings.billing)
    await localstripe.register_webhook(server.url + "/webhooks/stripe")

    async with http.post(server.url + "/billing/checkout", json={"plan": "starter"},
                         headers=server.headers()) as resp:
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"url": "https://checkout.stripe.test/c/pay/cs_test_1"}
    account = await server.store.get_account(server.account_id)
    customer = account.stripe_customer_id
    assert customer and customer.startswith("cus_")
    assert (await localstripe.call("GET", f"/v1/customers/{customer}"))["email"] == account.email
    b = svc.settings.billing
    assert front.checkouts == [{
        "mode": "subscription",
        "customer": customer,
        "client_reference_id": account.id,
        "line_items[0][price]": "voxgate_starter",  # localstripe: the plan is the price
        "line_items[0][quantity]": "1",
        "success_url": b.success_url,
        "cancel_url": b.cancel_url,
        "subscription_data[metadata][voxgate_account]": account.id,
        "subscription_data[metadata][voxgate_plan]": "starter",
        "subscription_data[trial_period_days]": "14",
        "metadata[voxgate_account]": account.id,
        "metadata[voxgate_plan]": "starter",
    }]

    # a second checkout reuses the customer; growth has no trial
    url = await svc.checkout_url(await server.store.get_account(server.account_id), "growth")
    assert url.endswith("cs_test_2")
    assert front.checkouts[1]["customer"] == customer
    assert "subscription_data[trial_period_days]" not in front.checkouts[1]

    # the customer pays on Stripe's page: the subscription exists, and
    # Stripe tells us with checkout.session.completed
    await localstripe.set_card(customer, "4242424242424242")
    sub = await localstripe.call("POST", "/v1/subscriptions",
                                 {"customer": customer, "items": [{"plan": "voxgate_starter"}]})
    status, _ = await post_event(http, server, stripe_event("checkout.session.completed", {
        "id": "cs_test_1", "object": "checkout.session", "mode": "subscription",
        "client_reference_id": account.id, "customer": customer, "subscription": sub["id"]}))
    assert status == 200

    async def upgraded():
        a = await server.store.get_account(server.account_id)
        return a if a.plan_id == "starter" and a.stripe_subscription_id == sub["id"] else None

    await eventually(upgraded, timeout_s=10)
    async with http.get(server.url + "/billing/invoices", headers=server.headers()) as resp:
        invoices = (await resp.json())["data"]
    assert invoices[0]["amount_paid"] == 2900 and invoices[0]["currency"] == "usd"
    assert set(invoices[0]) == {"id", "number", "status", "amount_due", "amount_paid",
                                "currency", "created", "hosted_invoice_url"}

    async with http.post(server.url + "/billing/portal", headers=server.headers()) as resp:
        assert resp.status == 200
        assert (await resp.json())["url"].startswith("https://billing.stripe.test/")
    assert front.portals == [{"customer": customer, "return_url": b.portal_return_url}]
    actions = [a["action"] for a in await svc.audit_log(account.id)]
    assert "customer_created" in actions and "checkout_started" in actions


async def test_checkout_refusals(front, make_billing_server, http):
    server = await make_billing_server(api_base=front.url)
    for body, code in (({"plan": "nope"}, "unknown_plan"), ({"plan": "free"}, "free_plan"),
                       ({}, None)):
        async with http.post(server.url + "/billing/checkout", json=body,
                             headers=server.headers()) as resp:
            assert resp.status == 400
            if code:
                assert (await resp.json())["error"]["code"] == code
    async with http.post(server.url + "/billing/checkout", json={"plan": "starter"}) as resp:
        assert resp.status == 401
    async with http.post(server.url + "/billing/portal") as resp:
        assert resp.status == 401
    assert front.checkouts == []
    account = await server.store.get_account(server.account_id)
    assert await server.billing.invoices(account) == []  # no customer yet

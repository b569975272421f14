"""Catalog sync and checkout in the real-Stripe world (Prices and Meters),
against a small in-memory fake of those endpoints (localstripe has neither):
products by metadata, prices by lookup key (``transfer_lookup_key`` on a
price change), one meter, metered overage prices; checkout then uses the
price ids, with the metered price as a quantity-less line."""

from __future__ import annotations

import itertools
import re
from urllib.parse import parse_qsl

import pytest
from aiohttp import web

from tests.conftest import free_port
from voxgate.billing.catalog_sync import sync_catalog
from voxgate.config import BillingSettings
from voxgate.models import load_catalog


def unflatten(pairs: list[tuple[str, str]]) -> dict:
    """``a[b][0]=x`` form pairs → nested dicts (lists stay index-keyed dicts)."""
    out: dict = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


class FakeStripe:
    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.products: dict[str, dict] = {}
        self.prices: dict[str, dict] = {}
        self.meters: dict[str, dict] = {}
        self.checkouts: list[dict] = []
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self.ids)}"

    async def _form(self, request: web.Request) -> dict:
        text = await request.text() if request.method == "POST" else request.query_string
        return unflatten(parse_qsl(text))

    @staticmethod
    def _list(items) -> web.Response:
        return web.json_response({"object": "list", "data": list(items), "has_more": False})

    async def products_(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            return self._list(self.products.values())
        form = await self._form(request)
        product = {"id": self._id("prod"), "object": "product", "name": form["name"],
                   "metadata": form.get("metadata", {})}
        self.products[product["id"]] = product
        return web.json_response(product)

    async def product(self, request: web.Request) -> web.Response:
        product = self.products[request.match_info["id"]]
        product.update({k: v for k, v in (await self._form(request)).items() if k != "metadata"})
        return web.json_response(product)

    async def prices_(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        if request.method == "GET":
            keys = set((form.get("lookup_keys") or {}).values())
            found = [p for p in self.prices.values() if p["active"]
                     and (not keys or p["lookup_key"] in keys)]
            if "data.tiers" not in (form.get("expand") or {}).values():
                # as Stripe: tiers are sent only when expanded
                found = [{k: v for k, v in p.items() if k != "tiers"} for p in found]
            return self._list(found)
        if form.get("transfer_lookup_key") == "true":
            for p in self.prices.values():
                if p["lookup_key"] == form.get("lookup_key"):
                    p["lookup_key"] = None
        recurring = form["recurring"]
        tiered = form.get("billing_scheme") == "tiered"
        tiers = [{"up_to": None if t["up_to"] == "inf" else int(t["up_to"]),
                  "unit_amount": int(t["unit_amount"])}
                 for _, t in sorted((form.get("tiers") or {}).items(), key=lambda kv: int(kv[0]))]
        price = {"id": self._id("price"), "object": "price", "active": True,
                 "product": form["product"], "currency": form["currency"],
                 "billing_scheme": "tiered" if tiered else "per_unit",
                 "tiers_mode": form.get("tiers_mode"), "tiers": tiers if tiered else None,
                 "unit_amount": None if tiered else int(form["unit_amount"]),
                 "lookup_key": form.get("lookup_key"),
                 "metadata": form.get("metadata", {}),
                 "recurring": {"interval": recurring["interval"],
                               "usage_type": recurring.get("usage_type", "licensed"),
                               "meter": recurring.get("meter")}}
        self.prices[price["id"]] = price
        return web.json_response(price)

    async def price(self, request: web.Request) -> web.Response:
        price = self.prices[request.match_info["id"]]
        form = await self._form(request)
        if "active" in form:
            price["active"] = form["active"] == "true"
        return web.json_response(price)

    async def meters_(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            return self._list(self.meters.values())
        form = await self._form(request)
        meter = {"id": self._id("mtr"), "object": "billing.meter", "status": "active", **form}
        self.meters[meter["id"]] = meter
        return web.json_response(meter)

    async def customers_(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        return web.json_response({"id": self._id("cus"), "object": "customer", **form})

    async def checkout(self, request: web.Request) -> web.Response:
        self.checkouts.append(await self._form(request))
        return web.json_response({"id": "cs_1", "url": "https://checkout.stripe.test/cs_1"})

    async def start(self) -> None:
        app = web.Application()
        r = app.router
        r.add_route("*", "/v1/products", self.products_)
        r.add_post("/v1/products/{id}", self.product)
        r.add_route("*", "/v1/prices", self.prices_)
        r.add_post("/v1/prices/{id}", self.price)
        r.add_route("*", "/v1/billing/meters", self.meters_)
        r.add_post("/v1/customers", self.customers_)
        r.add_post("/v1/checkout/sessions", self.checkout)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def fake_stripe():
    fake = FakeStripe()
    await fake.start()
    yield fake
    await fake.stop()


async def test_sync_creates_then_finds_again_then_replaces_changed_price(fake_stripe, tmp_path,
                                                                        billing_catalog):
    from voxgate.billing.stripe_api import StripeApi

    settings = BillingSettings(stripe_secret_key="sk_test_x", api_base=fake_stripe.url)
    catalog = load_catalog(billing_catalog)
    api = StripeApi(settings)
    try:
        first = await sync_catalog(api, catalog, settings)
        assert sum("created" in line for line in first) == 1 + 4 + 3 + 2  # meter, products, prices
        assert len(fake_stripe.meters) == 1
        meter = next(iter(fake_stripe.meters.values()))
        assert meter["event_name"] == "voxgate_billable_sessions"
        assert meter["default_aggregation"] == {"formula": "sum"}
        assert meter["customer_mapping"] == {"type": "by_id",
                                             "event_payload_key": "stripe_customer_id"}
        by_key = {p["lookup_key"]: p for p in fake_stripe.prices.values()}
        assert by_key["voxgate_starter"]["unit_amount"] == 2900
        assert by_key["voxgate_pro_overage"]["recurring"] == {
            "interval": "month", "usage_type": "metered", "meter": meter["id"]}
        assert by_key["voxgate_payg_overage"]["unit_amount"] == 10
        assert "voxgate_payg" not in by_key  # no subscription fee

        second = await sync_catalog(api, catalog, settings)
        assert not any("created" in line for line in second)

        # a price change: a new price takes the lookup key, the old is archived
        changed = billing_catalog.read_text().replace("price_cents = 9900", "price_cents = 12900")
        billing_catalog.write_text(changed)
        third = await sync_catalog(api, load_catalog(billing_catalog), settings)
        replaced = [line for line in third if "replacing" in line]
        assert len(replaced) == 1
        assert replaced[0].endswith(f"(voxgate_growth): created, replacing "
                                    f"{by_key['voxgate_growth']['id']}")
        assert by_key["voxgate_growth"]["active"] is False
        live = [p for p in fake_stripe.prices.values()
                if p["lookup_key"] == "voxgate_growth" and p["active"]]
        assert [p["unit_amount"] for p in live] == [12900]
    finally:
        await api.close()


async def test_checkout_uses_prices_and_metered_overage(fake_stripe, make_billing_server):
    server = await make_billing_server(api_base=fake_stripe.url)
    svc = server.billing
    await sync_catalog(svc.api, server.catalog, svc.settings.billing)
    account = await server.store.get_account(server.account_id)
    assert await svc.checkout_url(account, "pro") == "https://checkout.stripe.test/cs_1"
    by_key = {p["lookup_key"]: p["id"] for p in fake_stripe.prices.values()}
    items = fake_stripe.checkouts[0]["line_items"]
    assert items == {"0": {"price": by_key["voxgate_pro"], "quantity": "1"},
                     "1": {"price": by_key["voxgate_pro_overage"]}}
    account = await server.store.get_account(server.account_id)
    await svc.checkout_url(account, "payg")
    assert fake_stripe.checkouts[1]["line_items"] == {"0": {"price": by_key["voxgate_payg_overage"]}}

"""``voxgate billing sync``: the plan catalog → Stripe, idempotently.

Per paid plan: a product (found again by metadata ``voxgate_plan``) and a
recurring monthly price (found again by ``lookup_key`` = ``voxgate_<plan>``);
one billing meter for billable sessions (``billing.meter_event_name``, sum of
the payload's ``value``, customer from ``stripe_customer_id``) and, for plans
with ``overage_cents``, a metered price on it (``voxgate_<plan>_overage``).
Prices cannot change amount: a changed price is created anew and takes the
lookup key over (``transfer_lookup_key``); the old one is archived.

Servers without the Prices API (localstripe) get Plans with id
``voxgate_<plan>`` instead, and no meter: the report says so, and
``settlement_mode = "invoice_items"`` is the way to settle there.
Pages: https://docs.stripe.com/api/products, /api/prices, /api/billing/meter.
"""

from __future__ import annotations

from typing import Any

from voxgate.billing.events import LOOKUP_PREFIX
from voxgate.billing.stripe_api import StripeApi, StripeRejected
from voxgate.config import BillingSettings
from voxgate.models import Plan, PlanCatalog

__all__ = ["sync_catalog", "lookup_key"]


def lookup_key(plan: Plan, overage: bool = False) -> str:
    return f"{LOOKUP_PREFIX}{plan.id}{'_overage' if overage else ''}"


async def _list_all(api: StripeApi, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await api.request("get", path, {**params, "limit": 100,
                                               **({"starting_after": cursor} if cursor else {})})
        data = page.get("data") or []
        out.extend(data)
        if not page.get("has_more") or not data:
            return out
        cursor = data[-1]["id"]


async def _product(api: StripeApi, plan: Plan, products: list[dict[str, Any]],
                   report: list[str]) -> str:
    for product in products:
        if (product.get("metadata") or {}).get("voxgate_plan") == plan.id:
            if product.get("name") != f"voxgate {plan.name}":
                await api.request("post", f"/v1/products/{product['id']}",
                                  {"name": f"voxgate {plan.name}"})
                report.append(f"product {product['id']} ({plan.id}): renamed")
            else:
                report.append(f"product {product['id']} ({plan.id}): unchanged")
            return product["id"]
    product = await api.request("post", "/v1/products", {
        "name": f"voxgate {plan.name}", "metadata": {"voxgate_plan": plan.id}})
    products.append(product)
    report.append(f"product {product['id']} ({plan.id}): created")
    return product["id"]


async def _price(api: StripeApi, key: str, want: dict[str, Any], unit_cents: int,
                 report: list[str]) -> str:
    found = await api.request("get", "/v1/prices",
                              {"lookup_keys": [key], "active": "true", "limit": 1})
    current = (found.get("data") or [None])[0]
    recurring = want["recurring"]
    if current is not None:
        same = (current.get("unit_amount") == unit_cents
                and current.get("currency") == want["currency"]
                and (current.get("recurring") or {}).get("interval") == recurring["interval"]
                and (current.get("recurring") or {}).get("usage_type", "licensed")
                == recurring.get("usage_type", "licensed")
                and (current.get("recurring") or {}).get("meter") == recurring.get("meter"))
        if same:
            report.append(f"price {current['id']} ({key}): unchanged")
            return current["id"]
    price = await api.request("post", "/v1/prices", {
        **want, "unit_amount": unit_cents, "lookup_key": key, "transfer_lookup_key": "true"})
    if current is not None:
        await api.request("post", f"/v1/prices/{current['id']}", {"active": "false"})
        report.append(f"price {price['id']} ({key}): created, replacing {current['id']}")
    else:
        report.append(f"price {price['id']} ({key}): created")
    return price["id"]


async def _meter(api: StripeApi, event_name: str, report: list[str]) -> str:
    for meter in await _list_all(api, "/v1/billing/meters", {"status": "active"}):
        if meter.get("event_name") == event_name:
            report.append(f"meter {meter['id']} ({event_name}): unchanged")
            return meter["id"]
    meter = await api.request("post", "/v1/billing/meters", {
        "display_name": "voxgate billable sessions",
        "event_name": event_name,
        "default_aggregation": {"formula": "sum"},
        "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
        "value_settings": {"event_payload_key": "value"},
    })
    report.append(f"meter {meter['id']} ({event_name}): created")
    return meter["id"]


async def _legacy_plan(api: StripeApi, plan: Plan, product_id: str, currency: str,
                       report: list[str]) -> None:
    key = lookup_key(plan)
    try:
        existing = await api.request("get", f"/v1/plans/{key}")
    except StripeRejected as err:
        if err.http_status != 404:
            raise
        existing = None
    if existing is not None:
        if existing.get("amount") == plan.price_cents:
            report.append(f"plan {key}: unchanged")
            return
        await api.request("delete", f"/v1/plans/{key}")
        report.append(f"plan {key}: amount changed, re-created")
    await api.request("post", "/v1/plans", {
        "id": key, "product": product_id, "amount": plan.price_cents, "currency": currency,
        "interval": "month", "metadata": {"voxgate_plan": plan.id}})
    if existing is None:
        report.append(f"plan {key}: created")


async def sync_catalog(api: StripeApi, catalog: PlanCatalog,
                       settings: BillingSettings) -> list[str]:
    """Create or update the products, prices and meter; returns one line per
    object and what was done (``created``, ``unchanged``, ``skipped …``)."""
    report: list[str] = []
    currency = settings.currency
    paid = [p for p in catalog.plans.values() if p.is_paid]
    products = await _list_all(api, "/v1/products", {})
    if not await api.has_prices():
        report.append("this Stripe server has no Prices or Meters API (localstripe?): "
                      "created Plans instead of prices; meter and metered overage prices "
                      "skipped: use billing.settlement_mode = \"invoice_items\"")
        for plan in paid:
            product_id = await _product(api, plan, products, report)
            if plan.price_cents > 0:
                await _legacy_plan(api, plan, product_id, currency, report)
            if plan.overage_cents is not None:
                report.append(f"plan {lookup_key(plan, True)}: skipped (no meters on this server)")
        return report
    meter_id = None
    if any(p.overage_cents is not None for p in paid):
        meter_id = await _meter(api, settings.meter_event_name, report)
    for plan in paid:
        product_id = await _product(api, plan, products, report)
        if plan.price_cents > 0:
            await _price(api, lookup_key(plan), {
                "product": product_id, "currency": currency,
                "recurring": {"interval": "month", "usage_type": "licensed"},
                "metadata": {"voxgate_plan": plan.id},
            }, plan.price_cents, report)
        if plan.overage_cents is not None:
            await _price(api, lookup_key(plan, True), {
                "product": product_id, "currency": currency,
                "recurring": {"interval": "month", "usage_type": "metered", "meter": meter_id},
                "metadata": {"voxgate_plan": plan.id, "voxgate_overage": "true"},
            }, plan.overage_cents, report)
    return report

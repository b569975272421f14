"""``voxgate billing sync``: the plan catalog → Stripe, idempotently.

Per paid plan: a product (found again by metadata ``voxgate_plan``) and a
recurring monthly price (found again by ``lookup_key`` = ``voxgate_<plan>``);
one billing meter for billable sessions (``billing.meter_event_name``, sum of
the payload's ``value``, customer from ``stripe_customer_id``) and, for plans
with ``overage_cents``, a metered price on it (``voxgate_<plan>_overage``).
Prices cannot change amount: a changed price is created anew and takes the
lookup key over (``transfer_lookup_key``); the old one is archived.

Enterprise plans (one account's own, ``voxgate.models.enterprise``) are
synced the same way under their own product (metadata ``voxgate_plan`` =
``enterprise`` and ``voxgate_account``) and lookup keys
``voxgate_enterprise_<account>`` and ``…_overage``; an overage priced in
tiers becomes a metered price with ``billing_scheme=tiered``,
``tiers_mode=graduated`` and ``tiers[]`` (``up_to``, ``unit_amount``; the
last ``up_to`` is ``"inf"``), found again with ``expand[]=data.tiers``
(https://docs.stripe.com/api/prices/create#create_price-tiers).

Servers without the Prices API (localstripe) get Plans with id
``voxgate_<plan>`` instead, and no meter: the report says so, and
``settlement_mode = "invoice_items"`` is the way to settle there.
Pages: https://docs.stripe.com/api/products, /api/prices, /api/billing/meter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from voxgate.billing.events import LOOKUP_PREFIX
from voxgate.billing.stripe_api import StripeApi, StripeRejected
from voxgate.config import BillingSettings
from voxgate.models import Plan, PlanCatalog

__all__ = ["sync_catalog", "sync_plans", "lookup_key", "stripe_tiers"]


def lookup_key(plan: Plan, overage: bool = False) -> str:
    """``voxgate_<plan>`` (``voxgate_enterprise_<account>`` for an enterprise
    plan), ``_overage`` appended for the metered price."""
    name = plan.id if plan.account_id is None else f"{plan.id}_{plan.account_id}"
    return f"{LOOKUP_PREFIX}{name}{'_overage' if overage else ''}"


def stripe_tiers(plan: Plan) -> list[dict[str, Any]]:
    """The plan's tiers as Stripe's ``tiers[]``: ``up_to`` (``"inf"`` for
    the last) and ``unit_amount`` in cents."""
    return [{"up_to": "inf" if t.up_to is None else t.up_to, "unit_amount": t.unit_cents}
            for t in plan.tiers]


def _meta(plan: Plan) -> dict[str, str]:
    meta = {"voxgate_plan": plan.id}
    if plan.account_id is not None:
        meta["voxgate_account"] = plan.account_id
    return meta


def _product_name(plan: Plan) -> str:
    if plan.account_id is None:
        return f"voxgate {plan.name}"
    return f"voxgate {plan.name} ({plan.account_id})"


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
    name = _product_name(plan)
    for product in products:
        meta = product.get("metadata") or {}
        if meta.get("voxgate_plan") == plan.id and meta.get("voxgate_account") == plan.account_id:
            if product.get("name") != name:
                await api.request("post", f"/v1/products/{product['id']}", {"name": name})
                report.append(f"product {product['id']} ({plan.id}): renamed")
            else:
                report.append(f"product {product['id']} ({plan.id}): unchanged")
            return product["id"]
    product = await api.request("post", "/v1/products", {"name": name, "metadata": _meta(plan)})
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


async def _tiered_price(api: StripeApi, key: str, want: dict[str, Any], tiers: list[dict[str, Any]],
                        report: list[str]) -> str:
    """A metered price with graduated tiers under lookup key ``key``: kept
    when its tiers, currency and meter are the ones wanted, else created anew
    (taking the key over) and the old one archived."""
    found = await api.request("get", "/v1/prices", {"lookup_keys": [key], "active": "true",
                                                    "limit": 1, "expand": ["data.tiers"]})
    current = (found.get("data") or [None])[0]
    wanted = [(t["up_to"], t["unit_amount"]) for t in tiers]
    if current is not None:
        have = [("inf" if t.get("up_to") is None else t.get("up_to"), t.get("unit_amount"))
                for t in current.get("tiers") or []]
        same = (current.get("billing_scheme") == "tiered"
                and current.get("tiers_mode") == "graduated" and have == wanted
                and current.get("currency") == want["currency"]
                and (current.get("recurring") or {}).get("meter") == want["recurring"]["meter"])
        if same:
            report.append(f"price {current['id']} ({key}): unchanged")
            return current["id"]
    price = await api.request("post", "/v1/prices", {
        **want, "billing_scheme": "tiered", "tiers_mode": "graduated", "tiers": tiers,
        "lookup_key": key, "transfer_lookup_key": "true"})
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
        "interval": "month", "metadata": _meta(plan)})
    if existing is None:
        report.append(f"plan {key}: created")


async def sync_catalog(api: StripeApi, catalog: PlanCatalog, settings: BillingSettings,
                       enterprise: Sequence[Plan] = ()) -> list[str]:
    """Create or update the products, prices and meter of the catalog's paid
    plans and of the ``enterprise`` plans; returns one line per object and
    what was done (``created``, ``unchanged``, ``skipped …``)."""
    return await sync_plans(api, [*catalog.plans.values(), *enterprise], settings)


async def sync_plans(api: StripeApi, plans: Sequence[Plan],
                     settings: BillingSettings) -> list[str]:
    """``sync_catalog`` for the paid ones of ``plans`` (and the meter when
    one of them has an overage price)."""
    report: list[str] = []
    currency = settings.currency
    paid = [p for p in plans if p.is_paid]
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
                "metadata": _meta(plan),
            }, plan.price_cents, report)
        metered = {
            "product": product_id, "currency": currency,
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter_id},
            "metadata": {**_meta(plan), "voxgate_overage": "true"},
        }
        if plan.tiers:
            await _tiered_price(api, lookup_key(plan, True), metered, stripe_tiers(plan), report)
        elif plan.overage_cents is not None:
            await _price(api, lookup_key(plan, True), metered, plan.overage_cents, report)
    return report

"""Add-on packs and enterprise plans on the billing side.

Packs are bought through Stripe Checkout in one-time payment mode
(``mode=payment``, https://docs.stripe.com/api/checkout/sessions/create):
the line item is an inline ``price_data`` (the catalog's price, no synced
price needed) and the session's ``metadata`` names the account and the pack.
``checkout.session.completed`` with ``payment_status`` ``paid`` (or
``checkout.session.async_payment_succeeded`` for delayed methods) credits
the pack, once per Checkout Session (``session_packs.ref``), and the
webhook event id is recorded once (``stripe_events``).

Operators grant packs (``voxgate billing grant-pack``, the ``/admin`` page)
and set enterprise plans (``voxgate billing set-enterprise``, ``/admin``);
both go through ``Addons`` so the audit log says who did what.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from voxgate.billing.db import BillingDB
from voxgate.errors import InvalidRequest
from voxgate.models import Account, PlanCatalog
from voxgate.models.enterprise import enterprise_plan
from voxgate.models.packs import AccountPack
from voxgate.models.plans import ENTERPRISE_PLAN_ID, Pack, Plan

__all__ = ["pack_checkout_params", "paid_pack", "Addons", "PAID_STATUSES"]

# Checkout Session payment_status values meaning the money is there
PAID_STATUSES = ("paid", "no_payment_required")


def pack_checkout_params(pack: Pack, account: Account, customer: str, currency: str,
                         success_url: str, cancel_url: str) -> dict[str, Any]:
    """The Checkout Session (one-time payment) buying ``pack`` for ``account``."""
    meta = {"voxgate_account": account.id, "voxgate_pack": pack.id}
    return {
        "mode": "payment",
        "customer": customer,
        "client_reference_id": account.id,
        "line_items": [{
            "price_data": {"currency": currency, "unit_amount": pack.price_cents,
                           "product_data": {"name": f"voxgate {pack.name}"}},
            "quantity": 1,
        }],
        "success_url": success_url,
        "cancel_url": cancel_url,
        "metadata": meta,
        "payment_intent_data": {"metadata": meta},
    }


def paid_pack(session: dict[str, Any], catalog: PlanCatalog) -> Pack | None:
    """The catalog pack a completed Checkout Session paid for: ``mode`` is
    ``payment``, ``payment_status`` paid, ``metadata.voxgate_pack`` a pack of
    the catalog. None otherwise (not a pack, or not paid yet)."""
    if session.get("mode") != "payment" or session.get("payment_status") not in PAID_STATUSES \
            or not isinstance(session.get("id"), str):
        return None
    pack_id = (session.get("metadata") or {}).get("voxgate_pack")
    return catalog.packs.get(pack_id) if isinstance(pack_id, str) else None


class Addons:
    """Credits packs and sets enterprise plans, with the audit log."""

    def __init__(self, store: Any, bdb: BillingDB, catalog: PlanCatalog) -> None:
        self.store = store
        self.bdb = bdb
        self.catalog = catalog

    async def credit_checkout(self, account: Account, pack: Pack, session: dict[str, Any],
                              purchased_at: float, event_id: str) -> tuple[AccountPack, bool]:
        """Credit the pack a Checkout Session paid for, once per session."""
        paid = session.get("amount_total")
        found, created = await self.store.grant_pack(
            account.id, catalog_pack=pack.id, sessions=pack.sessions,
            price_cents=paid if isinstance(paid, int) else pack.price_cents,
            source="checkout", ref=str(session["id"]), purchased_at=purchased_at)
        if created:
            await self.bdb.audit("stripe", account.id, "pack_purchased", {
                "pack": pack.id, "sessions": pack.sessions, "checkout_session": session["id"],
                "event": event_id, "expires_at": found.expires_at})
        return found, created

    async def grant(self, account_id: str, actor: str, *, pack_id: str | None = None,
                    sessions: int | None = None, now: float | None = None) -> AccountPack:
        """An operator's grant: the catalog pack ``pack_id``, or ``sessions``
        sessions. Free; expires 30 days after ``now``.

        Raises:
            InvalidRequest: neither or both given, unknown pack, sessions < 1.
            KeyError: unknown account.
        """
        if (pack_id is None) == (sessions is None):
            raise InvalidRequest("give a catalog pack or a number of sessions", param="pack")
        if pack_id is not None:
            pack = self.catalog.packs.get(pack_id)
            if pack is None:
                valid = ", ".join(self.catalog.packs) or "none"
                raise InvalidRequest(f"unknown pack {pack_id!r} (catalog packs: {valid})",
                                     param="pack", code="unknown_pack")
            catalog_pack, count = pack.id, pack.sessions
        else:
            if not isinstance(sessions, int) or sessions < 1:
                raise InvalidRequest("sessions must be a whole number ≥ 1", param="sessions")
            catalog_pack, count = "operator", sessions
        now = time.time() if now is None else now
        granted, _ = await self.store.grant_pack(
            account_id, catalog_pack=catalog_pack, sessions=count, price_cents=0,
            source="operator", ref=f"grant_{uuid.uuid4().hex}", purchased_at=now)
        await self.bdb.audit(actor, account_id, "pack_granted", {
            "pack": catalog_pack, "sessions": count, "id": granted.id,
            "expires_at": granted.expires_at})
        return granted

    async def set_enterprise(self, account_id: str, terms: dict[str, Any], actor: str) -> Plan:
        """Give the account the enterprise plan of ``terms`` (its plan
        becomes ``enterprise``) and return it.

        Raises:
            InvalidRequest: bad terms (``voxgate.models.enterprise``).
            KeyError: unknown account.
        """
        account = await self.store.get_account(account_id)
        if account is None:
            raise KeyError(account_id)
        try:
            plan = enterprise_plan(account_id, terms)
        except ValueError as exc:
            raise InvalidRequest(f"enterprise plan: {exc}", code="invalid_plan") from exc
        await self.store.set_enterprise_terms(account_id, terms)
        if account.plan_id != ENTERPRISE_PLAN_ID:
            await self.store.update_account(account_id, plan_id=ENTERPRISE_PLAN_ID)
        await self.bdb.audit(actor, account_id, "enterprise_plan_set",
                             {"terms": terms, "was": account.plan_id})
        return plan

    async def expire(self, now: float | None = None) -> list[AccountPack]:
        """The add-on expiry job: mark the packs whose 30 days are over at
        ``now`` as expired, and note each once in the audit log (safe to run
        from several processes: each pack is marked by one). Expired packs
        stop counting the moment they expire whether or not this ran."""
        now = time.time() if now is None else now
        expired = await self.store.expire_packs(now)
        for pack in expired:
            await self.bdb.audit("system", pack.account_id, "pack_expired", {
                "id": pack.id, "pack": pack.catalog_pack, "sessions": pack.sessions,
                "sessions_used": pack.sessions_used, "expires_at": pack.expires_at})
        return expired

    async def enterprise_plans(self) -> list[Plan]:
        """The enterprise plan of every account on one (for ``billing sync``)."""
        plans = []
        for account_id, terms in (await self.store.list_enterprise_terms()).items():
            account = await self.store.get_account(account_id)
            if account is None or account.plan_id != ENTERPRISE_PLAN_ID:
                continue
            try:
                plans.append(enterprise_plan(account_id, terms))
            except ValueError:
                continue
        return plans

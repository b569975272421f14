"""The Stripe adapter: the few Stripe API calls voxgate makes, on
``stripe.StripeClient`` with its aiohttp transport, and Stripe's exceptions
translated into voxgate's at this edge.

Pages followed: Customers, Checkout Sessions (``mode=subscription``),
Customer Portal sessions, Invoices, Invoice Items, Subscriptions, Billing
Meters and Meter Events (https://docs.stripe.com/api). ``api_base`` points
the client at a test server such as localstripe, which has Customers, Plans,
Products, Subscriptions, Invoices and Invoice Items, but no Prices, Meters,
Checkout or Portal: ``has_prices`` tells which world we are in.

Errors::

    VoxgateError
    └── BillingError                  billing_error
        ├── BillingNotConfigured      503, no secret key / webhook secret
        ├── StripeUnavailable         502, transient: network, 5xx, 429
        └── StripeRejected            400-class answer from Stripe, permanent
"""

from __future__ import annotations

import logging
from typing import Any

import stripe

from voxgate.config import BillingSettings
from voxgate.errors import BillingError, BillingNotConfigured, StripeRejected, StripeUnavailable

__all__ = [
    "BillingError",
    "BillingNotConfigured",
    "StripeUnavailable",
    "StripeRejected",
    "StripeApi",
    "is_duplicate_meter_event",
]

log = logging.getLogger("voxgate.billing.stripe")

TIMEOUT_S = 20.0


def translate(exc: stripe.StripeError) -> BillingError:
    """A Stripe exception as a voxgate ``BillingError`` (chain it with ``from``)."""
    status = exc.http_status
    message = exc.user_message or str(exc) or type(exc).__name__
    if isinstance(exc, (stripe.APIConnectionError, stripe.RateLimitError)) or \
            status is None or status >= 500 or status == 429:
        return StripeUnavailable(f"Stripe unavailable: {message}")
    return StripeRejected(f"Stripe refused the request ({status}): {message}",
                          http_status=status, stripe_code=exc.code)


def is_duplicate_meter_event(err: BillingError) -> bool:
    """Stripe answers a meter event whose ``identifier`` it already holds with
    ``400 invalid_request_error`` "An event already exists with identifier …":
    proof that the usage was recorded."""
    if not isinstance(err, StripeRejected):
        return False
    text = err.message.lower()
    return err.stripe_code in ("resource_already_exists", "duplicate_meter_event") or (
        "identifier" in text and "already exists" in text)


def _plain(obj: Any) -> Any:
    """A StripeObject as plain dicts and lists."""
    if isinstance(obj, stripe.StripeObject):
        return obj.to_dict(recursive=True)
    return obj


class StripeApi:
    """Async Stripe calls. Results are plain dicts.

    Raises (every method): ``StripeUnavailable``, ``StripeRejected``;
    ``BillingNotConfigured`` when no secret key is set.
    """

    def __init__(self, settings: BillingSettings) -> None:
        self.settings = settings
        self._client: stripe.StripeClient | None = None
        self._http: stripe.AIOHTTPClient | None = None
        self._has_prices: bool | None = None

    @property
    def configured(self) -> bool:
        return self.settings.stripe_secret_key is not None and \
            bool(self.settings.stripe_secret_key.get_secret_value())

    @property
    def client(self) -> stripe.StripeClient:
        if not self.configured:
            raise BillingNotConfigured(
                "Stripe is not configured: set STRIPE_SECRET_KEY (billing.stripe_secret_key)")
        if self._client is None:
            self._http = stripe.AIOHTTPClient(timeout=TIMEOUT_S)
            base = {"api": self.settings.api_base.rstrip("/")} if self.settings.api_base else None
            self._client = stripe.StripeClient(
                self.settings.stripe_secret_key.get_secret_value(),  # type: ignore[union-attr]
                base_addresses=base,  # type: ignore[arg-type]
                http_client=self._http,
                max_network_retries=0,  # our outboxes retry, with backoff
            )
        return self._client

    async def close(self) -> None:
        if self._http is not None and self._http._cached_session is not None:  # noqa: SLF001
            await self._http.close_async()
        self._client = None
        self._http = None

    async def request(self, method: str, path: str, params: dict[str, Any] | None = None,
                      *, idempotency_key: str | None = None) -> dict[str, Any]:
        """One API call: ``method`` ``path`` with form ``params``; the JSON answer."""
        client = self.client
        kwargs: dict[str, Any] = dict(params or {})
        if idempotency_key:
            kwargs["idempotency_key"] = idempotency_key
        try:
            resp = await client.raw_request_async(method, path, **kwargs)
            obj = client.deserialize(resp, api_mode="V1")
        except stripe.StripeError as exc:
            raise translate(exc) from exc
        return _plain(obj)

    # -- capabilities ----------------------------------------------------

    async def has_prices(self) -> bool:
        """False on servers without the Prices API (localstripe): there,
        plans stand in for prices and there are no meters."""
        if self._has_prices is None:
            try:
                await self.request("get", "/v1/prices", {"limit": 1})
                self._has_prices = True
            except StripeRejected as err:
                if err.http_status != 404:
                    raise
                self._has_prices = False
        return self._has_prices

    # -- customers, checkout, portal, invoices ---------------------------

    async def create_customer(self, email: str, name: str, account_id: str) -> dict[str, Any]:
        params: dict[str, Any] = {"email": email, "metadata": {"voxgate_account": account_id}}
        if name:
            params["name"] = name
        return await self.request("post", "/v1/customers", params,
                                  idempotency_key=f"voxgate-customer-{account_id}")

    async def price_for(self, lookup_key: str) -> str | None:
        """The active price id with that lookup key; on a server without
        Prices, the plan whose id is the lookup key (plans are prices to
        Checkout). None when there is neither."""
        if await self.has_prices():
            found = await self.request("get", "/v1/prices",
                                       {"lookup_keys": [lookup_key], "active": "true", "limit": 1})
            data = found.get("data") or []
            return data[0]["id"] if data else None
        try:
            plan = await self.request("get", f"/v1/plans/{lookup_key}")
        except StripeRejected as err:
            if err.http_status == 404:
                return None
            raise
        return plan["id"]

    async def checkout_session(self, params: dict[str, Any]) -> dict[str, Any]:
        return await self.request("post", "/v1/checkout/sessions", params)

    async def portal_session(self, customer: str, return_url: str) -> dict[str, Any]:
        return await self.request("post", "/v1/billing_portal/sessions",
                                  {"customer": customer, "return_url": return_url})

    async def list_invoices(self, customer: str, limit: int = 24) -> list[dict[str, Any]]:
        found = await self.request("get", "/v1/invoices", {"customer": customer, "limit": limit})
        return list(found.get("data") or [])

    async def get_subscription(self, subscription_id: str) -> dict[str, Any] | None:
        """The subscription as Stripe has it now; None if Stripe does not know it."""
        try:
            return await self.request("get", f"/v1/subscriptions/{subscription_id}")
        except StripeRejected as err:
            if err.http_status == 404:
                return None
            raise

    # -- settlement ------------------------------------------------------

    async def create_meter_event(self, params: dict[str, Any], *,
                                 idempotency_key: str) -> dict[str, Any]:
        return await self.request("post", "/v1/billing/meter_events", params,
                                  idempotency_key=idempotency_key)

    async def create_invoice_item(self, params: dict[str, Any], *,
                                  idempotency_key: str) -> dict[str, Any]:
        return await self.request("post", "/v1/invoiceitems", params,
                                  idempotency_key=idempotency_key)

"""Billing's tables: ``BillingDB`` and its records, kept with the store's
other queries in ``voxgate.store.queries.billing`` (re-exported here)."""

from voxgate.store.queries.billing import (
    BillingDB,
    EmailItem,
    InvoiceSettlement,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookItem,
    backoff_s,
)

__all__ = ["BillingDB", "EmailItem", "WebhookItem", "WebhookEndpoint", "WebhookDelivery",
           "InvoiceSettlement", "backoff_s"]

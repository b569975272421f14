"""Billing's tables: ``BillingDB`` and its records, kept with the store's
other queries in ``voxgate.metering.rooms.billing`` (re-exported here)."""

from voxgate.metering.rooms.billing import (
    BillingDB,
    EmailItem,
    InvoiceSettlement,
    WebhookItem,
    backoff_s,
)

__all__ = ["BillingDB", "EmailItem", "WebhookItem", "InvoiceSettlement", "backoff_s"]

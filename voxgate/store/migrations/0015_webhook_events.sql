-- 0015_webhook_events: one customer webhook endpoint per account for every
-- event type (issue 21, item 6). account_webhooks.events is the JSON array
-- of the event types the endpoint subscribes to (voxgate.billing.notify
-- EVENT_TYPES: "session.completed", "quota_warning", "quota_exhausted");
-- only those are queued for it. Rows set before this version through
-- /billing/alerts-webhook keep what they had: the alert events.
-- webhook_outbox_account serves an account's deliveries, newest first
-- (BillingDB.list_webhooks: the dashboard's delivery list and resend).
-- PostgreSQL's twin: postgresql/0015_webhook_events.sql.
ALTER TABLE account_webhooks ADD COLUMN events TEXT NOT NULL
    DEFAULT '["quota_warning","quota_exhausted"]';
CREATE INDEX webhook_outbox_account ON webhook_outbox(account_id, id);

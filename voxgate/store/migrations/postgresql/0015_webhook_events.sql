-- 0015_webhook_events (PostgreSQL): ../0015_webhook_events.sql, the same
-- column and index. A constant default: no table rewrite.
ALTER TABLE account_webhooks ADD COLUMN IF NOT EXISTS events TEXT NOT NULL
    DEFAULT '["quota_warning","quota_exhausted"]';
CREATE INDEX IF NOT EXISTS webhook_outbox_account ON webhook_outbox(account_id, id);

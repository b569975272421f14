-- 0018_spend_limits (PostgreSQL): ../0018_spend_limits.sql, the same: an
-- account's own monthly provider-cost cap (decimal string of USD) and the
-- spend alerts sent (once per account, period, threshold).
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS spend_limit_usd TEXT;
CREATE TABLE IF NOT EXISTS spend_alerts (
    account_id TEXT NOT NULL,
    period     TEXT NOT NULL,
    threshold  INTEGER NOT NULL,
    sent_at    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (account_id, period, threshold)
);

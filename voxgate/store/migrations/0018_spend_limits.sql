-- 0018_spend_limits: the operator's monthly cap on one account's provider
-- cost (issue 21, "plans that cap cost"), a decimal string of USD
-- ("25.00"), overriding its plan's spend_limit_usd; NULL = the plan's.
-- Alerts at 80/95/100 % of it are recorded in spend_alerts, once per account,
-- period and threshold. PostgreSQL's twin: postgresql/0018_spend_limits.sql.
ALTER TABLE accounts ADD COLUMN spend_limit_usd TEXT;
CREATE TABLE spend_alerts (
    account_id TEXT NOT NULL,
    period     TEXT NOT NULL,
    threshold  INTEGER NOT NULL,
    sent_at    REAL NOT NULL,
    PRIMARY KEY (account_id, period, threshold)
) WITHOUT ROWID;

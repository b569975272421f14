-- 0012_housekeeping (PostgreSQL): ../0012_housekeeping.sql, the same
-- indexes with the same names and columns (read it for what each serves).
-- Run in one transaction under lock_timeout (voxgate.metering.pg_store): on
-- a large, busy database build them ahead with CREATE INDEX CONCURRENTLY
-- under these names and this migration finds them there.

CREATE INDEX IF NOT EXISTS sessions_started ON sessions(started_at);

CREATE INDEX IF NOT EXISTS monthly_usage_period ON monthly_usage(period);

CREATE INDEX IF NOT EXISTS settlement_outbox_period ON settlement_outbox(period);
CREATE INDEX IF NOT EXISTS invoice_settlements_due ON invoice_settlements(next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS accounts_stripe_customer ON accounts(stripe_customer_id);

CREATE INDEX IF NOT EXISTS email_outbox_sent ON email_outbox(sent_at) WHERE sent_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS webhook_outbox_delivered ON webhook_outbox(delivered_at)
    WHERE delivered_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS stripe_events_processed ON stripe_events(processed_at)
    WHERE payload <> '';
CREATE INDEX IF NOT EXISTS web_sessions_expires ON web_sessions(expires_at);
CREATE INDEX IF NOT EXISTS signin_challenges_expires ON signin_challenges(expires_at);
CREATE INDEX IF NOT EXISTS session_packs_expiry ON session_packs(expires_at)
    WHERE expired_at IS NULL;

-- The outboxes' due items are read in id order among the unsent ones
-- (ORDER BY id LIMIT n): an index of the unsent ids, which SQLite's planner
-- uses where, with 0002's index on next_attempt_at, it read the whole table
-- (every row ever sent) in id order. 0002's index goes.
DROP INDEX IF EXISTS email_outbox_due;
CREATE INDEX IF NOT EXISTS email_outbox_unsent ON email_outbox(id) WHERE sent_at IS NULL;
DROP INDEX IF EXISTS webhook_outbox_due;
CREATE INDEX IF NOT EXISTS webhook_outbox_undelivered ON webhook_outbox(id)
    WHERE delivered_at IS NULL;

-- users.email unique ignoring case (as COLLATE NOCASE makes it on SQLite);
-- looked up as lower(email) = lower(?). Fails if two users' emails differ
-- only in case: merge or rename one, then start again.
CREATE UNIQUE INDEX IF NOT EXISTS users_email_lower ON users(lower(email));

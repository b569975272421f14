-- 0012_housekeeping: an index for every query that runs often or over a
-- growing table (the session path, the dashboard, the jobs and settlement;
-- tests/metering/test_schema.py checks each one with EXPLAIN QUERY PLAN),
-- the indexes the housekeeping jobs prune by (voxgate.jobs: delivered
-- outbox rows, processed Stripe event payloads, expired ephemeral keys,
-- dashboard sign-ins), and users.email unique ignoring case on both
-- databases. Times are Unix seconds (REAL). PostgreSQL's twin:
-- postgresql/0012_housekeeping.sql (the same names and columns).

-- Sessions started since a time over every account (operator page: active
-- accounts, sessions per day).
CREATE INDEX sessions_started ON sessions(started_at);

-- One period's usage over every account (operator page).
CREATE INDEX monthly_usage_period ON monthly_usage(period);

-- Settlement: the outbox sessions of closed periods (invoice items), the
-- invoice settlements due, the account of a Stripe customer (every Stripe
-- webhook event).
CREATE INDEX settlement_outbox_period ON settlement_outbox(period);
CREATE INDEX invoice_settlements_due ON invoice_settlements(next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX accounts_stripe_customer ON accounts(stripe_customer_id);

-- Housekeeping: what is pruned, by the time it became prunable.
CREATE INDEX email_outbox_sent ON email_outbox(sent_at) WHERE sent_at IS NOT NULL;
CREATE INDEX webhook_outbox_delivered ON webhook_outbox(delivered_at)
    WHERE delivered_at IS NOT NULL;
-- a processed event's payload is emptied ('') after retention; the row stays
-- (its id is what makes a replayed event a no-op)
CREATE INDEX stripe_events_processed ON stripe_events(processed_at) WHERE payload <> '';
CREATE INDEX web_sessions_expires ON web_sessions(expires_at);
CREATE INDEX signin_challenges_expires ON signin_challenges(expires_at);
CREATE INDEX session_packs_expiry ON session_packs(expires_at) WHERE expired_at IS NULL;

-- The outboxes' due items are read in id order among the unsent ones
-- (ORDER BY id LIMIT n): an index of the unsent ids, which SQLite's planner
-- uses where, with 0002's index on next_attempt_at, it read the whole table
-- (every row ever sent) in id order. 0002's index goes.
DROP INDEX email_outbox_due;
CREATE INDEX email_outbox_unsent ON email_outbox(id) WHERE sent_at IS NULL;
DROP INDEX webhook_outbox_due;
CREATE INDEX webhook_outbox_undelivered ON webhook_outbox(id)
    WHERE delivered_at IS NULL;

-- users.email is unique ignoring case, and looked up as lower(email) =
-- lower(?), on both databases (the column is also COLLATE NOCASE here).
CREATE UNIQUE INDEX users_email_lower ON users(lower(email));

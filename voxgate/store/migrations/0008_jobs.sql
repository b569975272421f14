-- 0008_jobs: the scheduled jobs' runs (voxgate.jobs), and whether an
-- account had a Stripe subscription in its plan history (paying vs comped in
-- the operator figures, voxgate.web.figures).
-- Times are Unix seconds (REAL).

-- One row per scheduled job. A scheduler runs a job only after winning its
-- claim: one UPDATE ... WHERE next_run_at <= now AND lease_until <= now, so
-- of any number of processes exactly one gets it (lease_owner), until
-- lease_until or until it records the outcome and the next run.
-- last_outcome: 'ok' | 'failed'; last_detail: what the run did, or the error.
CREATE TABLE job_runs (
    name             TEXT PRIMARY KEY,
    next_run_at      REAL NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_until      REAL NOT NULL DEFAULT 0,
    last_started_at  REAL,
    last_finished_at REAL,
    last_outcome     TEXT,
    last_detail      TEXT,
    runs             INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- subscribed: 1 when the account had a Stripe subscription after the change.
-- Rows written before this migration take the account's current state.
ALTER TABLE plan_changes ADD COLUMN subscribed INTEGER NOT NULL DEFAULT 0;
UPDATE plan_changes SET subscribed = COALESCE(
    (SELECT a.stripe_subscription_id IS NOT NULL FROM accounts a
     WHERE a.id = plan_changes.account_id), 0);

DROP TRIGGER plan_changes_on_insert;
CREATE TRIGGER plan_changes_on_insert AFTER INSERT ON accounts
BEGIN
    INSERT INTO plan_changes (at, account_id, old_plan, new_plan, old_status, new_status,
                              source, subscribed)
    VALUES (NEW.created_at, NEW.id, NULL, NEW.plan_id, NULL, NEW.status, 'created',
            NEW.stripe_subscription_id IS NOT NULL);
END;

DROP TRIGGER plan_changes_on_update;
CREATE TRIGGER plan_changes_on_update
AFTER UPDATE OF plan_id, status, stripe_subscription_id ON accounts
WHEN OLD.plan_id IS NOT NEW.plan_id OR OLD.status IS NOT NEW.status
    OR (OLD.stripe_subscription_id IS NULL) <> (NEW.stripe_subscription_id IS NULL)
BEGIN
    INSERT INTO plan_changes (at, account_id, old_plan, new_plan, old_status, new_status,
                              source, subscribed)
    VALUES ((julianday('now') - 2440587.5) * 86400.0, NEW.id, OLD.plan_id, NEW.plan_id,
            OLD.status, NEW.status, 'update', NEW.stripe_subscription_id IS NOT NULL);
END;

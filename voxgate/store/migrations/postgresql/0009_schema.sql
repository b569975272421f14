-- The whole schema at version 9 for PostgreSQL (voxgate.metering.pg_store):
-- the same tables, columns and indexes as the SQLite migrations
-- ../0001_core.sql … ../0009_instances.sql (read them for what each column
-- means), with PostgreSQL types: Unix-second times as DOUBLE PRECISION,
-- integers as BIGINT, identity columns for the outboxes' and logs' ids, and
-- the plan_changes triggers in PL/pgSQL. Later migrations come in pairs: the
-- SQLite file in .. and its PostgreSQL twin here, with the same version.
-- Run as one script, inside one transaction.

-- ==== from 0001_core.sql
-- 0001_core: accounts, projects, keys, sessions, monthly usage, settlement
-- outbox and meta. Times are Unix seconds (DOUBLE PRECISION); periods are "YYYY-MM" (UTC).
-- Secrets are never stored: keys are kept as SHA-256 hex digests (key_hash).

CREATE TABLE accounts (
    id                     TEXT PRIMARY KEY,
    email                  TEXT NOT NULL UNIQUE,
    plan_id                TEXT NOT NULL,
    created_at             DOUBLE PRECISION NOT NULL,
    status                 TEXT NOT NULL DEFAULT 'active',
    stripe_customer_id     TEXT,
    stripe_subscription_id TEXT,
    past_due_since         DOUBLE PRECISION,
    name                   TEXT NOT NULL DEFAULT ''
);

-- Projects are soft-deleted (deleted_at) so their sessions and revoked keys
-- keep a valid reference.
CREATE TABLE projects (
    id         TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name       TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    deleted_at DOUBLE PRECISION
);
CREATE INDEX projects_account ON projects(account_id);

-- prefix: the visible start of the plaintext key, e.g. "vg_live_AbCd".
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    project_id   TEXT NOT NULL REFERENCES projects(id),
    prefix       TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    created_at   DOUBLE PRECISION NOT NULL,
    name         TEXT NOT NULL DEFAULT '',
    revoked_at   DOUBLE PRECISION,
    last_used_at DOUBLE PRECISION
);
CREATE INDEX api_keys_project ON api_keys(project_id);

-- session: the session configuration the key carries, as JSON.
CREATE TABLE ephemeral_keys (
    id         TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id),
    key_hash   TEXT NOT NULL UNIQUE,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    api_key_id TEXT,
    session    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX ephemeral_keys_expires ON ephemeral_keys(expires_at);

-- The measurement columns are those the API filters, sorts or aggregates on;
-- measurements holds the full Measurements.to_dict() as JSON.
CREATE TABLE sessions (
    id               TEXT PRIMARY KEY,
    account_id       TEXT NOT NULL REFERENCES accounts(id),
    project_id       TEXT NOT NULL,
    api_key_id       TEXT,
    ephemeral_key_id TEXT,
    transport        TEXT NOT NULL,
    model            TEXT NOT NULL DEFAULT '',
    status           TEXT NOT NULL DEFAULT 'active',
    started_at       DOUBLE PRECISION NOT NULL,
    ended_at         DOUBLE PRECISION,
    period           TEXT NOT NULL,
    billable         BIGINT,
    reason           TEXT,
    rule             TEXT,
    settlement       TEXT NOT NULL DEFAULT 'none',
    settlement_ref   TEXT,
    connect_ms       DOUBLE PRECISION,
    duration_ms      DOUBLE PRECISION NOT NULL DEFAULT 0,
    audio_in_ms      DOUBLE PRECISION NOT NULL DEFAULT 0,
    audio_out_ms     DOUBLE PRECISION NOT NULL DEFAULT 0,
    bytes_in         BIGINT NOT NULL DEFAULT 0,
    bytes_out        BIGINT NOT NULL DEFAULT 0,
    measurements     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX sessions_account_started ON sessions(account_id, started_at DESC, id DESC);
CREATE INDEX sessions_account_period ON sessions(account_id, period);
CREATE INDEX sessions_active ON sessions(status) WHERE status = 'active';

CREATE TABLE monthly_usage (
    account_id        TEXT NOT NULL REFERENCES accounts(id),
    period            TEXT NOT NULL,
    sessions          BIGINT NOT NULL DEFAULT 0,
    billable_sessions BIGINT NOT NULL DEFAULT 0,
    minutes_used      DOUBLE PRECISION NOT NULL DEFAULT 0,
    audio_seconds     DOUBLE PRECISION NOT NULL DEFAULT 0,
    bytes             BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, period)
);

CREATE TABLE settlement_outbox (
    session_id      TEXT PRIMARY KEY REFERENCES sessions(id),
    account_id      TEXT NOT NULL,
    period          TEXT NOT NULL,
    created_at      DOUBLE PRECISION NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    last_error      TEXT
);
CREATE INDEX settlement_outbox_due ON settlement_outbox(next_attempt_at, created_at);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- ==== from 0002_billing.sql
-- 0002_billing: Stripe webhook events, audit log, invoice-item settlements,
-- quota alerts, the email and customer-webhook outboxes.
-- Times are Unix seconds (DOUBLE PRECISION); periods are "YYYY-MM" (UTC). Owned by
-- voxgate.billing.

-- Every Stripe event received, once (a replay hits the primary key).
-- payload: the raw event JSON, kept so an event whose processing failed is
-- processed again by the worker (processed_at NULL).
CREATE TABLE stripe_events (
    id           TEXT PRIMARY KEY,
    type         TEXT NOT NULL,
    received_at  DOUBLE PRECISION NOT NULL,
    payload      TEXT NOT NULL,
    processed_at DOUBLE PRECISION,
    attempts     BIGINT NOT NULL DEFAULT 0,
    last_error   TEXT
);
CREATE INDEX stripe_events_pending ON stripe_events(received_at) WHERE processed_at IS NULL;

-- What changed an account, and who did it (webhook, cli, dashboard user, system).
CREATE TABLE audit_log (
    id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at         DOUBLE PRECISION NOT NULL,
    actor      TEXT NOT NULL,
    account_id TEXT,
    action     TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_account ON audit_log(account_id, at DESC);

-- settlement_mode = "invoice_items": one invoice item per account, period and
-- seq (a later seq only for sessions completed after the first was made).
-- id is the Idempotency-Key sent to Stripe. status: pending | created.
CREATE TABLE invoice_settlements (
    id              TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL,
    period          TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    quantity        BIGINT NOT NULL,
    unit_cents      BIGINT NOT NULL,
    amount_cents    BIGINT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    invoice_item_id TEXT,
    created_at      DOUBLE PRECISION NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    last_error      TEXT,
    UNIQUE (account_id, period, seq)
);

-- The sessions an invoice settlement covers (claimed when it is created).
CREATE TABLE invoice_settlement_sessions (
    settlement_id TEXT NOT NULL REFERENCES invoice_settlements(id),
    session_id    TEXT PRIMARY KEY
);
CREATE INDEX invoice_settlement_sessions_settlement ON invoice_settlement_sessions(settlement_id);

-- One row per quota alert sent: threshold is a percentage (80, 95, 100).
CREATE TABLE quota_alerts (
    account_id TEXT NOT NULL,
    period     TEXT NOT NULL,
    threshold  BIGINT NOT NULL,
    sent_at    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (account_id, period, threshold)
);

-- Outgoing mail, sent by the email worker. dedupe_key makes queueing idempotent.
CREATE TABLE email_outbox (
    id              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    account_id      TEXT,
    kind            TEXT NOT NULL,
    to_addr         TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body            TEXT NOT NULL,
    dedupe_key      TEXT UNIQUE,
    created_at      DOUBLE PRECISION NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    last_error      TEXT,
    sent_at         DOUBLE PRECISION
);
CREATE INDEX email_outbox_due ON email_outbox(next_attempt_at) WHERE sent_at IS NULL;

-- The customer's own webhook endpoint for alerts; secret signs each delivery.
CREATE TABLE account_webhooks (
    account_id TEXT PRIMARY KEY REFERENCES accounts(id),
    url        TEXT NOT NULL,
    secret     TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);

-- Deliveries to account webhooks (same retry rules as email_outbox).
CREATE TABLE webhook_outbox (
    id              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    account_id      TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    dedupe_key      TEXT UNIQUE,
    created_at      DOUBLE PRECISION NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    last_error      TEXT,
    delivered_at    DOUBLE PRECISION
);
CREATE INDEX webhook_outbox_due ON webhook_outbox(next_attempt_at) WHERE delivered_at IS NULL;

-- ==== from 0003_web.sql
-- 0003_web: the dashboard's tables: users (sign-in), web_sessions
-- (server-side cookie sessions with their CSRF token), plan_changes (the
-- plan/status history of every account, kept by triggers so that changes
-- made by any room through store.update_account are recorded) and
-- audit_log (shared with billing; created here if billing has not yet).
-- Times are Unix seconds (DOUBLE PRECISION).

-- role: 'member' (sees their own account) or 'operator' (also /admin).
CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL REFERENCES accounts(id),
    email          TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL DEFAULT 'member',
    created_at     DOUBLE PRECISION NOT NULL,
    last_signin_at DOUBLE PRECISION
);
CREATE INDEX users_account ON users(account_id);

-- token_hash: HMAC-SHA256 (keyed with web.session_secret) of the cookie
-- value; the cookie itself is never stored.
CREATE TABLE web_sessions (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id),
    csrf_token TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX web_sessions_user ON web_sessions(user_id);

-- One row per change of an account's plan or status, and one at creation
-- (old_plan/old_status NULL). source: 'created', 'update', 'migration'.
CREATE TABLE plan_changes (
    id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at         DOUBLE PRECISION NOT NULL,
    account_id TEXT NOT NULL,
    old_plan   TEXT,
    new_plan   TEXT NOT NULL,
    old_status TEXT,
    new_status TEXT NOT NULL,
    source     TEXT NOT NULL
);
CREATE INDEX plan_changes_account_at ON plan_changes(account_id, at);
CREATE INDEX plan_changes_at ON plan_changes(at);




-- Operator and billing actions. Same columns as billing's table.
CREATE TABLE IF NOT EXISTS audit_log (
    id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at         DOUBLE PRECISION NOT NULL,
    actor      TEXT NOT NULL,
    account_id TEXT,
    action     TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log(at);

-- ==== from 0004_project_origins.sql
-- 0004_project_origins: the web origins a project's ephemeral keys may be
-- used from (a JSON array of "scheme://host[:port]" strings; '[]' = any).
ALTER TABLE projects ADD COLUMN allowed_origins TEXT NOT NULL DEFAULT '[]';

-- ==== from 0005_key_scopes.sql
-- 0005_key_scopes: account admin keys (account-wide reads and billing
-- actions; project keys see only their project), and per-project pins: the
-- models its sessions may use and the client networks its API keys may be
-- used from (JSON arrays; '[]' = any).
CREATE TABLE admin_keys (
    id           TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts(id),
    prefix       TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    created_at   DOUBLE PRECISION NOT NULL,
    name         TEXT NOT NULL DEFAULT '',
    revoked_at   DOUBLE PRECISION,
    last_used_at DOUBLE PRECISION
);
CREATE INDEX admin_keys_account ON admin_keys(account_id);

ALTER TABLE projects ADD COLUMN allowed_models TEXT NOT NULL DEFAULT '[]';
ALTER TABLE projects ADD COLUMN allowed_ips TEXT NOT NULL DEFAULT '[]';

-- ==== from 0006_web_security.sql
-- 0006_web_security: two-factor sign-in (TOTP, RFC 6238) for dashboard users.
-- Times are Unix seconds (DOUBLE PRECISION).

-- totp_secret: the base32 secret of an enrolled authenticator (NULL = no
-- two-factor sign-in); totp_pending: a secret shown on the enrolment page,
-- not yet confirmed with a code; totp_last_counter: the RFC 6238 time step
-- of the last accepted code (a code is accepted once).
ALTER TABLE users ADD COLUMN totp_secret TEXT;
ALTER TABLE users ADD COLUMN totp_pending TEXT;
ALTER TABLE users ADD COLUMN totp_last_counter BIGINT NOT NULL DEFAULT 0;

-- When this cookie session passed the second factor (NULL = password only).
ALTER TABLE web_sessions ADD COLUMN mfa_at DOUBLE PRECISION;

-- One-time recovery codes: HMAC-SHA256 (keyed with web.session_secret) of
-- the code, never the code itself; used_at set when spent.
CREATE TABLE recovery_codes (
    user_id   TEXT NOT NULL REFERENCES users(id),
    code_hash TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    used_at   DOUBLE PRECISION,
    PRIMARY KEY (user_id, code_hash)
);

-- A sign-in that passed the password and waits for the code: the vg_2fa
-- cookie holds the token, the row its HMAC, the user and where to go next.
CREATE TABLE signin_challenges (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id),
    next       TEXT NOT NULL,
    attempts   BIGINT NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);

-- ==== from 0007_packs_enterprise.sql
-- 0007_packs_enterprise: add-on packs an account holds, the billable
-- sessions each pack paid for, and enterprise plans (one account's own
-- plan, its terms as a JSON object, see voxgate.models.enterprise).
-- Times are Unix seconds (DOUBLE PRECISION); periods are "YYYY-MM" (UTC).

-- catalog_pack: the catalog's pack id ("sessions_1000") or "operator".
-- ref: what credited it (Checkout Session id cs_…, or an operator grant
-- id), unique so that a replayed webhook credits the pack once.
-- expired_at: set by the add-on expiry job once expires_at has passed.
CREATE TABLE session_packs (
    id            TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts(id),
    catalog_pack  TEXT NOT NULL,
    sessions      BIGINT NOT NULL,
    sessions_used BIGINT NOT NULL DEFAULT 0,
    price_cents   BIGINT NOT NULL DEFAULT 0,
    source        TEXT NOT NULL,
    ref           TEXT NOT NULL UNIQUE,
    purchased_at  DOUBLE PRECISION NOT NULL,
    expires_at    DOUBLE PRECISION NOT NULL,
    expired_at    DOUBLE PRECISION
);
CREATE INDEX session_packs_account ON session_packs(account_id, expires_at);

-- One row per billable session a pack paid for (written with its verdict).
CREATE TABLE pack_sessions (
    session_id      TEXT PRIMARY KEY,
    account_pack_id TEXT NOT NULL REFERENCES session_packs(id),
    account_id      TEXT NOT NULL,
    period          TEXT NOT NULL,
    used_at         DOUBLE PRECISION NOT NULL
);
CREATE INDEX pack_sessions_period ON pack_sessions(account_id, period);

CREATE TABLE enterprise_plans (
    account_id TEXT PRIMARY KEY REFERENCES accounts(id),
    terms      TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);

-- ==== from 0008_jobs.sql
-- 0008_jobs: the scheduled jobs' runs (voxgate.jobs), and whether an
-- account had a Stripe subscription in its plan history (paying vs comped in
-- the operator figures, voxgate.web.figures).
-- Times are Unix seconds (DOUBLE PRECISION).

-- One row per scheduled job. A scheduler runs a job only after winning its
-- claim: one UPDATE ... WHERE next_run_at <= now AND lease_until <= now, so
-- of any number of processes exactly one gets it (lease_owner), until
-- lease_until or until it records the outcome and the next run.
-- last_outcome: 'ok' | 'failed'; last_detail: what the run did, or the error.
CREATE TABLE job_runs (
    name             TEXT PRIMARY KEY,
    next_run_at      DOUBLE PRECISION NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_until      DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_started_at  DOUBLE PRECISION,
    last_finished_at DOUBLE PRECISION,
    last_outcome     TEXT,
    last_detail      TEXT,
    runs             BIGINT NOT NULL DEFAULT 0
);

-- subscribed: 1 when the account had a Stripe subscription after the change.
ALTER TABLE plan_changes ADD COLUMN subscribed BIGINT NOT NULL DEFAULT 0;



-- ==== from 0009_instances.sql
-- 0009_instances: the voxgate processes sharing this database, and which of
-- them holds each active session. Times are Unix seconds (DOUBLE PRECISION).

-- One row per running process (Settings.instance_id, default
-- host:pid:random). heartbeat_at is refreshed every
-- heartbeat_interval_s; an instance whose heartbeat is older than
-- heartbeat_ttl_s is dead: a live instance's sweeper (the instance_sweep
-- job) completes its active sessions as interrupted, frees their admission
-- leases and deletes the row. A clean stop deletes its own row.
CREATE TABLE instances (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          BIGINT NOT NULL,
    started_at   DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL
);

-- instance_id: the instance relaying the session (NULL for sessions opened
-- before this migration); lease_id: its admission lease (Lease.id), so that
-- another process can free it at once when the instance dies.
ALTER TABLE sessions ADD COLUMN instance_id TEXT;
ALTER TABLE sessions ADD COLUMN lease_id TEXT;
CREATE INDEX sessions_instance_active ON sessions(instance_id) WHERE status = 'active';

-- ==== plan_changes kept by triggers (as 0003_web.sql and 0008_jobs.sql on SQLite)
CREATE FUNCTION plan_changes_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO plan_changes (at, account_id, old_plan, new_plan, old_status, new_status,
                              source, subscribed)
    VALUES (NEW.created_at, NEW.id, NULL, NEW.plan_id, NULL, NEW.status, 'created',
            (NEW.stripe_subscription_id IS NOT NULL)::int);
    RETURN NULL;
END;
$$;
CREATE TRIGGER plan_changes_on_insert AFTER INSERT ON accounts
FOR EACH ROW EXECUTE FUNCTION plan_changes_on_insert();

CREATE FUNCTION plan_changes_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO plan_changes (at, account_id, old_plan, new_plan, old_status, new_status,
                              source, subscribed)
    VALUES (EXTRACT(EPOCH FROM clock_timestamp()), NEW.id, OLD.plan_id, NEW.plan_id,
            OLD.status, NEW.status, 'update', (NEW.stripe_subscription_id IS NOT NULL)::int);
    RETURN NULL;
END;
$$;
CREATE TRIGGER plan_changes_on_update
AFTER UPDATE OF plan_id, status, stripe_subscription_id ON accounts
FOR EACH ROW
WHEN (OLD.plan_id IS DISTINCT FROM NEW.plan_id OR OLD.status IS DISTINCT FROM NEW.status
      OR (OLD.stripe_subscription_id IS NULL) <> (NEW.stripe_subscription_id IS NULL))
EXECUTE FUNCTION plan_changes_on_update();

-- utc_day(ts): the UTC day ("YYYY-MM-DD") of Unix time ts (as on SQLite, where
-- the store defines it in Python)
CREATE FUNCTION utc_day(ts DOUBLE PRECISION) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD')
$$;

-- 0002_billing: Stripe webhook events, audit log, invoice-item settlements,
-- quota alerts, the email and customer-webhook outboxes.
-- Times are Unix seconds (REAL); periods are "YYYY-MM" (UTC). Owned by
-- voxgate.billing.

-- Every Stripe event received, once (a replay hits the primary key).
-- payload: the raw event JSON, kept so an event whose processing failed is
-- processed again by the worker (processed_at NULL).
CREATE TABLE stripe_events (
    id           TEXT PRIMARY KEY,
    type         TEXT NOT NULL,
    received_at  REAL NOT NULL,
    payload      TEXT NOT NULL,
    processed_at REAL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT
);
CREATE INDEX stripe_events_pending ON stripe_events(received_at) WHERE processed_at IS NULL;

-- What changed an account, and who did it (webhook, cli, dashboard user, system).
CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         REAL NOT NULL,
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
    seq             INTEGER NOT NULL,
    quantity        INTEGER NOT NULL,
    unit_cents      INTEGER NOT NULL,
    amount_cents    INTEGER NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    invoice_item_id TEXT,
    created_at      REAL NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
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
    threshold  INTEGER NOT NULL,
    sent_at    REAL NOT NULL,
    PRIMARY KEY (account_id, period, threshold)
) WITHOUT ROWID;

-- Outgoing mail, sent by the email worker. dedupe_key makes queueing idempotent.
CREATE TABLE email_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id      TEXT,
    kind            TEXT NOT NULL,
    to_addr         TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body            TEXT NOT NULL,
    dedupe_key      TEXT UNIQUE,
    created_at      REAL NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT,
    sent_at         REAL
);
CREATE INDEX email_outbox_due ON email_outbox(next_attempt_at) WHERE sent_at IS NULL;

-- The customer's own webhook endpoint for alerts; secret signs each delivery.
CREATE TABLE account_webhooks (
    account_id TEXT PRIMARY KEY REFERENCES accounts(id),
    url        TEXT NOT NULL,
    secret     TEXT NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;

-- Deliveries to account webhooks (same retry rules as email_outbox).
CREATE TABLE webhook_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id      TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    dedupe_key      TEXT UNIQUE,
    created_at      REAL NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT,
    delivered_at    REAL
);
CREATE INDEX webhook_outbox_due ON webhook_outbox(next_attempt_at) WHERE delivered_at IS NULL;

-- 0001_core: accounts, projects, keys, sessions, monthly usage, settlement
-- outbox and meta. Times are Unix seconds (REAL); periods are "YYYY-MM" (UTC).
-- Secrets are never stored: keys are kept as SHA-256 hex digests (key_hash).
-- Applied statement by statement inside one transaction by SQLiteStore.

CREATE TABLE accounts (
    id                     TEXT PRIMARY KEY,
    email                  TEXT NOT NULL UNIQUE,
    plan_id                TEXT NOT NULL,
    created_at             REAL NOT NULL,
    status                 TEXT NOT NULL DEFAULT 'active',
    stripe_customer_id     TEXT,
    stripe_subscription_id TEXT,
    past_due_since         REAL,
    name                   TEXT NOT NULL DEFAULT ''
);

-- Projects are soft-deleted (deleted_at) so their sessions and revoked keys
-- keep a valid reference.
CREATE TABLE projects (
    id         TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name       TEXT NOT NULL,
    created_at REAL NOT NULL,
    deleted_at REAL
);
CREATE INDEX projects_account ON projects(account_id);

-- prefix: the visible start of the plaintext key, e.g. "vg_live_AbCd".
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    project_id   TEXT NOT NULL REFERENCES projects(id),
    prefix       TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    created_at   REAL NOT NULL,
    name         TEXT NOT NULL DEFAULT '',
    revoked_at   REAL,
    last_used_at REAL
);
CREATE INDEX api_keys_project ON api_keys(project_id);

-- session: the session configuration the key carries, as JSON.
CREATE TABLE ephemeral_keys (
    id         TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id),
    key_hash   TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
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
    started_at       REAL NOT NULL,
    ended_at         REAL,
    period           TEXT NOT NULL,
    billable         INTEGER,
    reason           TEXT,
    rule             TEXT,
    settlement       TEXT NOT NULL DEFAULT 'none',
    settlement_ref   TEXT,
    connect_ms       REAL,
    duration_ms      REAL NOT NULL DEFAULT 0,
    audio_in_ms      REAL NOT NULL DEFAULT 0,
    audio_out_ms     REAL NOT NULL DEFAULT 0,
    bytes_in         INTEGER NOT NULL DEFAULT 0,
    bytes_out        INTEGER NOT NULL DEFAULT 0,
    measurements     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX sessions_account_started ON sessions(account_id, started_at DESC, id DESC);
CREATE INDEX sessions_account_period ON sessions(account_id, period);
CREATE INDEX sessions_active ON sessions(status) WHERE status = 'active';

CREATE TABLE monthly_usage (
    account_id        TEXT NOT NULL REFERENCES accounts(id),
    period            TEXT NOT NULL,
    sessions          INTEGER NOT NULL DEFAULT 0,
    billable_sessions INTEGER NOT NULL DEFAULT 0,
    minutes_used      REAL NOT NULL DEFAULT 0,
    audio_seconds     REAL NOT NULL DEFAULT 0,
    bytes             INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, period)
) WITHOUT ROWID;

CREATE TABLE settlement_outbox (
    session_id      TEXT PRIMARY KEY REFERENCES sessions(id),
    account_id      TEXT NOT NULL,
    period          TEXT NOT NULL,
    created_at      REAL NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT
);
CREATE INDEX settlement_outbox_due ON settlement_outbox(next_attempt_at, created_at);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

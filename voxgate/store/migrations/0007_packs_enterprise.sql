-- 0007_packs_enterprise: add-on packs an account holds, the billable
-- sessions each pack paid for, and enterprise plans (one account's own
-- plan, its terms as a JSON object, see voxgate.models.enterprise).
-- Times are Unix seconds (REAL); periods are "YYYY-MM" (UTC).

-- catalog_pack: the catalog's pack id ("sessions_1000") or "operator".
-- ref: what credited it (Checkout Session id cs_…, or an operator grant
-- id), unique so that a replayed webhook credits the pack once.
-- expired_at: set by the add-on expiry job once expires_at has passed.
CREATE TABLE session_packs (
    id            TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts(id),
    catalog_pack  TEXT NOT NULL,
    sessions      INTEGER NOT NULL,
    sessions_used INTEGER NOT NULL DEFAULT 0,
    price_cents   INTEGER NOT NULL DEFAULT 0,
    source        TEXT NOT NULL,
    ref           TEXT NOT NULL UNIQUE,
    purchased_at  REAL NOT NULL,
    expires_at    REAL NOT NULL,
    expired_at    REAL
);
CREATE INDEX session_packs_account ON session_packs(account_id, expires_at);

-- One row per billable session a pack paid for (written with its verdict).
CREATE TABLE pack_sessions (
    session_id      TEXT PRIMARY KEY,
    account_pack_id TEXT NOT NULL REFERENCES session_packs(id),
    account_id      TEXT NOT NULL,
    period          TEXT NOT NULL,
    used_at         REAL NOT NULL
);
CREATE INDEX pack_sessions_period ON pack_sessions(account_id, period);

CREATE TABLE enterprise_plans (
    account_id TEXT PRIMARY KEY REFERENCES accounts(id),
    terms      TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

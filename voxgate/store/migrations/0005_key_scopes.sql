-- 0005_key_scopes: account admin keys (account-wide reads and billing
-- actions; project keys see only their project), and per-project pins: the
-- models its sessions may use and the client networks its API keys may be
-- used from (JSON arrays; '[]' = any).
CREATE TABLE admin_keys (
    id           TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts(id),
    prefix       TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    created_at   REAL NOT NULL,
    name         TEXT NOT NULL DEFAULT '',
    revoked_at   REAL,
    last_used_at REAL
);
CREATE INDEX admin_keys_account ON admin_keys(account_id);

ALTER TABLE projects ADD COLUMN allowed_models TEXT NOT NULL DEFAULT '[]';
ALTER TABLE projects ADD COLUMN allowed_ips TEXT NOT NULL DEFAULT '[]';

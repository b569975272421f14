-- 0003_web: the dashboard's tables: users (sign-in), web_sessions
-- (server-side cookie sessions with their CSRF token), plan_changes (the
-- plan/status history of every account, kept by triggers so that changes
-- made by any room through store.update_account are recorded) and
-- audit_log (shared with billing; created here if billing has not yet).
-- Times are Unix seconds (REAL).

-- role: 'member' (sees their own account) or 'operator' (also /admin).
CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL REFERENCES accounts(id),
    email          TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL DEFAULT 'member',
    created_at     REAL NOT NULL,
    last_signin_at REAL
);
CREATE INDEX users_account ON users(account_id);

-- token_hash: HMAC-SHA256 (keyed with web.session_secret) of the cookie
-- value; the cookie itself is never stored.
CREATE TABLE web_sessions (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id),
    csrf_token TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX web_sessions_user ON web_sessions(user_id);

-- One row per change of an account's plan or status, and one at creation
-- (old_plan/old_status NULL). source: 'created', 'update', 'migration'.
CREATE TABLE plan_changes (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         REAL NOT NULL,
    account_id TEXT NOT NULL,
    old_plan   TEXT,
    new_plan   TEXT NOT NULL,
    old_status TEXT,
    new_status TEXT NOT NULL,
    source     TEXT NOT NULL
);
CREATE INDEX plan_changes_account_at ON plan_changes(account_id, at);
CREATE INDEX plan_changes_at ON plan_changes(at);

-- Accounts that exist before this migration: assume their plan and status
-- have not changed since they were created.
INSERT INTO plan_changes (at, account_id, old_plan, new_plan, old_status, new_status, source)
SELECT created_at, id, NULL, plan_id, NULL, status, 'migration' FROM accounts;

CREATE TRIGGER plan_changes_on_insert AFTER INSERT ON accounts
BEGIN
    INSERT INTO plan_changes (at, account_id, old_plan, new_plan, old_status, new_status, source)
    VALUES (NEW.created_at, NEW.id, NULL, NEW.plan_id, NULL, NEW.status, 'created');
END;

CREATE TRIGGER plan_changes_on_update AFTER UPDATE OF plan_id, status ON accounts
WHEN OLD.plan_id IS NOT NEW.plan_id OR OLD.status IS NOT NEW.status
BEGIN
    INSERT INTO plan_changes (at, account_id, old_plan, new_plan, old_status, new_status, source)
    VALUES ((julianday('now') - 2440587.5) * 86400.0, NEW.id, OLD.plan_id, NEW.plan_id,
            OLD.status, NEW.status, 'update');
END;

-- Operator and billing actions. Same columns as billing's table.
CREATE TABLE IF NOT EXISTS audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         REAL NOT NULL,
    actor      TEXT NOT NULL,
    account_id TEXT,
    action     TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log(at);

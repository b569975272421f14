-- 0006_web_security: two-factor sign-in (TOTP, RFC 6238) for dashboard users.
-- Times are Unix seconds (REAL).

-- totp_secret: the base32 secret of an enrolled authenticator (NULL = no
-- two-factor sign-in); totp_pending: a secret shown on the enrolment page,
-- not yet confirmed with a code; totp_last_counter: the RFC 6238 time step
-- of the last accepted code (a code is accepted once).
ALTER TABLE users ADD COLUMN totp_secret TEXT;
ALTER TABLE users ADD COLUMN totp_pending TEXT;
ALTER TABLE users ADD COLUMN totp_last_counter INTEGER NOT NULL DEFAULT 0;

-- When this cookie session passed the second factor (NULL = password only).
ALTER TABLE web_sessions ADD COLUMN mfa_at REAL;

-- One-time recovery codes: HMAC-SHA256 (keyed with web.session_secret) of
-- the code, never the code itself; used_at set when spent.
CREATE TABLE recovery_codes (
    user_id   TEXT NOT NULL REFERENCES users(id),
    code_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    used_at   REAL,
    PRIMARY KEY (user_id, code_hash)
) WITHOUT ROWID;

-- A sign-in that passed the password and waits for the code: the vg_2fa
-- cookie holds the token, the row its HMAC, the user and where to go next.
CREATE TABLE signin_challenges (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id),
    next       TEXT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

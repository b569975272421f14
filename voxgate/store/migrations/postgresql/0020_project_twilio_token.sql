-- 0020_project_twilio_token (PostgreSQL): ../0020_project_twilio_token.sql,
-- the same columns: a project's own Twilio auth token, encrypted (Fernet
-- token), and its last 4 characters. Nullable, no default: no table rewrite.
ALTER TABLE projects ADD COLUMN IF NOT EXISTS twilio_token_sealed TEXT;
ALTER TABLE projects ADD COLUMN IF NOT EXISTS twilio_token_last4 TEXT;

-- 0017_provider_keys (PostgreSQL): ../0017_provider_keys.sql, the same
-- columns: a project's own OpenAI API key, encrypted (Fernet token), and its
-- last 4 characters. Nullable, no default: no table rewrite.
ALTER TABLE projects ADD COLUMN IF NOT EXISTS provider_key_sealed TEXT;
ALTER TABLE projects ADD COLUMN IF NOT EXISTS provider_key_last4 TEXT;
-- Who paid the provider for a session: 'customer' (its project's own key) or
-- NULL (the operator).
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS paid_by TEXT;

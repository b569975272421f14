-- 0017_provider_keys: a project's own OpenAI API key (BYOK, issue 21).
-- provider_key_sealed is the key encrypted with the operator's
-- upstream.provider_key_secret (a Fernet token: AES-128-CBC + HMAC-SHA256,
-- voxgate.proxy.provider_keys); the plaintext is never stored.
-- provider_key_last4 is the only part shown again. NULL = the operator's key.
-- PostgreSQL's twin: postgresql/0017_provider_keys.sql.
ALTER TABLE projects ADD COLUMN provider_key_sealed TEXT;
ALTER TABLE projects ADD COLUMN provider_key_last4 TEXT;
-- Who paid the provider for a session: 'customer' when it ran on its
-- project's own key (its provider cost is then left out of the operator's
-- cost, margin and spend limit), NULL = the operator.
ALTER TABLE sessions ADD COLUMN paid_by TEXT;

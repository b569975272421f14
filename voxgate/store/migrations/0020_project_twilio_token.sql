-- 0020_project_twilio_token: a project's own Twilio auth token (issue 22).
-- twilio_token_sealed is the token encrypted with the operator's
-- upstream.provider_key_secret (a Fernet token, as BYOK keys are:
-- voxgate.proxy.provider_keys); the plaintext is never stored.
-- twilio_token_last4 is the only part shown again. NULL = the project has
-- none: its phone calls' X-Twilio-Signature is checked with the server-wide
-- [telephony] twilio_auth_token, if any.
-- PostgreSQL's twin: postgresql/0020_project_twilio_token.sql.
ALTER TABLE projects ADD COLUMN twilio_token_sealed TEXT;
ALTER TABLE projects ADD COLUMN twilio_token_last4 TEXT;

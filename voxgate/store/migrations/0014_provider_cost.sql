-- 0014_provider_cost: what the voice provider charged the operator for each
-- session (issue 21), computed when the session completes from its usage
-- and its model's prices (voxgate.models.pricing.session_cost):
-- provider_cost_micros in millionths of a US dollar (exact, summable; the
-- cost is rounded to 1e-6 USD), NULL when unpriced, with
-- provider_cost_reason saying why (an unknown model, a kind of token the
-- model has no price for). Both NULL on rows completed before this version.
-- Written by Store.complete_session in the completing transaction, only
-- while the row holds the very measurements the cost was computed from.
-- PostgreSQL's twin: postgresql/0014_provider_cost.sql.
ALTER TABLE sessions ADD COLUMN provider_cost_micros INTEGER;
ALTER TABLE sessions ADD COLUMN provider_cost_reason TEXT;

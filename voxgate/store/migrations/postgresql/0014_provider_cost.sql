-- 0014_provider_cost (PostgreSQL): ../0014_provider_cost.sql, the same
-- columns (nullable, no default: no table rewrite), and
-- voxgate_complete_session_cost(...): voxgate_complete_session (0011)
-- followed, in the same round trip and transaction, by the cost written on
-- the session row while it holds the measurements the cost was computed
-- from (a retried or provisional completion that did not replace them
-- leaves the stored cost as it was). Same result as 0011's function.

ALTER TABLE sessions ADD COLUMN IF NOT EXISTS provider_cost_micros BIGINT;
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS provider_cost_reason TEXT;

CREATE OR REPLACE FUNCTION voxgate_complete_session_cost(
    p_id TEXT, p_account_id TEXT, p_project_id TEXT, p_api_key_id TEXT,
    p_ephemeral_key_id TEXT, p_transport TEXT, p_model TEXT,
    p_started_at DOUBLE PRECISION, p_ended_at DOUBLE PRECISION, p_period TEXT,
    p_billable BOOLEAN, p_reason TEXT, p_rule TEXT, p_settle BOOLEAN,
    p_settle_from BIGINT, p_pack_from BIGINT, p_provisional BOOLEAN,
    p_connect_ms DOUBLE PRECISION, p_duration_ms DOUBLE PRECISION,
    p_audio_in_ms DOUBLE PRECISION, p_audio_out_ms DOUBLE PRECISION,
    p_bytes_in BIGINT, p_bytes_out BIGINT, p_measurements TEXT,
    p_cost_micros BIGINT, p_cost_reason TEXT)
RETURNS monthly_usage LANGUAGE plpgsql AS $$
DECLARE
    v_usage monthly_usage;
BEGIN
    SELECT * INTO v_usage FROM voxgate_complete_session(
        p_id, p_account_id, p_project_id, p_api_key_id, p_ephemeral_key_id, p_transport,
        p_model, p_started_at, p_ended_at, p_period, p_billable, p_reason, p_rule, p_settle,
        p_settle_from, p_pack_from, p_provisional, p_connect_ms, p_duration_ms,
        p_audio_in_ms, p_audio_out_ms, p_bytes_in, p_bytes_out, p_measurements);
    IF p_cost_micros IS NOT NULL OR p_cost_reason IS NOT NULL THEN
        UPDATE sessions SET provider_cost_micros = p_cost_micros,
                            provider_cost_reason = p_cost_reason
         WHERE id = p_id AND measurements = p_measurements;
    END IF;
    RETURN v_usage;
END
$$;

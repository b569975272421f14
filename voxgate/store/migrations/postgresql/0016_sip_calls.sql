-- 0016_sip_calls (PostgreSQL): ../0016_sip_calls.sql, the same table and
-- indexes (read it for what each serves), times as DOUBLE PRECISION. The
-- partial index on sessions.call_sid: build it ahead with CREATE INDEX
-- CONCURRENTLY under this name on a large, busy database.
CREATE TABLE IF NOT EXISTS sip_webhook_deliveries (
    webhook_id   TEXT PRIMARY KEY,
    call_id      TEXT NOT NULL,
    received_at  DOUBLE PRECISION NOT NULL,
    outcome      TEXT,
    session_id   TEXT
);
CREATE INDEX IF NOT EXISTS sip_webhook_deliveries_received
    ON sip_webhook_deliveries(received_at);
CREATE INDEX IF NOT EXISTS sessions_call_sid ON sessions(call_sid) WHERE call_sid IS NOT NULL;

-- 0016_sip_calls: OpenAI SIP calls (issue 22, voxgate.proxy.telephony.sip).
-- sip_webhook_deliveries: the `webhook-id` of every realtime.call.incoming
-- delivery taken, so that a redelivery (the same id, from any voxgate
-- process) accepts or rejects no call a second time; `outcome` is what was
-- done (accepted, rejected:<SIP code>, accept_failed:<HTTP status>; NULL
-- while being handled). Rows are kept 3 days, past OpenAI's retries of a
-- delivery (sip.DELIVERY_KEEP_S), then deleted as new deliveries come in
-- (received_at, Unix seconds). A SIP call's session keeps OpenAI's call_id in sessions.call_sid
-- (0013's column, transport "sip"): sessions_call_sid finds the call's
-- session for hangup and refer. PostgreSQL's twin: postgresql/0016_sip_calls.sql.
CREATE TABLE sip_webhook_deliveries (
    webhook_id   TEXT PRIMARY KEY,
    call_id      TEXT NOT NULL,
    received_at  REAL NOT NULL,
    outcome      TEXT,
    session_id   TEXT
);
CREATE INDEX sip_webhook_deliveries_received ON sip_webhook_deliveries(received_at);
CREATE INDEX sessions_call_sid ON sessions(call_sid) WHERE call_sid IS NOT NULL;

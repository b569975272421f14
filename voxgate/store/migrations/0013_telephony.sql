-- 0013_telephony: phone calls (issue 22). A session of transport "twilio"
-- (a Twilio Media Stream bridged by voxgate.proxy.telephony) keeps the
-- call's Twilio CallSid and the stream's StreamSid, written once the call's
-- `start` message is admitted (Store.set_session_call), shown on the
-- receipt and in GET /v1/sessions. NULL for every other transport.
-- PostgreSQL's twin: postgresql/0013_telephony.sql.
ALTER TABLE sessions ADD COLUMN call_sid TEXT;
ALTER TABLE sessions ADD COLUMN stream_sid TEXT;

-- 0013_telephony (PostgreSQL): ../0013_telephony.sql, the same columns.
-- A phone call's Twilio CallSid and Media Stream StreamSid on its session
-- (transport "twilio"); NULL for every other transport. Nullable columns
-- without a default: no table rewrite.
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS call_sid TEXT;
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS stream_sid TEXT;

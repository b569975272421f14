-- 0010_fencing (PostgreSQL): ../0010_fencing.sql with PostgreSQL types.
-- Fencing of paused or partitioned instances, and records that
-- match reality when an instance is lost (docs/database.md, "Instances and
-- recovery"). Times are Unix seconds (DOUBLE PRECISION).

-- epoch: a new value at each registration of an instance id (Unix ms at
-- registration, or the previous epoch + 1 if larger). A heartbeat updates
-- only the row of its own epoch: once a sweeper has deleted the row (the
-- instance was declared dead), a heartbeat of that epoch changes nothing
-- and tells the instance to fence its sessions and register anew.
ALTER TABLE instances ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;

-- provisional: 1 when the session was completed by a sweeper from its last
-- checkpoint (its instance was lost); the owning instance's own final record
-- may still replace it (Store.complete_session, provisional=False).
ALTER TABLE sessions ADD COLUMN provisional BIGINT NOT NULL DEFAULT 0;
-- checkpoint_at: when the live session's measurements (the measurements
-- JSON and the audio/duration/bytes columns) were last written by its
-- instance's heartbeat; NULL = never checkpointed.
ALTER TABLE sessions ADD COLUMN checkpoint_at DOUBLE PRECISION;

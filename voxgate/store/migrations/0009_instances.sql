-- 0009_instances: the voxgate processes sharing this database, and which of
-- them holds each active session. Times are Unix seconds (REAL).

-- One row per running process (Settings.instance_id, default
-- host:pid:random). heartbeat_at is refreshed every
-- heartbeat_interval_s; an instance whose heartbeat is older than
-- heartbeat_ttl_s is dead: a live instance's sweeper (the instance_sweep
-- job) completes its active sessions as interrupted, frees their admission
-- leases and deletes the row. A clean stop deletes its own row.
CREATE TABLE instances (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);

-- instance_id: the instance relaying the session (NULL for sessions opened
-- before this migration); lease_id: its admission lease (Lease.id), so that
-- another process can free it at once when the instance dies.
ALTER TABLE sessions ADD COLUMN instance_id TEXT;
ALTER TABLE sessions ADD COLUMN lease_id TEXT;
CREATE INDEX sessions_instance_active ON sessions(instance_id) WHERE status = 'active';

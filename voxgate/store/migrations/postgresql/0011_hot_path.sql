-- 0011_hot_path (PostgreSQL): session completion in ONE round trip, with row
-- locks only (no database-wide advisory lock).
--
-- voxgate_complete_session(...) is PostgresStore.complete_session: exactly
-- the rules of sqlite_store._complete_sync (see its docstring), statement for
-- statement, taking locks in one order: the session row, the account's
-- monthly_usage row, its session_packs rows, the settlement outbox.
--
-- 1. INSERT ... ON CONFLICT DO UPDATE ... WHERE status <> 'completed' locks
--    the session row (completed or not) and completes it if it was not.
--    Already completed: nothing changes (a retried completion counts once),
--    unless the row is provisional (a sweeper completed it from its last
--    checkpoint) and this is the owning instance's final record
--    (p_provisional false): a billable verdict then upgrades a not-billable
--    row (one billable session more, settled as a fresh one would be);
--    otherwise the stored verdict and settlement stay and only the
--    measurements (and their difference in usage) are replaced. Either way
--    provisional becomes 0.
-- 2. The usage upsert RETURNING billable_sessions, under the usage row's
--    lock (held to the commit), numbers a billable session: before =
--    returned - 1 decides pack or overage.
-- 3. A billable session with before >= p_pack_from takes a session from the
--    live pack with sessions left that expires first (then older purchase,
--    then id: voxgate.models.packs.pack_to_use) with a guarded UPDATE
--    (sessions_used < sessions), trying the next pack if it lost a race;
--    otherwise with before >= p_settle_from it is settled (outbox).
-- Returns the period's usage row after the update (all NULL when a retried
-- completion finds no usage row).
-- Times are Unix seconds; durations in ms; period "YYYY-MM".

CREATE OR REPLACE FUNCTION voxgate_complete_session(
    p_id TEXT, p_account_id TEXT, p_project_id TEXT, p_api_key_id TEXT,
    p_ephemeral_key_id TEXT, p_transport TEXT, p_model TEXT,
    p_started_at DOUBLE PRECISION, p_ended_at DOUBLE PRECISION, p_period TEXT,
    p_billable BOOLEAN, p_reason TEXT, p_rule TEXT, p_settle BOOLEAN,
    p_settle_from BIGINT, p_pack_from BIGINT, p_provisional BOOLEAN,
    p_connect_ms DOUBLE PRECISION, p_duration_ms DOUBLE PRECISION,
    p_audio_in_ms DOUBLE PRECISION, p_audio_out_ms DOUBLE PRECISION,
    p_bytes_in BIGINT, p_bytes_out BIGINT, p_measurements TEXT)
RETURNS monthly_usage LANGUAGE plpgsql AS $$
DECLARE
    v_settlement TEXT := CASE WHEN p_settle THEN 'pending'
                              WHEN p_billable THEN 'included' ELSE 'none' END;
    v_final TEXT;
    v_done BIGINT;
    v_old RECORD;
    v_counted BIGINT := 1;
    v_decide BOOLEAN := p_billable;
    v_pending BOOLEAN := p_settle;
    v_add_billable BIGINT := CASE WHEN p_billable THEN 1 ELSE 0 END;
    v_minutes DOUBLE PRECISION := CASE WHEN p_billable THEN p_duration_ms / 60000.0 ELSE 0 END;
    v_audio DOUBLE PRECISION := (p_audio_in_ms + p_audio_out_ms) / 1000.0;
    v_bytes BIGINT := p_bytes_in + p_bytes_out;
    v_usage monthly_usage;
    v_before BIGINT;
    v_pack TEXT;
    v_taken TEXT;
BEGIN
    -- 1. the session row
    INSERT INTO sessions AS s (id, account_id, project_id, api_key_id, ephemeral_key_id,
        transport, model, status, started_at, ended_at, period, billable, reason, rule,
        settlement, connect_ms, duration_ms, audio_in_ms, audio_out_ms, bytes_in, bytes_out,
        measurements, provisional)
    VALUES (p_id, p_account_id, p_project_id, p_api_key_id, p_ephemeral_key_id, p_transport,
        p_model, 'completed', p_started_at, p_ended_at, p_period,
        CASE WHEN p_billable THEN 1 ELSE 0 END, p_reason, p_rule, v_settlement, p_connect_ms,
        p_duration_ms, p_audio_in_ms, p_audio_out_ms, p_bytes_in, p_bytes_out, p_measurements,
        CASE WHEN p_provisional THEN 1 ELSE 0 END)
    ON CONFLICT (id) DO UPDATE SET
        status = 'completed', ended_at = excluded.ended_at, billable = excluded.billable,
        reason = excluded.reason, rule = excluded.rule, settlement = excluded.settlement,
        connect_ms = excluded.connect_ms, duration_ms = excluded.duration_ms,
        audio_in_ms = excluded.audio_in_ms, audio_out_ms = excluded.audio_out_ms,
        bytes_in = excluded.bytes_in, bytes_out = excluded.bytes_out,
        measurements = excluded.measurements, provisional = excluded.provisional
    WHERE s.status <> 'completed';
    GET DIAGNOSTICS v_done = ROW_COUNT;
    IF v_done = 0 THEN  -- already completed (the row is locked all the same)
        SELECT provisional, billable, duration_ms, audio_in_ms, audio_out_ms, bytes_in,
               bytes_out
          INTO v_old FROM sessions WHERE id = p_id;
        IF NOT FOUND OR v_old.provisional = 0 OR p_provisional THEN  -- counted once only
            SELECT * INTO v_usage FROM monthly_usage
             WHERE account_id = p_account_id AND period = p_period;
            RETURN v_usage;
        END IF;
        v_counted := 0;
        v_audio := v_audio - (v_old.audio_in_ms + v_old.audio_out_ms) / 1000.0;
        v_bytes := v_bytes - (v_old.bytes_in + v_old.bytes_out);
        IF p_billable AND COALESCE(v_old.billable, 0) = 0 THEN  -- upgraded to billable
            v_settlement := CASE WHEN p_settle THEN 'pending' ELSE 'included' END;
            UPDATE sessions SET ended_at = p_ended_at, billable = 1, reason = p_reason,
                rule = p_rule, settlement = v_settlement, connect_ms = p_connect_ms,
                duration_ms = p_duration_ms, audio_in_ms = p_audio_in_ms,
                audio_out_ms = p_audio_out_ms, bytes_in = p_bytes_in, bytes_out = p_bytes_out,
                measurements = p_measurements, provisional = 0
             WHERE id = p_id;
        ELSE  -- the stored verdict and settlement stay; measurements replaced
            v_decide := FALSE;
            v_pending := FALSE;
            v_add_billable := 0;
            v_minutes := CASE WHEN COALESCE(v_old.billable, 0) <> 0
                              THEN (p_duration_ms - v_old.duration_ms) / 60000.0 ELSE 0 END;
            UPDATE sessions SET ended_at = p_ended_at, connect_ms = p_connect_ms,
                duration_ms = p_duration_ms, audio_in_ms = p_audio_in_ms,
                audio_out_ms = p_audio_out_ms, bytes_in = p_bytes_in, bytes_out = p_bytes_out,
                measurements = p_measurements, provisional = 0
             WHERE id = p_id;
        END IF;
    END IF;

    -- 2. the usage row: RETURNING numbers this billable session
    INSERT INTO monthly_usage AS u (account_id, period, sessions, billable_sessions,
        minutes_used, audio_seconds, bytes)
    VALUES (p_account_id, p_period, v_counted, v_add_billable, v_minutes, v_audio, v_bytes)
    ON CONFLICT (account_id, period) DO UPDATE SET
        sessions = u.sessions + excluded.sessions,
        billable_sessions = u.billable_sessions + excluded.billable_sessions,
        minutes_used = u.minutes_used + excluded.minutes_used,
        audio_seconds = u.audio_seconds + excluded.audio_seconds,
        bytes = u.bytes + excluded.bytes
    RETURNING * INTO v_usage;

    -- 3. pack or overage
    IF v_decide AND NOT p_settle AND (p_settle_from IS NOT NULL OR p_pack_from IS NOT NULL) THEN
        v_before := v_usage.billable_sessions - 1;
        IF p_pack_from IS NOT NULL AND v_before >= p_pack_from THEN
            FOR v_pack IN
                SELECT id FROM session_packs
                 WHERE account_id = p_account_id AND purchased_at <= p_ended_at
                   AND expires_at > p_ended_at AND sessions_used < sessions
                 ORDER BY expires_at, purchased_at, id COLLATE "C"
            LOOP
                UPDATE session_packs SET sessions_used = sessions_used + 1
                 WHERE id = v_pack AND sessions_used < sessions;
                IF FOUND THEN
                    v_taken := v_pack;
                    EXIT;
                END IF;
            END LOOP;
        END IF;
        v_final := v_settlement;
        IF v_taken IS NOT NULL THEN
            INSERT INTO pack_sessions (session_id, account_pack_id, account_id, period, used_at)
            VALUES (p_id, v_taken, p_account_id, p_period, p_ended_at) ON CONFLICT DO NOTHING;
            v_final := 'pack';
        ELSIF p_settle_from IS NOT NULL AND v_before >= p_settle_from THEN
            v_final := 'pending';
            v_pending := TRUE;
        END IF;
        IF v_final <> v_settlement THEN
            UPDATE sessions SET settlement = v_final WHERE id = p_id;
        END IF;
    END IF;

    -- 4. the outbox
    IF v_pending THEN
        INSERT INTO settlement_outbox (session_id, account_id, period, created_at, attempts,
            next_attempt_at, last_error)
        VALUES (p_id, p_account_id, p_period, p_ended_at, 0, p_ended_at, NULL)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN v_usage;
END
$$;

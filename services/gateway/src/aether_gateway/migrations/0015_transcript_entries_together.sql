-- A telemetry message's transcript entries stored (or counted as dropped) by one
-- statement, rather than one statement an entry: a TranscriptEntries an attempt's
-- credential publishes may hold thousands, and past the attempt's cap each still cost
-- the gateway a statement to be counted. Stored and counted exactly as
-- store_transcript_entry (0014) does each, in the entries' order: the attempt's row of
-- transcript_counts is locked once (again for an entry of another attempt) and written
-- once; an entry past the cap costs a comparison here, and one index look-up when its
-- sequence is above the highest dropped. Returns how many it counted as dropped now.
-- No refold: what it stores and counts is what store_transcript_entry did.
CREATE FUNCTION store_transcript_entries(entries jsonb, cap bigint) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    e transcript_entries;
    c transcript_counts;
    held boolean := false;
    dropped integer := 0;
BEGIN
    FOR e IN SELECT * FROM jsonb_populate_recordset(NULL::transcript_entries, entries) LOOP
        IF NOT held OR (e.mission_id, e.task_id, e.attempt)
                IS DISTINCT FROM (c.mission_id, c.task_id, c.attempt) THEN
            IF held THEN
                UPDATE transcript_counts
                   SET kept = c.kept, dropped = c.dropped, last_dropped = c.last_dropped
                 WHERE mission_id = c.mission_id AND task_id = c.task_id
                   AND attempt = c.attempt;
            END IF;
            -- Creates the attempt's row, or locks it: folds of one attempt queue here.
            INSERT INTO transcript_counts AS t (mission_id, task_id, attempt)
            VALUES (e.mission_id, e.task_id, e.attempt)
            ON CONFLICT (mission_id, task_id, attempt) DO UPDATE SET kept = t.kept
            RETURNING * INTO c;
            held := true;
        END IF;
        IF c.kept < cap THEN
            INSERT INTO transcript_entries (
                mission_id, task_id, attempt, sequence, event_id, runner_id, runtime, kind,
                text, tool, arguments, result, is_error, exit_code, status, stop_reason,
                usage, truncated, occurred_at
            ) VALUES (
                e.mission_id, e.task_id, e.attempt, e.sequence, e.event_id, e.runner_id,
                e.runtime, e.kind, e.text, e.tool, e.arguments, e.result, e.is_error,
                e.exit_code, e.status, e.stop_reason, e.usage, e.truncated, e.occurred_at
            )
            ON CONFLICT (mission_id, task_id, attempt, sequence) DO NOTHING;
            IF FOUND THEN
                c.kept := c.kept + 1;
            END IF;
        ELSIF e.sequence > c.last_dropped AND NOT EXISTS (
            SELECT 1 FROM transcript_entries
             WHERE mission_id = e.mission_id AND task_id = e.task_id
               AND attempt = e.attempt AND sequence = e.sequence
        ) THEN
            c.dropped := c.dropped + 1;
            c.last_dropped := e.sequence;
            dropped := dropped + 1;
        END IF;
    END LOOP;
    IF held THEN
        UPDATE transcript_counts
           SET kept = c.kept, dropped = c.dropped, last_dropped = c.last_dropped
         WHERE mission_id = c.mission_id AND task_id = c.task_id AND attempt = c.attempt;
    END IF;
    RETURN dropped;
END
$$;

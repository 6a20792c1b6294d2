-- The gateway's cap on an attempt's stored transcript entries (AETHER_TRANSCRIPT_MAX_ENTRIES):
-- a runner caps its own attempts, but a compromised runner or a stolen attempt credential
-- could publish entries without end. Each attempt has one row here, updated in the same
-- transaction as the entry's insert, so the cap costs a primary-key upsert, never a count.
-- kept: the attempt's entries stored; dropped: those the cap turned away, counted once
-- each (an attempt resumed publishes its entries again, in sequence order: an entry at
-- or below last_dropped was counted before). Not derived: a rebuild keeps these rows,
-- as it keeps transcript_entries.
-- No refold: the entries stored so far are counted here.
CREATE TABLE transcript_counts (
    mission_id    text NOT NULL,
    task_id       text NOT NULL,
    attempt       integer NOT NULL,
    kept          bigint NOT NULL DEFAULT 0,
    dropped       bigint NOT NULL DEFAULT 0,
    last_dropped  bigint NOT NULL DEFAULT -1,
    PRIMARY KEY (mission_id, task_id, attempt)
);
INSERT INTO transcript_counts (mission_id, task_id, attempt, kept)
SELECT mission_id, task_id, attempt, count(*)
  FROM transcript_entries
 GROUP BY mission_id, task_id, attempt;

-- Store one entry (a JSON object of transcript_entries' columns) under the cap; returns
-- 1 when the cap dropped it (first time counted), else 0 (stored, or stored before).
CREATE FUNCTION store_transcript_entry(entry jsonb, cap bigint) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    e transcript_entries;
    c transcript_counts;
BEGIN
    e := jsonb_populate_record(NULL::transcript_entries, entry);
    -- Creates the attempt's row, or locks it: folds of one attempt's entries queue here.
    INSERT INTO transcript_counts AS t (mission_id, task_id, attempt)
    VALUES (e.mission_id, e.task_id, e.attempt)
    ON CONFLICT (mission_id, task_id, attempt) DO UPDATE SET kept = t.kept
    RETURNING * INTO c;
    IF c.kept < cap THEN
        INSERT INTO transcript_entries (
            mission_id, task_id, attempt, sequence, event_id, runner_id, runtime, kind, text,
            tool, arguments, result, is_error, exit_code, status, stop_reason, usage,
            truncated, occurred_at
        ) VALUES (
            e.mission_id, e.task_id, e.attempt, e.sequence, e.event_id, e.runner_id,
            e.runtime, e.kind, e.text, e.tool, e.arguments, e.result, e.is_error,
            e.exit_code, e.status, e.stop_reason, e.usage, e.truncated, e.occurred_at
        )
        ON CONFLICT (mission_id, task_id, attempt, sequence) DO NOTHING;
        IF FOUND THEN
            UPDATE transcript_counts SET kept = kept + 1
             WHERE mission_id = e.mission_id AND task_id = e.task_id AND attempt = e.attempt;
        END IF;
        RETURN 0;
    END IF;
    IF e.sequence <= c.last_dropped OR EXISTS (
        SELECT 1 FROM transcript_entries
         WHERE mission_id = e.mission_id AND task_id = e.task_id AND attempt = e.attempt
           AND sequence = e.sequence
    ) THEN
        RETURN 0;
    END IF;
    UPDATE transcript_counts SET dropped = dropped + 1, last_dropped = e.sequence
     WHERE mission_id = e.mission_id AND task_id = e.task_id AND attempt = e.attempt;
    RETURN 1;
END
$$;

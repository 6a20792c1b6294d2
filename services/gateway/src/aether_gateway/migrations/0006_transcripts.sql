-- Every entry of every attempt's transcript (TranscriptRecorded, from the telemetry
-- stream, which keeps them only briefly): the durable record of what an agent did.
-- Not a derived table: a rebuild of the read model keeps these rows (the stream no
-- longer holds most of them) and folds again only what it still holds, which the
-- primary key makes a no-op.
CREATE TABLE transcript_entries (
    mission_id   text NOT NULL,
    task_id      text NOT NULL,
    attempt      integer NOT NULL,
    sequence     bigint NOT NULL,
    event_id     text NOT NULL,
    runner_id    text NOT NULL,
    runtime      text NOT NULL DEFAULT '',
    kind         text NOT NULL,
    text         text NOT NULL DEFAULT '',
    tool         text NOT NULL DEFAULT '',
    arguments    text NOT NULL DEFAULT '',
    result       text NOT NULL DEFAULT '',
    is_error     boolean NOT NULL DEFAULT false,
    exit_code    integer,
    status       text NOT NULL DEFAULT '',
    stop_reason  text,
    usage        jsonb,
    truncated    boolean NOT NULL DEFAULT false,
    occurred_at  timestamptz NOT NULL,
    stored_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mission_id, task_id, attempt, sequence)
);

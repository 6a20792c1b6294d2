-- Events the projection could not store as they were (PostgreSQL refuses NUL in text,
-- a payload that does not decode, a row that breaks a constraint): each is recorded
-- here and skipped, or stored sanitised, so one bad event never holds up the others.
CREATE TABLE projection_failures (
    stream      text NOT NULL CHECK (stream IN ('missions', 'telemetry')),
    seq         bigint NOT NULL,
    mission_id  text NOT NULL,
    type        text NOT NULL,
    error       text NOT NULL,
    -- 'sanitised': stored with the characters PostgreSQL refuses replaced by U+FFFD;
    -- 'placeholder': the mission is listed with what could be read; 'skipped': nothing stored.
    outcome     text NOT NULL CHECK (outcome IN ('sanitised', 'placeholder', 'skipped')),
    failed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, seq)
);

CREATE INDEX projection_failures_mission_idx ON projection_failures (mission_id, seq);

ALTER TABLE missions ADD COLUMN projection_failures integer NOT NULL DEFAULT 0;

-- Stream sequences the projection's position moved past without folding them (the
-- consumer skipped them, or they did not decode): checked against the stream and
-- refolded when they hold events the read model lacks.
CREATE TABLE projection_gaps (
    consumer    text NOT NULL,
    from_seq    bigint NOT NULL,
    to_seq      bigint NOT NULL,
    found_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, from_seq)
);

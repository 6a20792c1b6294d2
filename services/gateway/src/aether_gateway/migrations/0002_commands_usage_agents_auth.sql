-- Questions, messages, budgets, waves, per-task usage and agent sessions in the read
-- model; API tokens, idempotency keys and rate-limit windows beside it.
--
-- The fold rules changed with these columns, so the projection starts over: its rows
-- are emptied and its positions set back to zero, and the gateway folds the whole
-- stream again when it starts. Tokens and idempotency keys are not derived from the
-- stream and are never emptied.

TRUNCATE tasks, plans, events, missions;
UPDATE projection_position SET last_seq = 0, updated_at = now();

ALTER TABLE missions DROP CONSTRAINT missions_status_check;
ALTER TABLE missions ADD CONSTRAINT missions_status_check CHECK (status IN (
    'requested', 'preparing', 'awaiting_input', 'awaiting_approval', 'plan_failed',
    'running', 'paused', 'completed', 'answered', 'failed', 'cancelled'));
ALTER TABLE missions
    ADD COLUMN model_overrides  jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN verify_command   text,
    ADD COLUMN questions        jsonb NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN answer           text,
    ADD COLUMN budget_warning   boolean NOT NULL DEFAULT false,
    ADD COLUMN budget_exceeded  boolean NOT NULL DEFAULT false,
    ADD COLUMN current_wave     integer,
    ADD COLUMN pauses           integer NOT NULL DEFAULT 0,
    ADD COLUMN resumes          integer NOT NULL DEFAULT 0;

CREATE INDEX missions_repository_created_at_idx ON missions (repository, created_at DESC, id DESC);

ALTER TABLE tasks DROP CONSTRAINT tasks_status_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_status_check CHECK (status IN (
    'pending', 'ready', 'running', 'completed', 'merged', 'conflicted', 'failed',
    'escalated', 'skipped'));
ALTER TABLE tasks
    ADD COLUMN wave           integer,
    ADD COLUMN runner_id      text,
    ADD COLUMN summary        text NOT NULL DEFAULT '',
    ADD COLUMN files_changed  text[] NOT NULL DEFAULT '{}',
    ADD COLUMN tokens_in      bigint NOT NULL DEFAULT 0,
    ADD COLUMN tokens_out     bigint NOT NULL DEFAULT 0,
    ADD COLUMN cost_usd       double precision,
    ADD COLUMN cost_complete  boolean NOT NULL DEFAULT true,
    ADD COLUMN started_at     timestamptz,
    ADD COLUMN finished_at    timestamptz;

CREATE INDEX tasks_status_updated_idx ON tasks (status, updated_at DESC);

ALTER TABLE events ADD COLUMN task_id text;
CREATE INDEX events_type_seq_idx ON events (type, seq);
CREATE INDEX events_task_seq_idx ON events (mission_id, task_id, seq);

-- One row per UsageRecorded: the source of usage per mission, task, model, day, month.
CREATE TABLE usage_records (
    seq                 bigint PRIMARY KEY,
    mission_id          text NOT NULL,
    task_id             text,
    attempt             integer,
    service             text NOT NULL,
    step                text NOT NULL,
    model               text NOT NULL,
    offline             boolean NOT NULL DEFAULT false,
    input_tokens        bigint NOT NULL DEFAULT 0,
    output_tokens       bigint NOT NULL DEFAULT 0,
    cache_read_tokens   bigint NOT NULL DEFAULT 0,
    cache_write_tokens  bigint NOT NULL DEFAULT 0,
    -- NULL: the model's price is unknown.
    cost_usd            double precision,
    occurred_at         timestamptz NOT NULL
);

CREATE INDEX usage_records_occurred_idx ON usage_records (occurred_at);
CREATE INDEX usage_records_mission_idx ON usage_records (mission_id, occurred_at);

-- The planner's questions, people's messages and the planner's answers.
CREATE TABLE mission_messages (
    seq          bigint PRIMARY KEY,
    mission_id   text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('question', 'message', 'answer')),
    text         text NOT NULL,
    author       text,
    occurred_at  timestamptz NOT NULL
);

CREATE INDEX mission_messages_mission_idx ON mission_messages (mission_id, seq);

-- Budget warnings and exhaustion, per mission and for the global daily and monthly
-- budgets (scope 'mission', 'daily:YYYY-MM-DD' or 'monthly:YYYY-MM').
CREATE TABLE budget_alerts (
    seq          bigint PRIMARY KEY,
    mission_id   text NOT NULL,
    scope        text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('warning', 'exceeded')),
    spent_usd    double precision NOT NULL,
    budget_usd   double precision NOT NULL,
    occurred_at  timestamptz NOT NULL
);

CREATE INDEX budget_alerts_scope_idx ON budget_alerts (scope);

-- An agent at work on one attempt of one task, from the mission stream (started,
-- finished, usage) and the telemetry stream (heartbeats, progress).
CREATE TABLE agent_sessions (
    mission_id     text NOT NULL,
    task_id        text NOT NULL,
    attempt        integer NOT NULL,
    runner_id      text,
    model          text,
    status         text NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'timed_out')),
    started_at     timestamptz,
    finished_at    timestamptz,
    last_seen_at   timestamptz NOT NULL,
    error          text,
    progress_at    timestamptz,
    turns          integer NOT NULL DEFAULT 0,
    tool_calls     integer NOT NULL DEFAULT 0,
    files_changed  text[] NOT NULL DEFAULT '{}',
    last_action    text NOT NULL DEFAULT '',
    tokens_in      bigint NOT NULL DEFAULT 0,
    tokens_out     bigint NOT NULL DEFAULT 0,
    cost_usd       double precision,
    cost_complete  boolean NOT NULL DEFAULT true,
    PRIMARY KEY (mission_id, task_id, attempt)
);

CREATE INDEX agent_sessions_runner_idx ON agent_sessions (runner_id, last_seen_at DESC);

-- API tokens: only a SHA-256 of the secret is kept.
CREATE TABLE api_tokens (
    id            text PRIMARY KEY,
    name          text NOT NULL,
    token_hash    text NOT NULL UNIQUE,
    prefix        text NOT NULL,
    scopes        text[] NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text,
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz
);

-- The first answer to a POST sent with an Idempotency-Key, per caller, for a day.
CREATE TABLE idempotency_keys (
    principal     text NOT NULL,
    key           text NOT NULL,
    method        text NOT NULL,
    path          text NOT NULL,
    request_hash  text NOT NULL,
    status_code   integer NOT NULL,
    headers       jsonb NOT NULL,
    body          bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);

CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- Fixed-window request counters (mission creation per caller), shared by replicas.
CREATE TABLE rate_limit_windows (
    bucket        text NOT NULL,
    window_start  timestamptz NOT NULL,
    hits          integer NOT NULL,
    PRIMARY KEY (bucket, window_start)
);

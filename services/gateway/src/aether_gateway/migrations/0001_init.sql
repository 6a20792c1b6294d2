-- The gateway's read model: missions, their plans and tasks, every event, and how far
-- into the stream the projection has folded. Rebuildable from the stream at any time.

CREATE TABLE missions (
    id                  text PRIMARY KEY,
    status              text NOT NULL CHECK (status IN (
                            'requested', 'preparing', 'awaiting_approval', 'plan_failed',
                            'running', 'paused', 'completed', 'failed', 'cancelled')),
    repository          text NOT NULL,
    base_branch         text NOT NULL,
    requirement         text NOT NULL,
    correlation_id      text NOT NULL,
    auto_approve        boolean NOT NULL DEFAULT false,
    budget_usd          double precision,
    max_concurrency     integer NOT NULL,
    max_tasks           integer NOT NULL,
    requested_by        text,
    integration_branch  text,
    base_sha            text,
    final_sha           text,
    plan_version        integer,
    approved_version    integer,
    offline             boolean NOT NULL DEFAULT false,
    model               text,
    tokens_in           bigint NOT NULL DEFAULT 0,
    tokens_out          bigint NOT NULL DEFAULT 0,
    tokens_cache_read   bigint NOT NULL DEFAULT 0,
    tokens_cache_write  bigint NOT NULL DEFAULT 0,
    -- NULL means unknown: no call with a known price yet. cost_complete is false once a
    -- call of unknown price was recorded, so cost_usd is then a lower bound.
    cost_usd            double precision,
    cost_complete       boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    error               text
);

CREATE INDEX missions_created_at_idx ON missions (created_at DESC, id DESC);
CREATE INDEX missions_status_created_at_idx ON missions (status, created_at DESC, id DESC);

CREATE TABLE plans (
    mission_id   text NOT NULL REFERENCES missions (id) ON DELETE CASCADE,
    version      integer NOT NULL,
    tasks        jsonb NOT NULL,
    rationale    text NOT NULL DEFAULT '',
    model        text NOT NULL DEFAULT '',
    offline      boolean NOT NULL DEFAULT false,
    repairs      jsonb NOT NULL DEFAULT '[]'::jsonb,
    produced_at  timestamptz NOT NULL,
    PRIMARY KEY (mission_id, version)
);

CREATE TABLE tasks (
    mission_id   text NOT NULL REFERENCES missions (id) ON DELETE CASCADE,
    task_id      text NOT NULL,
    position     integer NOT NULL DEFAULT 0,
    title        text NOT NULL,
    description  text NOT NULL DEFAULT '',
    files        text[] NOT NULL DEFAULT '{}',
    depends_on   text[] NOT NULL DEFAULT '{}',
    tier         text NOT NULL DEFAULT 'standard',
    status       text NOT NULL CHECK (status IN (
                     'pending', 'ready', 'running', 'completed', 'merged', 'conflicted',
                     'failed')),
    attempt      integer NOT NULL DEFAULT 0,
    model        text,
    branch       text,
    base_sha     text,
    commit_sha   text,
    merge_sha    text,
    error        text,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (mission_id, task_id)
);

-- Every folded event, keyed by its stream sequence. No foreign key to missions: an event
-- of a mission never requested is still history.
CREATE TABLE events (
    seq          bigint PRIMARY KEY,
    mission_id   text NOT NULL,
    type         text NOT NULL,
    event_id     text NOT NULL UNIQUE,
    occurred_at  timestamptz NOT NULL,
    payload      jsonb NOT NULL
);

CREATE INDEX events_mission_seq_idx ON events (mission_id, seq);

CREATE TABLE projection_position (
    consumer    text PRIMARY KEY,
    last_seq    bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

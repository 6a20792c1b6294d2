-- The agent runtimes: the one a mission asked for its tasks (MissionRequested.runtime, and
-- per tier runtime_overrides) and the one each task's current attempt runs with
-- (TaskReady.runtime, then AgentStarted.runtime). Rows folded before this migration have
-- none until the read model is rebuilt (POST /admin/read-model/rebuild).
ALTER TABLE missions
    ADD COLUMN runtime           text,
    ADD COLUMN runtime_overrides jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE tasks ADD COLUMN runtime text;

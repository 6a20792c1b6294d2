-- The agent runtimes: the one a mission asked for its tasks (MissionRequested.runtime, and
-- per tier runtime_overrides) and the one each task's current attempt runs with
-- (TaskReady.runtime, then AgentStarted.runtime). Rows folded before this migration had
-- none: the read model is folded again from the streams (the marker below).
-- refold: the runtimes are filled from events folded before this migration
ALTER TABLE missions
    ADD COLUMN runtime           text,
    ADD COLUMN runtime_overrides jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE tasks ADD COLUMN runtime text;

-- Scope drift: the files an attempt changed outside its task's planned scope
-- (AgentCompleted.files_outside_scope), shown with the task.
ALTER TABLE tasks ADD COLUMN files_outside_scope text[] NOT NULL DEFAULT '{}';

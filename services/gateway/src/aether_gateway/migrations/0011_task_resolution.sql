-- Whether a task's merged attempt resolved a merge conflict (BranchMerged.resolution),
-- shown where the merge is. Rows folded before this migration said false: the read model
-- is folded again from the streams (the marker below).
-- refold: the resolution flag is filled from events folded before this migration
ALTER TABLE tasks ADD COLUMN resolution boolean NOT NULL DEFAULT false;

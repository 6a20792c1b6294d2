-- Whether a task's merged attempt resolved a merge conflict (BranchMerged.resolution),
-- shown where the merge is. Rows folded before this migration say false until the read
-- model is rebuilt (POST /admin/read-model/rebuild).
ALTER TABLE tasks ADD COLUMN resolution boolean NOT NULL DEFAULT false;

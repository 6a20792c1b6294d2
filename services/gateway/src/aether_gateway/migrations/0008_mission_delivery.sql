-- Where a completed mission's result went: the git broker's push of its integration
-- branch (BranchPushed) or why it gave up (BranchPushFailed); NULL until either.
ALTER TABLE missions ADD COLUMN delivery jsonb;

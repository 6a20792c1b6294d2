-- refold: a task whose merge was refused for something other than a conflict (a failed
-- verification, paths no checkout may write, a missing commit) says "not merged: …" in
-- its error, as the command line and the board's task page tell it; rows folded before
-- this migration kept the broker's first line alone.
SELECT 1;

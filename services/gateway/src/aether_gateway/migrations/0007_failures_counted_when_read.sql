-- A mission's failure count is counted from projection_failures when the mission is read.
-- The stored count was set by whichever consumer recorded a failure: a telemetry event
-- refused before its mission's row existed (the two streams are folded by separate
-- consumers) counted nothing, and the row created next started from zero.
ALTER TABLE missions DROP COLUMN projection_failures;

-- An attempt's result may carry the attempt's AgentStarted and UsageRecorded events
-- (v1.3). Each is stored as a row of its own at the result's sequence, before it: its
-- part of the message is -n … -1, the message's own event's is 0, and a sequence with
-- its part names one row of events and of usage_records.
ALTER TABLE events ADD COLUMN part smallint NOT NULL DEFAULT 0;
ALTER TABLE events DROP CONSTRAINT events_pkey, ADD PRIMARY KEY (seq, part);
ALTER TABLE usage_records ADD COLUMN part smallint NOT NULL DEFAULT 0;
ALTER TABLE usage_records DROP CONSTRAINT usage_records_pkey, ADD PRIMARY KEY (seq, part);

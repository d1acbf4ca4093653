-- Claiming finds the first due item through the *_claimable indexes and the first item
-- whose lease lapsed through these, so a claim costs the same with ten items queued or a
-- hundred thousand.
CREATE INDEX inbox_events_leased ON inbox_events (lease_until) WHERE state = 'running';
CREATE INDEX jobs_leased ON jobs (lease_until) WHERE state = 'running';

-- The claimable indexes covered running items too, though lapsed leases have their own
-- index (`*_leased`). Every claim and every completion then wrote a new index entry, and
-- each claim's scan stepped over the running items at the head of the queue. Waiting
-- items only: a claim or a completion no longer touches this index.
DROP INDEX inbox_events_claimable;
CREATE INDEX inbox_events_claimable ON inbox_events (run_at, id) WHERE state IN ('queued', 'failed');
DROP INDEX jobs_claimable;
CREATE INDEX jobs_claimable ON jobs (run_at, id) WHERE state IN ('queued', 'failed');

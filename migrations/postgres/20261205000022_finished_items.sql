-- The worker deletes finished items once they are older than worker.keep_done_days (Meta's
-- statuses: worker.keep_done_statuses_seconds). It finds them oldest first through these,
-- so each prune reads only what it deletes, however large the queues have grown.
CREATE INDEX inbox_events_finished ON inbox_events (finished_at) WHERE state = 'done';
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state = 'done';

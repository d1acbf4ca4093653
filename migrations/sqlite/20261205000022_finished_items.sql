-- The worker deletes finished items once they are older than worker.keep_done_days, and
-- Meta's statuses once older than worker.keep_done_statuses_seconds. It finds them oldest
-- first through these, each naming what its prune deletes, so that a prune reads only what
-- it deletes: with one index for the whole inbox, the hourly prune of statuses would step
-- over a week of other events kept longer, every time.
CREATE INDEX inbox_events_finished_statuses ON inbox_events (finished_at)
    WHERE state = 'done' AND kind = 'whatsapp.status';
CREATE INDEX inbox_events_finished ON inbox_events (finished_at)
    WHERE state = 'done' AND kind <> 'whatsapp.status';
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state = 'done';

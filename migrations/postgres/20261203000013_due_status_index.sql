-- An inbox loop claims Meta's statuses in batches, beside the oldest due event of any
-- kind: this index finds the due statuses directly, however many other events wait.
CREATE INDEX inbox_events_due_statuses ON inbox_events (run_at, id)
    WHERE state IN ('queued', 'failed') AND kind = 'whatsapp.status';

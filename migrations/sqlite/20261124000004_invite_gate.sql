-- The invite gate: a compare-and-set on the customer row makes the cooldown and the
-- lifetime limit hold even when two triggers for one contact are handled at once.
ALTER TABLE customers ADD COLUMN last_invite_at BIGINT;
ALTER TABLE customers ADD COLUMN invite_count BIGINT NOT NULL DEFAULT 0;

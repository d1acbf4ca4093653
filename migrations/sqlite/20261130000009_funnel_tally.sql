-- The funnel, tallied as it happens: each step counted once, when something first
-- reaches it, under the day (UTC, in days since the epoch) and kind of the trigger behind
-- it. The admin API sums these rows instead of scanning every trigger and referral of a
-- period. Each (day, trigger, step) is spread over a few slots so busy days do not
-- serialise the transactions that count them.
CREATE TABLE funnel_tally (
    day      BIGINT  NOT NULL,
    trigger  TEXT    NOT NULL,
    step     TEXT    NOT NULL,
    slot     BIGINT  NOT NULL,
    n        BIGINT  NOT NULL,
    PRIMARY KEY (day, trigger, step, slot)
);

-- When the referral's first reward was issued (the funnel's last step, counted once).
ALTER TABLE referrals ADD COLUMN rewarded_at BIGINT;
UPDATE referrals SET rewarded_at = (SELECT MIN(w.updated_at) FROM rewards w WHERE w.referral_id = referrals.id AND w.state = 'issued');

-- What existing data has reached (from current states).
INSERT INTO funnel_tally (day, trigger, step, slot, n)
SELECT created_at / 86400000, trigger, 'triggers', 0, COUNT(*) FROM invites GROUP BY created_at / 86400000, trigger;
INSERT INTO funnel_tally (day, trigger, step, slot, n)
SELECT created_at / 86400000, trigger, 'eligible', 0, COUNT(*) FROM invites WHERE state <> 'ineligible' GROUP BY created_at / 86400000, trigger;
INSERT INTO funnel_tally (day, trigger, step, slot, n)
SELECT created_at / 86400000, trigger, 'invited', 0, COUNT(*) FROM invites WHERE state IN ('invited', 'flow_sent', 'nominated') GROUP BY created_at / 86400000, trigger;
INSERT INTO funnel_tally (day, trigger, step, slot, n)
SELECT created_at / 86400000, trigger, 'flow_sent', 0, COUNT(*) FROM invites WHERE state IN ('flow_sent', 'nominated') GROUP BY created_at / 86400000, trigger;
INSERT INTO funnel_tally (day, trigger, step, slot, n)
SELECT i.created_at / 86400000, i.trigger, 'nominated', 0, COUNT(*) FROM referrals r JOIN invites i ON i.id = r.invite_id GROUP BY i.created_at / 86400000, i.trigger;
INSERT INTO funnel_tally (day, trigger, step, slot, n)
SELECT i.created_at / 86400000, i.trigger, 'friend_reached', 0, COUNT(*) FROM referrals r JOIN invites i ON i.id = r.invite_id WHERE r.state IN ('friend_invited', 'converted') GROUP BY i.created_at / 86400000, i.trigger;
INSERT INTO funnel_tally (day, trigger, step, slot, n)
SELECT i.created_at / 86400000, i.trigger, 'converted', 0, COUNT(*) FROM referrals r JOIN invites i ON i.id = r.invite_id WHERE r.state = 'converted' GROUP BY i.created_at / 86400000, i.trigger;
INSERT INTO funnel_tally (day, trigger, step, slot, n)
SELECT i.created_at / 86400000, i.trigger, 'rewarded', 0, COUNT(*) FROM referrals r JOIN invites i ON i.id = r.invite_id WHERE r.rewarded_at IS NOT NULL GROUP BY i.created_at / 86400000, i.trigger;

-- Each referrer's nominations and conversions, tallied with the funnel (the top
-- referrers are read from here, not counted over every referral).
CREATE TABLE referrer_tally (
    contact_id  TEXT    NOT NULL,
    step        TEXT    NOT NULL,
    n           BIGINT  NOT NULL,
    PRIMARY KEY (contact_id, step)
);
CREATE INDEX referrer_tally_top ON referrer_tally (step, n);
INSERT INTO referrer_tally (contact_id, step, n)
SELECT referrer_contact_id, 'nominated', COUNT(*) FROM referrals GROUP BY referrer_contact_id;
INSERT INTO referrer_tally (contact_id, step, n)
SELECT referrer_contact_id, 'converted', COUNT(*) FROM referrals WHERE state = 'converted' GROUP BY referrer_contact_id;

-- The drop-out reasons of a period, from small partial indexes.
CREATE INDEX invites_ineligible ON invites (created_at, reason) WHERE state = 'ineligible';
CREATE INDEX referrals_refused ON referrals (nominated_at, reason) WHERE state = 'refused';
CREATE INDEX messages_failed ON messages (created_at) WHERE status = 'failed';
CREATE INDEX wa_users_opted_out ON wa_users (opted_out_at) WHERE opted_out = 1;

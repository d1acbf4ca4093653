-- Milestone bonuses: a bonus is a reward of the referral that reached the milestone, to its
-- referrer (beneficiary `referrer_bonus`), with the milestone's number of conversions.
ALTER TABLE rewards ADD COLUMN milestone BIGINT;
CREATE INDEX rewards_bonus ON rewards (contact_id, milestone) WHERE milestone IS NOT NULL;

-- When the referrer's nudge was queued for a referral (the funnel counts the conversions after
-- it).
ALTER TABLE referrals ADD COLUMN nudged_at BIGINT;

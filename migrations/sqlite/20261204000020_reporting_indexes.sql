-- The dashboard's drop-outs read failed messages by day with their error: covered by the
-- index, so the 90-day page reads no message row (it fetched 30,000 scattered rows at a
-- million referrals).
CREATE INDEX messages_failed_error ON messages (created_at, error_code, error_title) WHERE status = 'failed';
DROP INDEX messages_failed;

-- The referral search matches a code, a contact id (referrer's or friend's) or a phone
-- (referrer's or friend's): each needs its index, or the search reads every referral.
CREATE INDEX referrals_friend_contact ON referrals (friend_contact_id);
CREATE INDEX referrals_referrer_phone ON referrals (referrer_phone);
CREATE INDEX referrals_friend_phone ON referrals (friend_phone);

-- The admin API's funnel and exports select by period: triggers by when they arrived,
-- referrals by their trigger and by when the friend was nominated.
CREATE INDEX invites_created ON invites (created_at);
CREATE INDEX referrals_invite ON referrals (invite_id);
CREATE INDEX referrals_nominated ON referrals (nominated_at);
CREATE INDEX messages_invite ON messages (invite_id);
CREATE INDEX rewards_referral_state ON rewards (referral_id, state);

-- Who did what through the admin API or the dashboard (retries, voids).
CREATE TABLE admin_actions (
    id      BIGSERIAL PRIMARY KEY,
    actor   TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    target  TEXT    NOT NULL,
    at      BIGINT  NOT NULL
);

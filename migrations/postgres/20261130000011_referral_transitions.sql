-- Every change of a referral's state, written in the transaction that makes it: the
-- timeline's record of what happened, in order.
CREATE TABLE referral_transitions (
    id           BIGSERIAL PRIMARY KEY,
    referral_id  BIGINT  NOT NULL,
    from_state   TEXT,
    to_state     TEXT    NOT NULL,
    reason       TEXT,
    at           BIGINT  NOT NULL
);
CREATE INDEX referral_transitions_referral ON referral_transitions (referral_id, id);

-- Conversions (from HubSpot, Stripe or the API) and the two-sided rewards they grant.

-- Every conversion signal, one row per source and external id, whatever it matched.
CREATE TABLE conversions (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    source           TEXT    NOT NULL,
    external_id      TEXT    NOT NULL,
    referral_id      BIGINT,
    outcome          TEXT    NOT NULL,
    matched_by       TEXT,
    amount           BIGINT,
    currency         TEXT,
    payment_ref      TEXT,
    stripe_customer  TEXT,
    created_at       BIGINT  NOT NULL,
    CONSTRAINT conversions_source_external_id UNIQUE (source, external_id)
);
CREATE INDEX conversions_referral ON conversions (referral_id);
CREATE INDEX conversions_payment_ref ON conversions (payment_ref);

-- The ledger: one reward per referral and beneficiary.
CREATE TABLE rewards (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    referral_id      BIGINT  NOT NULL REFERENCES referrals (id),
    beneficiary      TEXT    NOT NULL,
    contact_id       TEXT,
    phone            TEXT    NOT NULL,
    first_name       TEXT    NOT NULL DEFAULT '',
    language         TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    amount           BIGINT  NOT NULL,
    currency         TEXT    NOT NULL,
    code             TEXT,
    external_ref     TEXT,
    stripe_customer  TEXT,
    last_error       TEXT,
    available_at     BIGINT  NOT NULL,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    CONSTRAINT rewards_referral_beneficiary UNIQUE (referral_id, beneficiary)
);
CREATE INDEX rewards_contact ON rewards (contact_id, beneficiary, state);

-- Discount codes loaded by an operator, each handed out once.
CREATE TABLE reward_codes (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    code         TEXT    NOT NULL,
    reward_id    BIGINT,
    loaded_at    BIGINT  NOT NULL,
    assigned_at  BIGINT,
    CONSTRAINT reward_codes_code UNIQUE (code),
    CONSTRAINT reward_codes_reward UNIQUE (reward_id)
);
CREATE INDEX reward_codes_free ON reward_codes (id) WHERE reward_id IS NULL;

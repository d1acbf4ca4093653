-- The referral lifecycle. Timestamps are Unix milliseconds; booleans are 0/1 integers.

-- A HubSpot contact's referral code, created once and kept.
CREATE TABLE customers (
    contact_id     TEXT    PRIMARY KEY,
    referral_code  TEXT    NOT NULL,
    first_name     TEXT    NOT NULL DEFAULT '',
    created_at     BIGINT  NOT NULL,
    CONSTRAINT customers_referral_code UNIQUE (referral_code)
);

-- One row per trigger (a HubSpot workflow webhook), eligible or not.
CREATE TABLE invites (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    trigger_key    TEXT    NOT NULL,
    contact_id     TEXT    NOT NULL,
    trigger        TEXT    NOT NULL,
    phone          TEXT,
    first_name     TEXT    NOT NULL DEFAULT '',
    language       TEXT    NOT NULL,
    referral_code  TEXT,
    state          TEXT    NOT NULL,
    reason         TEXT,
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL,
    CONSTRAINT invites_trigger_key UNIQUE (trigger_key)
);
CREATE INDEX invites_contact ON invites (contact_id, created_at);

-- One row per nominated friend.
CREATE TABLE referrals (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    invite_id            BIGINT  NOT NULL REFERENCES invites (id),
    flow_token           TEXT    NOT NULL,
    referrer_contact_id  TEXT    NOT NULL,
    referrer_phone       TEXT    NOT NULL,
    referrer_name        TEXT    NOT NULL,
    referral_code        TEXT    NOT NULL,
    friend_phone         TEXT    NOT NULL,
    friend_name          TEXT    NOT NULL,
    personal_message     TEXT,
    consent              BIGINT  NOT NULL,
    language             TEXT    NOT NULL,
    state                TEXT    NOT NULL,
    reason               TEXT,
    friend_contact_id    TEXT,
    nominated_at         BIGINT  NOT NULL,
    updated_at           BIGINT  NOT NULL,
    -- One nomination per Flow token: a replayed Flow reply cannot create a second.
    CONSTRAINT referrals_flow_token UNIQUE (flow_token)
);
-- The first nomination of a number wins while it is open.
CREATE UNIQUE INDEX referrals_open_friend ON referrals (friend_phone)
    WHERE state IN ('nominated', 'direct_invite_queued', 'awaiting_friend', 'friend_invited');
CREATE INDEX referrals_referrer ON referrals (referrer_contact_id);
CREATE INDEX referrals_code ON referrals (referral_code);

-- What we know of a WhatsApp user: marketing opt-out and the last inbound message
-- (which opens the 24-hour service window).
CREATE TABLE wa_users (
    phone            TEXT    PRIMARY KEY,
    opted_out        BIGINT  NOT NULL DEFAULT 0,
    opted_out_at     BIGINT,
    opt_out_source   TEXT,
    last_inbound_at  BIGINT,
    updated_at       BIGINT  NOT NULL
);

-- Every WhatsApp message we send, one row per idempotency key.
CREATE TABLE messages (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key  TEXT    NOT NULL,
    purpose          TEXT    NOT NULL,
    to_phone         TEXT    NOT NULL,
    invite_id        BIGINT,
    referral_id      BIGINT,
    marketing        BIGINT  NOT NULL,
    body             TEXT    NOT NULL,
    wamid            TEXT,
    status           TEXT    NOT NULL,
    error_code       BIGINT,
    error_title      TEXT,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    CONSTRAINT messages_idempotency_key UNIQUE (idempotency_key),
    CONSTRAINT messages_wamid UNIQUE (wamid)
);
CREATE INDEX messages_referral ON messages (referral_id);

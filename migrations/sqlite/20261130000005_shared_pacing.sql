-- Send rates shared by every replica: calls reserved per fixed window (for example one
-- second of WhatsApp sends per phone number), and each recipient's next free turn (Meta
-- allows one message per 6 seconds to the same user).
CREATE TABLE rate_slots (
    bucket        TEXT    NOT NULL,
    window_start  BIGINT  NOT NULL,
    used          BIGINT  NOT NULL,
    PRIMARY KEY (bucket, window_start)
);

CREATE TABLE recipient_pacing (
    phone       TEXT    PRIMARY KEY,
    next_at     BIGINT  NOT NULL,
    message_id  BIGINT  NOT NULL
);

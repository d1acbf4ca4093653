-- What the programme costs and earns, tallied as it happens (like the funnel's tally):
-- each delivered message's charge, each issued reward's value and each conversion's
-- amount, under the day (UTC, days since the epoch) and kind of the trigger whose cohort
-- it belongs to ('unattributed' and the day it happened for a message about no trigger).
-- Money is in millionths of the currency's major unit; the report converts it.
CREATE TABLE economics_tally (
    day       BIGINT  NOT NULL,
    trigger   TEXT    NOT NULL,
    measure   TEXT    NOT NULL,
    detail    TEXT    NOT NULL,
    currency  TEXT    NOT NULL,
    slot      BIGINT  NOT NULL,
    n         BIGINT  NOT NULL,
    micros    BIGINT  NOT NULL,
    PRIMARY KEY (day, trigger, measure, detail, currency, slot)
);

-- One charge per delivered message: the first status that reports it delivered (or read)
-- with Meta's pricing object. The primary key makes a redelivered status charge nothing.
CREATE TABLE message_charges (
    message_id  BIGINT  PRIMARY KEY REFERENCES messages (id),
    measure     TEXT    NOT NULL,
    category    TEXT    NOT NULL,
    market      TEXT    NOT NULL,
    currency    TEXT    NOT NULL,
    micros      BIGINT  NOT NULL,
    charged_at  BIGINT  NOT NULL
);

-- Experiments: the variant an invite was given, recorded in the transaction that creates
-- it (NULL outside any experiment), and each variant's funnel and economics, tallied as
-- they happen like the programme's (so a result page reads a few rows, never scans).
ALTER TABLE invites ADD COLUMN experiment TEXT;
ALTER TABLE invites ADD COLUMN variant TEXT;

CREATE TABLE experiment_tally (
    experiment  TEXT    NOT NULL,
    variant     TEXT    NOT NULL,
    -- A funnel step (`step`, detail the step's name) or an economics measure.
    measure     TEXT    NOT NULL,
    detail      TEXT    NOT NULL,
    currency    TEXT    NOT NULL,
    slot        BIGINT  NOT NULL,
    n           BIGINT  NOT NULL,
    micros      BIGINT  NOT NULL,
    PRIMARY KEY (experiment, variant, measure, detail, currency, slot)
);

-- Timestamps are Unix milliseconds (BIGINT) so that both backends share one representation.

-- Every webhook event we acknowledged, stored before the acknowledgement.
CREATE TABLE inbox_events (
    id            BIGSERIAL PRIMARY KEY,
    source        TEXT    NOT NULL,
    dedupe_key    TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    payload       TEXT    NOT NULL,
    state         TEXT    NOT NULL DEFAULT 'queued',
    attempts      BIGINT  NOT NULL DEFAULT 0,
    max_attempts  BIGINT  NOT NULL,
    run_at        BIGINT  NOT NULL,
    lease_until   BIGINT,
    lease_owner   TEXT,
    last_error    TEXT,
    note          TEXT,
    received_at   BIGINT  NOT NULL,
    finished_at   BIGINT,
    CONSTRAINT inbox_events_source_dedupe_key UNIQUE (source, dedupe_key),
    CONSTRAINT inbox_events_state CHECK (state IN ('queued', 'running', 'done', 'failed', 'dead'))
);
CREATE INDEX inbox_events_claimable ON inbox_events (run_at, id) WHERE state IN ('queued', 'failed', 'running');

-- The outbox: every call to an outside API is a job with an idempotency key.
CREATE TABLE jobs (
    id               BIGSERIAL PRIMARY KEY,
    kind             TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'queued',
    attempts         BIGINT  NOT NULL DEFAULT 0,
    max_attempts     BIGINT  NOT NULL,
    run_at           BIGINT  NOT NULL,
    lease_until      BIGINT,
    lease_owner      TEXT,
    last_error       TEXT,
    note             TEXT,
    created_at       BIGINT  NOT NULL,
    finished_at      BIGINT,
    CONSTRAINT jobs_idempotency_key UNIQUE (idempotency_key),
    CONSTRAINT jobs_state CHECK (state IN ('queued', 'running', 'done', 'failed', 'dead'))
);
CREATE INDEX jobs_claimable ON jobs (run_at, id) WHERE state IN ('queued', 'failed', 'running');

-- Sandbox mode: each outbound call that would have been made, in full.
CREATE TABLE outbound_calls (
    id          BIGSERIAL PRIMARY KEY,
    job_id      BIGINT,
    method      TEXT    NOT NULL,
    url         TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL
);

-- Dashboard users (created with `referloop users add`; argon2id password hashes), their
-- sessions (the cookie's token is kept only as its SHA-256 digest), and failed sign-ins
-- (for throttling).
CREATE TABLE admin_users (
    id             BIGSERIAL PRIMARY KEY,
    name           TEXT    NOT NULL,
    role           TEXT    NOT NULL,
    password_hash  TEXT    NOT NULL,
    disabled       BIGINT  NOT NULL DEFAULT 0,
    created_at     BIGINT  NOT NULL,
    CONSTRAINT admin_users_name UNIQUE (name)
);

CREATE TABLE admin_sessions (
    token_hash  TEXT    PRIMARY KEY,
    user_id     BIGINT  NOT NULL REFERENCES admin_users (id),
    csrf        TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL
);

CREATE TABLE login_failures (
    name  TEXT    NOT NULL,
    at    BIGINT  NOT NULL
);
CREATE INDEX login_failures_name ON login_failures (name, at);

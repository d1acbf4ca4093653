-- Each template's last status from Meta's message_template_status_update webhooks: sends
-- of a template that is paused, disabled or rejected wait until it is approved again.
CREATE TABLE template_status (
    name        TEXT    NOT NULL,
    language    TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    reason      TEXT,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (name, language)
);

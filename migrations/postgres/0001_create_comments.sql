-- Comments on content items. Identity ids are never reused: they are cursors and Location URLs.
CREATE TABLE comments (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    content_id  TEXT        NOT NULL,
    email       TEXT        NOT NULL,
    -- UTF-8 bytes: PostgreSQL text cannot hold NUL, and comments must come back as sent.
    comment     BYTEA       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE INDEX comments_by_content ON comments (content_id, id);

-- Idempotency keys remember the comment a create produced, for safe retries.
CREATE TABLE idempotency_keys (
    key         TEXT        PRIMARY KEY,
    comment_id  BIGINT      NOT NULL REFERENCES comments (id) ON DELETE CASCADE,
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE INDEX idempotency_keys_by_comment ON idempotency_keys (comment_id);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

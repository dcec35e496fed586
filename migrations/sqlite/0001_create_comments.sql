-- Comments on content items. AUTOINCREMENT so an id is never reused after a delete: ids are
-- cursors and Location URLs.
CREATE TABLE comments (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    content_id  TEXT    NOT NULL,
    email       TEXT    NOT NULL,
    -- UTF-8 bytes kept as a blob so every character, NUL included, comes back as sent.
    comment     BLOB    NOT NULL,
    -- Microseconds since the Unix epoch, UTC.
    created_at  INTEGER NOT NULL
);

CREATE INDEX comments_by_content ON comments (content_id, id);

-- Idempotency keys remember the comment a create produced, for safe retries.
CREATE TABLE idempotency_keys (
    key         TEXT    PRIMARY KEY,
    comment_id  INTEGER NOT NULL REFERENCES comments (id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL
);

CREATE INDEX idempotency_keys_by_comment ON idempotency_keys (comment_id);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

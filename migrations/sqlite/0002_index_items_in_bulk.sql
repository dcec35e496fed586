-- An item's comments are found through an index that new comments join in bulk, not one by one
-- (src/store/sqlite/item_index.rs says how the writer keeps it).
--
-- With `(content_id, id)` indexed on the table, every new comment was an insert at a random place
-- of that index: once the database had grown, a commit of N comments on N items changed N index
-- pages, each written to the WAL and copied back at the next checkpoint (1.3 pages per comment
-- against 0.1 without the index, at 400k comments on 1000 items: bench/README.md, stop 21). Now:
--
-- * `comments_by_epoch` indexes every comment under its id's epoch (1024 ids) first, so the new
--   comments of a commit share the few pages of the newest epoch;
-- * `comments_by_item` is the `(content_id, id)` index kept as a table of its own, so the writer
--   can fill it in item order: it takes the comments that came in since the last time, sorts them
--   by item and adds them a slice at a time, which changes each of its pages about once for
--   thousands of comments;
-- * `comments_by_item_upto` says how far that has got: every comment with an id up to it is in
--   `comments_by_item`. A list reads `comments_by_item`, and `comments_by_epoch` past the mark.
--
-- Ids are never reused (AUTOINCREMENT), and one writer commits them in order.
CREATE TABLE comments_by_item (
    content_id  TEXT    NOT NULL,
    id          INTEGER NOT NULL,
    PRIMARY KEY (content_id, id)
) WITHOUT ROWID;

-- A trigger rather than a foreign key with ON DELETE CASCADE: the cascade would look entries up
-- by `id` alone, which no index here leads with, so every delete would scan the table.
CREATE TRIGGER comments_by_item_forget AFTER DELETE ON comments BEGIN
    DELETE FROM comments_by_item WHERE content_id = old.content_id AND id = old.id;
END;

-- One row: every comment with an id up to this one is in comments_by_item.
CREATE TABLE comments_by_item_upto (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    id  INTEGER NOT NULL
);

INSERT INTO comments_by_item (content_id, id)
    SELECT content_id, id FROM comments ORDER BY content_id, id;
INSERT INTO comments_by_item_upto (one, id) SELECT 1, coalesce(max(id), 0) FROM comments;

CREATE INDEX comments_by_epoch ON comments (id >> 10, content_id, id);
DROP INDEX comments_by_content;

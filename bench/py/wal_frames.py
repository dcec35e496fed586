#!/usr/bin/env python3
"""WAL frames a commit writes, for the POST scenario's write pattern, by table layout.

    wal_frames.py [ROWS] [--random]
    wal_frames.py [ROWS] --reads

Grows a scratch SQLite database (Python's sqlite3, 4 KiB pages, WAL, no checkpoints while it
measures) to ROWS comments (default 400000) in commits of 28 rows, the batch size comments'
writer reaches under `bench/wrk/post.lua`, then counts how far the WAL grows over 2400 more
commits (several moves of the two-level layout). Content ids go round-robin over 1000 items as
in post.lua, or at random with --random. With --reads it times instead what the write-friendly
coarse-id index costs a read: the first page of 20 comments of an item, in memory, against
today's index.

Not part of the harness: it shows why POST slows as the database grows (bench/README.md, "Tried
at stop 21") and what other layouts would write instead. Its figures for today's index and for
no index match what `perf stat` counted in the server (2.67 and 0.25 pwrites a row, two per
frame).
"""
import os
import random
import sqlite3
import sys
import tempfile
import time

ROWS = int(next((a for a in sys.argv[1:] if a.isdigit()), 400_000))
RANDOM = "--random" in sys.argv[1:]
BATCH, MEASURE, ITEMS = 28, 2400, 1000
FRAME = 4096 + 24  # a page and its frame header

NO_INDEX = """
CREATE TABLE comments (id INTEGER PRIMARY KEY AUTOINCREMENT, content_id TEXT NOT NULL,
    email TEXT NOT NULL, comment BLOB NOT NULL, created_at INTEGER NOT NULL);
"""
# Today's layout (migrations/sqlite/0001_create_comments.sql).
CURRENT = NO_INDEX + "CREATE INDEX comments_by_content ON comments (content_id, id);"


def coarse_id(bits):
    """The index led by a coarse id (an "epoch" of 2^bits ids): new entries land in the newest
    epoch's few leaves, but a list read needs one index seek per epoch of the whole table."""
    return NO_INDEX + f"CREATE INDEX comments_by_content ON comments (id >> {bits}, content_id, id);"


# No index: each item's comments linked oldest to newest (next_id), its ends in a small table. An
# insert updates the item's previous newest row, which may sit anywhere in the table's tail.
CHAIN = """
CREATE TABLE comments (id INTEGER PRIMARY KEY AUTOINCREMENT, content_id TEXT NOT NULL,
    email TEXT NOT NULL, comment BLOB NOT NULL, created_at INTEGER NOT NULL, next_id INTEGER);
CREATE TABLE content_ends (content_id TEXT PRIMARY KEY, first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL) WITHOUT ROWID;
"""
# Two partial indexes over one table: new rows go into a small one (moved = 0), and once it holds
# move_at rows they are all moved into the large one by one UPDATE, which dirties each leaf of the
# large index once per move instead of once per commit. Reads would query both.
TWO_LEVEL = """
CREATE TABLE comments (id INTEGER PRIMARY KEY AUTOINCREMENT, content_id TEXT NOT NULL,
    email TEXT NOT NULL, comment BLOB NOT NULL, created_at INTEGER NOT NULL, moved INTEGER NOT NULL);
CREATE INDEX comments_by_content ON comments (content_id, id) WHERE moved = 1;
CREATE INDEX comments_recent_by_content ON comments (content_id, id) WHERE moved = 0;
"""


def comment_row(n, item):
    return (str(100000 + item), "bench@example.com", b"bench comment %d" % n, 0)


def insert_plain(db, rows):
    db.executemany(
        "INSERT INTO comments (content_id, email, comment, created_at) VALUES (?, ?, ?, ?)", rows)


def insert_chain(db, rows):
    for row in rows:
        new = db.execute(
            "INSERT INTO comments (content_id, email, comment, created_at) VALUES (?, ?, ?, ?)",
            row).lastrowid
        end = db.execute("SELECT last_id FROM content_ends WHERE content_id = ?", (row[0],)).fetchone()
        if end:
            db.execute("UPDATE comments SET next_id = ? WHERE id = ?", (new, end[0]))
            db.execute("UPDATE content_ends SET last_id = ? WHERE content_id = ?", (new, row[0]))
        else:
            db.execute("INSERT INTO content_ends VALUES (?, ?, ?)", (row[0], new, new))


def insert_two_level(move_at):
    unmoved = 0

    def insert(db, rows):
        nonlocal unmoved
        db.executemany(
            "INSERT INTO comments (content_id, email, comment, created_at, moved) VALUES (?, ?, ?, ?, 0)",
            rows)
        unmoved += len(rows)
        if unmoved >= move_at:
            db.execute("UPDATE comments SET moved = 1 WHERE moved = 0")
            unmoved = 0
    return insert


def frames_per_row(schema, insert):
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(dir="/tmp") as work:
        path = os.path.join(work, "comments.db")
        db = sqlite3.connect(path, isolation_level=None)
        for pragma in ("page_size=4096", "journal_mode=WAL", "synchronous=OFF", "wal_autocheckpoint=0"):
            db.execute(f"PRAGMA {pragma}")
        db.executescript(schema)
        written = 0

        def commit():
            nonlocal written
            rows = [comment_row(n, rng.randrange(ITEMS) if RANDOM else n % ITEMS)
                    for n in range(written, written + BATCH)]
            written += BATCH
            db.execute("BEGIN IMMEDIATE")
            insert(db, rows)
            db.execute("COMMIT")

        while written < ROWS:
            commit()
            if written % 50_000 < BATCH:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        wal = path + "-wal"
        start = max(os.path.getsize(wal), 32)  # 32: the WAL header
        for _ in range(MEASURE):
            commit()
        frames = (os.path.getsize(wal) - start) / FRAME
        db.close()
        return frames / (MEASURE * BATCH)


FIRST_PAGE = "SELECT email, comment FROM comments WHERE content_id = ? ORDER BY id LIMIT 20"
# The coarse-id index can serve an item's list only epoch by epoch (4096 ids each).
FIRST_PAGE_BY_EPOCH = """
WITH RECURSIVE epoch(n) AS (
    SELECT 0 UNION ALL SELECT n + 1 FROM epoch WHERE n < (SELECT max(id) >> 12 FROM comments))
SELECT c.email, c.comment FROM epoch JOIN comments c ON (c.id >> 12) = epoch.n AND c.content_id = ?
ORDER BY epoch.n, c.id LIMIT 20"""


def time_reads():
    print(f"{ROWS} rows over {ITEMS} items, first page of 20 comments of an item (in memory)")
    for name, schema, query in (
        ("(content_id, id) index (now)", CURRENT, FIRST_PAGE),
        ("(id >> 12, content_id, id) index", coarse_id(12), FIRST_PAGE_BY_EPOCH),
    ):
        db = sqlite3.connect(":memory:", isolation_level=None)
        db.executescript(schema)
        db.execute("BEGIN")
        insert_plain(db, [comment_row(n, n % ITEMS) for n in range(ROWS)])
        db.execute("COMMIT")
        plan = " ".join(row[-1] for row in db.execute("EXPLAIN QUERY PLAN " + query, ("100500",)))
        assert "USING INDEX comments_by_content" in plan, plan  # not a scan of the table
        assert len(db.execute(query, ("100500",)).fetchall()) == 20
        reads = 2000
        start = time.perf_counter()
        for i in range(reads):
            db.execute(query, (str(100000 + i % ITEMS),)).fetchall()
        took = (time.perf_counter() - start) / reads
        print(f"  {name:40s} {took * 1e6:.0f} us a read")


def main():
    if "--reads" in sys.argv[1:]:
        time_reads()
        return
    pattern = "at random" if RANDOM else "round-robin"
    print(f"{ROWS} rows grown, then {MEASURE} commits of {BATCH} rows over {ITEMS} items ({pattern})")
    for name, schema, insert in (
        ("no index (the floor; reads would scan)", NO_INDEX, insert_plain),
        ("(content_id, id) index (now)", CURRENT, insert_plain),
        ("(id >> 12, content_id, id) index", coarse_id(12), insert_plain),
        ("(id >> 16, content_id, id) index", coarse_id(16), insert_plain),
        ("linked per item, no index", CHAIN, insert_chain),
        ("two partial indexes, move at 4096", TWO_LEVEL, insert_two_level(4096)),
        ("two partial indexes, move at 16384", TWO_LEVEL, insert_two_level(16384)),
    ):
        print(f"  {name:40s} {frames_per_row(schema, insert):.2f} WAL frames a row")


if __name__ == "__main__":
    main()

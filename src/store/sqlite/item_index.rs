//! Keeps `comments_by_item`, the `(content_id, id)` index, filled in item order (migration 0002).
//!
//! A B-tree index on `(content_id, id)` takes each new comment at a random place: with writes
//! spread over many items, every comment of a commit changed an index page of its own, 4 KiB
//! written to the WAL and copied back later for a 16-byte entry (1.3 pages per comment once the
//! database had grown; bench/README.md). So a new comment is indexed only by epoch at first
//! (`comments_by_epoch`, `(id >> 10, content_id, id)`, where the entries of a commit share the
//! last few pages), and the writer adds it to `comments_by_item` later, in bulk, a cycle at a time:
//!
//! 1. The writer notes each comment it commits, by item ([`ItemIndex::created`]).
//! 2. Once [`MOVE_AT`] comments are noted (or the writer has waited [`IDLE_AFTER`] for writes
//!    with any), it takes them as a cycle, in `(content_id, id)` order, and adds them to
//!    `comments_by_item` a slice of [`SLICE`] entries at a time, between batches. Consecutive
//!    slices cover consecutive items, so each page of the index changes about once a cycle
//!    instead of once for every comment on it.
//! 3. After the last slice, it moves the mark (`comments_by_item_upto`) to the cycle's largest id.
//!
//! A list reads `comments_by_item`, and `comments_by_epoch` past the mark, skipping what a slice
//! has already added (`select_page`). Each step is a statement of its own after which that read
//! is exact, so a crash anywhere loses nothing: a restart notes again every comment past the
//! mark, and `INSERT OR IGNORE` skips what the slices before the crash added.
//!
//! The mark never passes a comment that is not in the cycle: this writer is the only one (as the
//! read cache already assumes: only this service writes the database while it runs), so every
//! comment with an id up to the cycle's largest was noted before the cycle began.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, Instant};

use sqlx::sqlite::SqliteConnection;

use crate::domain::{Comment, ContentId};
use crate::store::StoreError;

/// How many comments past the mark start a cycle. Every cycle changes about one page of
/// `comments_by_item` for each item that had comments in it, however many, so the larger the
/// cycle the fewer pages a comment costs; but until its cycle ends, a list reads a comment
/// through `comments_by_epoch`, one index seek per 1024 ids past the mark.
pub const MOVE_AT: usize = 16_384;

/// Entries one statement adds to `comments_by_item`, so that a slice covers several items'
/// comments. A slice holds the writer about 1.3 ms under the bench's POST flood (median; 2.4 ms
/// for 1024), most of it the statement's own commit and round trip; 1024 was no better for
/// req/s or p99 (bench/README.md, stop 25), and the writes queued behind a slice wait less.
const SLICE: usize = 256;

/// Under steady writes, a slice is added for every `SLICE / SLICES_AHEAD` comments committed,
/// so a cycle is done in half the time its comments took to come in.
const SLICES_AHEAD: usize = 2;

/// With fewer than [`MOVE_AT`] comments past the mark, how long without writes before the
/// writer moves them anyway, so that a quiet service keeps its lists on the one index.
const IDLE_AFTER: Duration = Duration::from_secs(1);

/// After a failed step, how long before the next: the lists stay exact meanwhile, only the reads
/// past the mark get slower.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(10);

pub struct ItemIndex {
    move_at: usize,
    /// Every comment with an id up to this one is in `comments_by_item`.
    upto: i64,
    /// The comments past the mark that no cycle has taken yet, by item, and how many.
    noted: BTreeMap<ContentId, Vec<i64>>,
    noted_count: usize,
    /// The largest id noted.
    newest: i64,
    created_since_slice: usize,
    /// The cycle under way.
    cycle: Option<Cycle>,
    paused_until: Option<Instant>,
}

/// The comments of one cycle, in `(content_id, id)` order.
struct Cycle {
    ids: Vec<i64>,
    /// How many of `ids` are in `comments_by_item` already.
    moved: usize,
    /// Where the mark goes once all are.
    upto: i64,
}

impl ItemIndex {
    /// Reads the mark and notes every comment past it; `move_at` is [`MOVE_AT`] but in tests.
    pub async fn load(conn: &mut SqliteConnection, move_at: usize) -> Result<Self, StoreError> {
        let upto: i64 = sqlx::query_scalar("SELECT id FROM comments_by_item_upto")
            .fetch_one(&mut *conn)
            .await?;
        let past_mark: Vec<(String, i64)> =
            sqlx::query_as("SELECT content_id, id FROM comments WHERE id > ?1 ORDER BY id")
                .bind(upto)
                .fetch_all(&mut *conn)
                .await?;
        let mut index = Self {
            move_at,
            upto,
            noted: BTreeMap::new(),
            noted_count: 0,
            newest: upto,
            created_since_slice: 0,
            cycle: None,
            paused_until: None,
        };
        for (content_id, id) in past_mark {
            let content_id = ContentId::parse(&content_id).map_err(|_| {
                StoreError::Unavailable(format!("comment {id} has a corrupt content_id"))
            })?;
            index.note(&content_id, id);
        }
        Ok(index)
    }

    /// The writer committed these comments.
    pub fn created(&mut self, comments: &[Comment]) {
        for comment in comments {
            self.note(&comment.content_id, comment.id.get());
        }
        self.created_since_slice += comments.len();
    }

    fn note(&mut self, content_id: &ContentId, id: i64) {
        match self.noted.get_mut(content_id) {
            Some(ids) => ids.push(id),
            None => {
                self.noted.insert(content_id.clone(), vec![id]);
            }
        }
        self.noted_count += 1;
        self.newest = self.newest.max(id);
    }

    /// How long the writer may wait for writes before it should call [`Self::step`] with
    /// `idle`; `None`: as long as it likes.
    pub fn idle_wait(&self) -> Option<Duration> {
        if let Some(until) = self.paused_until {
            return Some(until.saturating_duration_since(Instant::now()));
        }
        match self.cycle {
            Some(_) => Some(Duration::ZERO),
            None if self.noted_count > 0 => Some(IDLE_AFTER),
            None => None,
        }
    }

    /// Takes the next step, if one is due: called by the writer between batches, with `idle`
    /// when no write came within [`Self::idle_wait`]. Returns whether it committed anything.
    pub async fn step(&mut self, conn: &mut SqliteConnection, idle: bool) -> bool {
        if let Some(until) = self.paused_until {
            if Instant::now() < until {
                return false;
            }
            self.paused_until = None;
        }
        let Some(cycle) = &mut self.cycle else {
            if self.noted_count >= self.move_at || (idle && self.noted_count > 0) {
                self.cycle = Some(self.take_cycle());
            }
            return false;
        };
        if !idle && self.created_since_slice < SLICE / SLICES_AHEAD {
            return false;
        }
        self.created_since_slice = 0;
        let started = Instant::now();
        let outcome = move_slice(conn, cycle).await;
        tracing::debug!(
            idle,
            moved = cycle.moved,
            of = cycle.ids.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "comments_by_item: a slice added"
        );
        match outcome {
            Ok(true) => {
                self.upto = cycle.upto;
                self.cycle = None;
            }
            Ok(false) => {}
            // The cycle stays as it was: the next step adds the same slice again.
            Err(err) => self.failed(&err),
        }
        true
    }

    /// Everything noted, in `(content_id, id)` order.
    fn take_cycle(&mut self) -> Cycle {
        let mut ids = Vec::with_capacity(self.noted_count);
        for (_, item_ids) in std::mem::take(&mut self.noted) {
            ids.extend(item_ids);
        }
        self.noted_count = 0;
        Cycle {
            ids,
            moved: 0,
            upto: self.newest,
        }
    }

    fn failed(&mut self, err: &StoreError) {
        tracing::warn!(
            error = %err,
            retry_in_s = PAUSE_AFTER_FAILURE.as_secs(),
            "adding comments to comments_by_item failed"
        );
        self.paused_until = Some(Instant::now() + PAUSE_AFTER_FAILURE);
    }
}

/// Adds the next slice of `cycle` to `comments_by_item`, and moves the mark after the last.
/// Returns whether the cycle is done. The join skips comments deleted since they were noted (their
/// trigger ran before they were added).
async fn move_slice(conn: &mut SqliteConnection, cycle: &mut Cycle) -> Result<bool, StoreError> {
    let slice = &cycle.ids[cycle.moved..cycle.ids.len().min(cycle.moved + SLICE)];
    if !slice.is_empty() {
        sqlx::query(
            "INSERT OR IGNORE INTO comments_by_item (content_id, id) \
             SELECT c.content_id, c.id FROM json_each(?1) AS j CROSS JOIN comments AS c \
             ON c.id = j.value",
        )
        .bind(json_array(slice))
        .execute(&mut *conn)
        .await?;
        cycle.moved += slice.len();
    }
    if cycle.moved < cycle.ids.len() {
        return Ok(false);
    }
    sqlx::query("UPDATE comments_by_item_upto SET id = ?1")
        .bind(cycle.upto)
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

fn json_array(ids: &[i64]) -> String {
    let mut json = String::with_capacity(ids.len() * 8 + 2);
    json.push('[');
    for (n, id) in ids.iter().enumerate() {
        if n > 0 {
            json.push(',');
        }
        let _ = write!(json, "{id}");
    }
    json.push(']');
    json
}

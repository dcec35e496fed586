//! The embedded store: one SQLite file in WAL mode, for a single replica.
//!
//! Reads go through a small pool of read-only connections (WAL lets them run beside the writer),
//! behind a cache of recently read items that the writer keeps current ([`super::list_cache`]).
//! Writes go through one writer task that owns the only write connection and commits whatever
//! writes have queued up as one transaction: one fsync acknowledges a whole batch (group commit).
//! A request's write is answered only after the batch holding it has committed. A checkpointer
//! beside it copies the WAL back into the database file, so that no batch waits for that
//! ([`checkpointer`]).
//!
//! An item's comments are found through `comments_by_item`, an index the writer fills in bulk
//! between batches, and for the newest comments not in it yet through `comments_by_epoch`
//! ([`item_index`]).
//!
//! Timeouts keep that exact: a write that waits in the queue past its deadline is dropped
//! unapplied and answered with a timeout, but once a batch has taken it the request waits for the
//! commit (bounded by SQLite's busy timeout and the disk), so a 503 never hides a stored comment.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, FromRow, SqliteExecutor};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

mod checkpointer;
mod item_index;

use checkpointer::Checkpointer;
use item_index::ItemIndex;

use super::list_cache::{ListCache, MAX_COMMENTS_PER_ITEM};
use super::{
    CommentStore, Created, IDEMPOTENCY_KEY_TTL, ItemComments, Listing, StoreError, StoreOptions,
    now_micros,
};
use crate::domain::{Comment, CommentId, ContentId, IdempotencyKey, NewComment, Page};

/// Most writes one transaction takes. Large enough that a burst commits in a few fsyncs, small
/// enough that one batch never holds the write lock for long.
const MAX_BATCH: usize = 256;

/// How many writes may wait for the writer before senders are pushed back.
const QUEUE_DEPTH: usize = 4096;

/// Consecutive creates without an idempotency key are stored with one multi-row INSERT of up to
/// this many rows. sqlx runs each SQLite statement on the connection's own thread, so a
/// statement per comment cost two thread switches per write: a third of a POST's CPU (perf).
const ROWS_PER_INSERT: usize = 64;

/// SQLite's own autocheckpoint, left on for the writer only as a backstop: the checkpointer
/// ([`checkpointer`]) keeps the WAL near [`checkpointer::RESET_AT_FRAMES`], so this fires only if
/// it stops doing so (its passes failing). Why the checkpoints are rare and large at all: a
/// checkpoint writes each changed page once however often it changed, and new comments on many
/// items change many index pages: with SQLite's default of 1000 pages the bench's POSTs (1000
/// items) cost 7.5-8.0 syscalls each, with 16000 6.4-6.5 (`perf stat`): +19-45% POST req/s once
/// the database has grown. See bench/README.md.
const WAL_BACKSTOP_PAGES: i64 = 4 * checkpointer::RESET_AT_FRAMES;

/// SQLite `synchronous` for the write connection: the durability/speed trade-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Synchronous {
    /// fsync the WAL at every commit: an acknowledged write survives power loss (default).
    Full,
    /// fsync only at checkpoints: survives a process crash, but the last commits before a power
    /// loss or kernel crash can be lost. Faster on slow disks.
    Normal,
}

impl From<Synchronous> for SqliteSynchronous {
    fn from(level: Synchronous) -> Self {
        match level {
            Synchronous::Full => SqliteSynchronous::Full,
            Synchronous::Normal => SqliteSynchronous::Normal,
        }
    }
}

pub struct SqliteStore {
    readers: SqlitePool,
    writer: mpsc::Sender<Queued>,
    cache: Arc<ListCache>,
    timeout: Duration,
}

/// A write waiting for the writer, and when its request stops waiting for it.
struct Queued {
    op: WriteOp,
    deadline: Instant,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum WriteOp {
    Create {
        new: NewComment,
        key: Option<IdempotencyKey>,
        reply: Reply<Created>,
    },
    Delete {
        id: CommentId,
        reply: Reply<bool>,
    },
    PurgeKeys {
        reply: Reply<u64>,
    },
    /// Everything queued before this is committed, then the writer closes its connection.
    Close {
        done: oneshot::Sender<()>,
    },
}

impl SqliteStore {
    pub async fn open(options: &StoreOptions) -> Result<Self, StoreError> {
        Self::open_with(options, item_index::MOVE_AT).await
    }

    /// [`Self::open`] with a cycle of `move_at` comments for `comments_by_item` ([`item_index`]).
    async fn open_with(options: &StoreOptions, move_at: usize) -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::from_str(&options.url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(options.sqlite_synchronous.into())
            .foreign_keys(true)
            // Another process holding the lock (a backup, a sqlite3 shell) fails a batch after
            // this long instead of stalling every write behind it.
            .busy_timeout(options.timeout)
            .pragma("wal_autocheckpoint", WAL_BACKSTOP_PAGES.to_string());
        if let Some(dir) = connect.get_filename().parent() {
            create_dir(dir)?;
        }

        let mut writer = SqliteConnection::connect_with(&connect).await?;
        sqlx::migrate!("migrations/sqlite").run(&mut writer).await?;
        let database = std::fs::File::open(connect.get_filename()).map_err(|err| {
            StoreError::Unavailable(format!(
                "cannot open {}: {err}",
                connect.get_filename().display()
            ))
        })?;
        let checkpointer = Checkpointer::spawn(
            SqliteConnection::connect_with(&connect).await?,
            database,
            checkpointer::RESET_AT_FRAMES,
        );

        let readers = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.timeout)
            .connect_with(connect.read_only(true))
            .await?;

        let item_index = ItemIndex::load(&mut writer, move_at).await?;

        let (sender, receiver) = mpsc::channel(QUEUE_DEPTH);
        let cache = Arc::new(ListCache::default());
        let writer = Writer {
            conn: writer,
            cache: cache.clone(),
            checkpointer,
            item_index,
        };
        tokio::spawn(writer.run(receiver));
        Ok(Self {
            readers,
            writer: sender,
            cache,
            timeout: options.timeout,
        })
    }

    /// Queues a write and waits until the batch holding it has committed (or failed).
    async fn write<T>(&self, op: impl FnOnce(Reply<T>) -> WriteOp) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            op: op(reply),
            deadline: Instant::now() + self.timeout,
        };
        match tokio::time::timeout(self.timeout, self.writer.send(queued)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(closed()),
            Err(_) => return Err(StoreError::TimedOut("the write queue stayed full".into())),
        }
        // No timeout here: the writer either drops the write unapplied at its deadline or
        // commits it, and either way says so.
        answer.await.map_err(|_| closed())?
    }

    async fn read<T>(
        &self,
        what: &str,
        query: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        super::within(self.timeout, what, query).await
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the SQLite writer has stopped".into())
}

fn create_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|err| {
        StoreError::Unavailable(format!("cannot create directory {}: {err}", dir.display()))
    })
}

#[async_trait]
impl CommentStore for SqliteStore {
    async fn create(
        &self,
        new: NewComment,
        key: Option<IdempotencyKey>,
    ) -> Result<Created, StoreError> {
        self.write(|reply| WriteOp::Create { new, key, reply })
            .await
    }

    async fn list(&self, content_id: &ContentId, page: Page) -> Result<Listing, StoreError> {
        if let Some(all) = self.cache.get(content_id) {
            return Ok(Listing::window(all, page));
        }
        // Read the whole item (if it is short enough to cache) and keep it for the next reads.
        let generation = self.cache.generation();
        let whole = Page {
            after: None,
            limit: Some(MAX_COMMENTS_PER_ITEM as u32 + 1),
        };
        let all = self
            .read("list", select_page(&self.readers, content_id, whole))
            .await?;
        if all.len() <= MAX_COMMENTS_PER_ITEM {
            let all = Arc::new(ItemComments::from(all));
            self.cache.fill(content_id.clone(), all.clone(), generation);
            return Ok(Listing::window(all, page));
        }
        let rows = self
            .read("list", select_page(&self.readers, content_id, page))
            .await?;
        Ok(Listing::from(rows))
    }

    async fn get(&self, id: CommentId) -> Result<Option<Comment>, StoreError> {
        self.read("get", fetch_comment(&self.readers, id)).await
    }

    async fn delete(&self, id: CommentId) -> Result<bool, StoreError> {
        self.write(|reply| WriteOp::Delete { id, reply }).await
    }

    async fn purge_expired_keys(&self) -> Result<u64, StoreError> {
        self.write(|reply| WriteOp::PurgeKeys { reply }).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.writer.is_closed() {
            return Err(closed());
        }
        self.read("ping", async {
            sqlx::query("SELECT 1").execute(&self.readers).await?;
            Ok(())
        })
        .await
    }

    async fn close(&self) {
        // Readers first: the last connection to close checkpoints the WAL into the database
        // file and removes it, and only the writer can.
        self.readers.close().await;
        let (done, closed) = oneshot::channel();
        let close = Queued {
            op: WriteOp::Close { done },
            // Closing has no deadline: the writer handles it whenever it comes.
            deadline: Instant::now(),
        };
        if self.writer.send(close).await.is_ok() {
            let _ = closed.await;
        }
    }
}

/// The writer task's state: the only write connection, and what it keeps up to date besides the
/// comments.
struct Writer {
    conn: SqliteConnection,
    cache: Arc<ListCache>,
    checkpointer: Checkpointer,
    item_index: ItemIndex,
}

impl Writer {
    /// Takes whatever has queued, commits it as one transaction, updates the read cache, then
    /// answers. Between batches, and whenever no write comes, it keeps `comments_by_item` filled.
    async fn run(mut self, mut queue: mpsc::Receiver<Queued>) {
        let mut taken = Vec::with_capacity(MAX_BATCH);
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let received = match self.item_index.idle_wait() {
                None => queue.recv_many(&mut taken, MAX_BATCH).await,
                Some(wait) => {
                    let writes = queue.recv_many(&mut taken, MAX_BATCH);
                    match tokio::time::timeout(wait, writes).await {
                        Ok(received) => received,
                        Err(_) => {
                            if self.item_index.step(&mut self.conn, true).await {
                                self.checkpointer.committed();
                            }
                            continue;
                        }
                    }
                }
            };
            if received == 0 {
                return; // every sender is gone; Close has not come, so nobody waits for it
            }
            top_up(&mut queue, &mut taken).await;
            let now = Instant::now();
            let mut close = None;
            for Queued { op, deadline } in taken.drain(..) {
                match op {
                    WriteOp::Close { .. } => close = Some(op),
                    op if close.is_some() => fail(op, closed()),
                    // Its request has stopped waiting: drop it unapplied, and say so.
                    op if deadline <= now => fail(op, StoreError::TimedOut(NOT_APPLIED.into())),
                    op => batch.push(op),
                }
            }
            if !batch.is_empty() {
                self.commit_batch(&mut batch).await;
                self.checkpointer.committed();
            }
            if self.item_index.step(&mut self.conn, false).await {
                self.checkpointer.committed();
            }
            if self.checkpointer.finish_due() {
                // Between batches, with every write answered: the checkpointer has copied back
                // all but what was committed during its pass, so this copies a few batches'
                // pages, and with nothing committed meanwhile the next write can restart the WAL.
                if let Err(err) = checkpointer::checkpoint(&mut self.conn).await {
                    tracing::warn!(error = %err, "WAL checkpoint by the writer failed");
                }
            }
            if let Some(WriteOp::Close { done }) = close {
                queue.close();
                // Writes queued after the close are refused rather than left hanging.
                while let Some(queued) = queue.recv().await {
                    fail(queued.op, closed());
                }
                self.checkpointer.stop().await;
                let _ = self.conn.close().await;
                let _ = done.send(());
                return;
            }
        }
    }

    /// Applies every op in one transaction. Replies go out only after the commit; if anything fails,
    /// the whole batch rolls back and every op in it is told so (none of them was committed).
    async fn commit_batch(&mut self, batch: &mut Vec<WriteOp>) {
        let conn = &mut self.conn;
        let outcome = async {
            let created = |comments: Vec<Comment>| {
                comments
                    .into_iter()
                    .map(|comment| Applied::Created(Ok(Created::New(comment))))
            };
            // The common batch, a few plain creates, is one INSERT: a statement is a transaction of
            // its own, so BEGIN and COMMIT would only be two more round trips to sqlx's thread.
            let first_insert = leading_plain_creates(batch);
            if first_insert.len() == batch.len() {
                return Ok(created(insert_comments(&mut *conn, &first_insert).await?).collect());
            }
            let mut tx = conn.begin().await?;
            let mut results = Vec::with_capacity(batch.len());
            while results.len() < batch.len() {
                let plain = leading_plain_creates(&batch[results.len()..]);
                if plain.is_empty() {
                    results.push(apply(&mut tx, &batch[results.len()]).await?);
                } else {
                    results.extend(created(insert_comments(&mut tx, &plain).await?));
                }
            }
            tx.commit().await?;
            Ok::<_, StoreError>(results)
        }
        .await;

        match outcome {
            Ok(results) => {
                // The cache learns of the commit before anyone hears of it: read-your-writes.
                let created: Vec<Comment> = results
                    .iter()
                    .filter_map(|applied| match applied {
                        Applied::Created(Ok(Created::New(comment))) => Some(comment.clone()),
                        _ => None,
                    })
                    .collect();
                self.cache.committed(&created);
                for applied in &results {
                    if let Applied::Deleted(Some(item)) = applied {
                        self.cache.deleted(item);
                    }
                }
                self.item_index.created(&created);
                for (op, result) in batch.drain(..).zip(results) {
                    answer(op, result);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, writes = batch.len(), "SQLite batch rolled back");
                for op in batch.drain(..) {
                    fail(op, err.clone());
                }
            }
        }
    }
}

/// Lets the handlers that are already runnable queue their writes before the batch is taken.
/// The writer wakes for the first write; on a busy core the requests behind it are parsed but not
/// yet queued, so without this each commit took one or two rows (the bench's 90/10 mix), and each
/// commit's fsync costs CPU whatever its size: SQLite's thread used 85 µs per mix POST then, 35
/// µs with this (`/proc/PID/task/*/schedstat`). A yield costs nothing when nothing else is
/// runnable.
async fn top_up(queue: &mut mpsc::Receiver<Queued>, taken: &mut Vec<Queued>) {
    if taken.len() >= MAX_BATCH {
        return;
    }
    tokio::task::yield_now().await;
    while taken.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(queued) => taken.push(queued),
            Err(_) => break,
        }
    }
}

const NOT_APPLIED: &str = "the write waited in the queue past its deadline and was not applied";

/// What one op did inside the transaction, held until the commit succeeds.
enum Applied {
    Created(Result<Created, StoreError>),
    /// The item the deleted comment was on, if there was one.
    Deleted(Option<ContentId>),
    Purged(u64),
    Nothing,
}

async fn apply(conn: &mut SqliteConnection, op: &WriteOp) -> Result<Applied, StoreError> {
    Ok(match op {
        WriteOp::Create { new, key, .. } => {
            Applied::Created(create(conn, new, key.as_ref()).await?)
        }
        WriteOp::Delete { id, .. } => {
            let item: Option<String> =
                sqlx::query_scalar("DELETE FROM comments WHERE id = ?1 RETURNING content_id")
                    .bind(id.get())
                    .fetch_optional(&mut *conn)
                    .await?;
            Applied::Deleted(item.and_then(|item| ContentId::parse(&item).ok()))
        }
        WriteOp::PurgeKeys { .. } => {
            let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?1")
                .bind(key_expiry_cutoff())
                .execute(&mut *conn)
                .await?;
            Applied::Purged(done.rows_affected())
        }
        WriteOp::Close { .. } => Applied::Nothing,
    })
}

/// The plain creates at the front of `ops`, as many as one INSERT takes.
fn leading_plain_creates(ops: &[WriteOp]) -> Vec<&NewComment> {
    ops.iter()
        .map_while(plain_create)
        .take(ROWS_PER_INSERT)
        .collect()
}

/// A create that needs no idempotency bookkeeping: it can share an INSERT with its neighbours.
fn plain_create(op: &WriteOp) -> Option<&NewComment> {
    match op {
        WriteOp::Create { new, key: None, .. } => Some(new),
        _ => None,
    }
}

/// Stores `news` with one INSERT and returns them as stored, in the same order.
async fn insert_comments(
    conn: &mut SqliteConnection,
    news: &[&NewComment],
) -> Result<Vec<Comment>, StoreError> {
    let created_at = now_micros();
    let micros = to_micros(created_at);
    let mut sql =
        String::from("INSERT INTO comments (content_id, email, comment, created_at) VALUES ");
    for row in 0..news.len() {
        sql.push_str(if row == 0 {
            "(?, ?, ?, ?)"
        } else {
            ", (?, ?, ?, ?)"
        });
    }
    // Only placeholders are spliced in; every value is bound.
    let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
    for new in news {
        insert = insert
            .bind(new.content_id.as_str())
            .bind(new.email.as_str())
            .bind(new.comment.as_str().as_bytes())
            .bind(micros);
    }
    // The rows of one INSERT get consecutive ids in the order of VALUES: the statement holds the
    // write lock throughout and AUTOINCREMENT gives each row the largest id so far plus one. So
    // the last id names them all, without RETURNING sending each row back across sqlx's thread
    // (a wake-up per row).
    let done = insert.execute(&mut *conn).await?;
    if done.rows_affected() != news.len() as u64 {
        return Err(StoreError::Unavailable(format!(
            "INSERT of {} comments stored {}",
            news.len(),
            done.rows_affected()
        )));
    }
    // At most ROWS_PER_INSERT rows, so the count fits any integer type.
    let first = done.last_insert_rowid() - news.len() as i64 + 1;
    Ok((first..)
        .zip(news)
        .map(|(id, new)| Comment {
            id: CommentId::from_stored(id),
            content_id: new.content_id.clone(),
            email: new.email.as_str().to_owned(),
            comment: new.comment.as_str().to_owned(),
            created_at,
        })
        .collect())
}

/// The outer error fails the batch (the database broke); the inner one is this request's answer.
async fn create(
    conn: &mut SqliteConnection,
    new: &NewComment,
    key: Option<&IdempotencyKey>,
) -> Result<Result<Created, StoreError>, StoreError> {
    if let Some(key) = key {
        let earlier: Option<i64> = sqlx::query_scalar(
            "SELECT comment_id FROM idempotency_keys WHERE key = ?1 AND created_at >= ?2",
        )
        .bind(key.as_str())
        .bind(key_expiry_cutoff())
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(id) = earlier {
            return Ok(
                match fetch_comment(&mut *conn, CommentId::from_stored(id)).await? {
                    Some(first) if first.matches(new) => Ok(Created::Replayed(first)),
                    _ => Err(StoreError::KeyReused),
                },
            );
        }
    }

    let created_at = now_micros();
    let row: Row = sqlx::query_as(
        "INSERT INTO comments (content_id, email, comment, created_at) VALUES (?1, ?2, ?3, ?4) \
         RETURNING id, content_id, email, comment, created_at",
    )
    .bind(new.content_id.as_str())
    .bind(new.email.as_str())
    .bind(new.comment.as_str().as_bytes())
    .bind(to_micros(created_at))
    .fetch_one(&mut *conn)
    .await?;

    if let Some(key) = key {
        sqlx::query(
            "INSERT INTO idempotency_keys (key, comment_id, created_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (key) DO UPDATE SET comment_id = excluded.comment_id, \
             created_at = excluded.created_at",
        )
        .bind(key.as_str())
        .bind(row.id)
        .bind(to_micros(created_at))
        .execute(&mut *conn)
        .await?;
    }
    Ok(Ok(Created::New(row.into_comment()?)))
}

fn answer(op: WriteOp, applied: Applied) {
    match (op, applied) {
        (WriteOp::Create { reply, .. }, Applied::Created(result)) => {
            let _ = reply.send(result);
        }
        (WriteOp::Delete { reply, .. }, Applied::Deleted(item)) => {
            let _ = reply.send(Ok(item.is_some()));
        }
        (WriteOp::PurgeKeys { reply }, Applied::Purged(count)) => {
            let _ = reply.send(Ok(count));
        }
        (op, _) => fail(
            op,
            StoreError::Unavailable("writer bookkeeping mismatch".into()),
        ),
    }
}

fn fail(op: WriteOp, err: StoreError) {
    match op {
        WriteOp::Create { reply, .. } => drop(reply.send(Err(err))),
        WriteOp::Delete { reply, .. } => drop(reply.send(Err(err))),
        WriteOp::PurgeKeys { reply } => drop(reply.send(Err(err))),
        WriteOp::Close { done } => drop(done.send(())),
    }
}

/// [`select_page`]'s query: ?1 the item, ?2 the cursor (0 for the first page), ?3 the limit (-1
/// for none).
const SELECT_PAGE: &str = "WITH upto (id) AS (SELECT id FROM comments_by_item_upto), \
         epoch (n) AS ( \
             SELECT max(?2, (SELECT id FROM upto)) >> 10 \
             UNION ALL SELECT n + 1 FROM epoch \
             WHERE n < (SELECT coalesce(max(id), 0) FROM comments) >> 10) \
         SELECT * FROM ( \
             SELECT * FROM ( \
                 SELECT c.id, c.content_id, c.email, c.comment, c.created_at \
                 FROM comments_by_item AS i CROSS JOIN comments AS c ON c.id = i.id \
                 WHERE i.content_id = ?1 AND i.id > ?2 ORDER BY i.id LIMIT ?3) \
             UNION ALL \
             SELECT * FROM ( \
                 SELECT c.id, c.content_id, c.email, c.comment, c.created_at \
                 FROM epoch CROSS JOIN comments AS c ON (c.id >> 10) = epoch.n \
                 WHERE c.content_id = ?1 AND c.id > ?2 AND c.id > (SELECT id FROM upto) \
                 AND NOT EXISTS (SELECT 1 FROM comments_by_item AS moved \
                     WHERE moved.content_id = ?1 AND moved.id = c.id) \
                 ORDER BY c.id LIMIT ?3)) \
         ORDER BY id LIMIT ?3";

/// One page of an item, oldest first: the comments in `comments_by_item`, and those past the mark
/// that are not in it yet, through `comments_by_epoch` (one seek per 1024 ids from the mark, or
/// from the cursor if later, to the newest comment). One statement, so one snapshot: whatever a
/// step of the writer's [`item_index`] has done, each comment is read once. Each half is limited
/// before the merge, so a page of an item with many comments reads a page's worth of each.
/// CROSS JOIN keeps the epochs as the outer loop: left to itself the planner walks `comments` by
/// id through everything past the mark instead.
async fn select_page<'c>(
    executor: impl SqliteExecutor<'c>,
    content_id: &ContentId,
    page: Page,
) -> Result<Vec<Comment>, StoreError> {
    let rows: Vec<Row> = sqlx::query_as(SELECT_PAGE)
        .bind(content_id.as_str())
        .bind(page.after.map_or(0, CommentId::get))
        .bind(page.limit.map_or(-1, i64::from))
        .fetch_all(executor)
        .await?;
    rows.into_iter().map(Row::into_comment).collect()
}

async fn fetch_comment<'c>(
    executor: impl SqliteExecutor<'c>,
    id: CommentId,
) -> Result<Option<Comment>, StoreError> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT id, content_id, email, comment, created_at FROM comments WHERE id = ?1",
    )
    .bind(id.get())
    .fetch_optional(executor)
    .await?;
    row.map(Row::into_comment).transpose()
}

fn key_expiry_cutoff() -> i64 {
    to_micros(OffsetDateTime::now_utc() - IDEMPOTENCY_KEY_TTL)
}

fn to_micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

#[derive(FromRow)]
struct Row {
    id: i64,
    content_id: String,
    email: String,
    comment: Vec<u8>,
    created_at: i64,
}

impl Row {
    fn into_comment(self) -> Result<Comment, StoreError> {
        let Row {
            id,
            content_id,
            email,
            comment,
            created_at,
        } = self;
        let created_at =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(created_at) * 1000)
                .map_err(|_| StoreError::Unavailable("stored created_at is corrupt".into()))?;
        super::decode_comment(id, &content_id, email, comment, created_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checkpointer is wired in: with SQLite's own autocheckpoint far off (the backstop),
    /// comments reach the database file itself, not only the WAL, shortly after they commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_are_copied_back_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("c.db");
        let store = SqliteStore::open(&StoreOptions {
            url: format!("sqlite://{}", database.display()),
            max_connections: 1,
            timeout: Duration::from_secs(5),
            sqlite_synchronous: Synchronous::Full,
        })
        .await
        .unwrap();
        let migrated = std::fs::metadata(&database).unwrap().len();
        for n in 0..50 {
            let item = ContentId::parse(&format!("item-{n}")).unwrap();
            let new = NewComment::parse(item, "t@example.com".into(), "x".repeat(3000)).unwrap();
            store.create(new, None).await.unwrap();
        }
        let copied_back = async {
            while std::fs::metadata(&database).unwrap().len() < migrated + 50 * 3000 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), copied_back)
            .await
            .expect("the comments never reached the database file");
        store.close().await;
    }

    /// Batches of plain creates are one INSERT whose ids are derived from the last one: every
    /// id handed back must name the comment it was handed back for, also when creates with an
    /// idempotency key (which take the transaction path) are mixed in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_created_id_names_its_own_comment() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SqliteStore::open(&StoreOptions {
                url: format!("sqlite://{}/c.db", dir.path().display()),
                max_connections: 2,
                timeout: Duration::from_secs(5),
                sqlite_synchronous: Synchronous::Full,
            })
            .await
            .unwrap(),
        );
        let mut creates = tokio::task::JoinSet::new();
        for n in 0..300 {
            let store = store.clone();
            creates.spawn(async move {
                let item = ContentId::parse(&format!("item-{}", n % 7)).unwrap();
                let new = NewComment::parse(item, "t@example.com".into(), format!("c{n}")).unwrap();
                let key = (n % 50 == 0)
                    .then(|| IdempotencyKey::parse(format!("k{n}").as_bytes()).unwrap());
                (format!("c{n}"), store.create(new, key).await.unwrap())
            });
        }
        let mut ids = std::collections::HashSet::new();
        while let Some(done) = creates.join_next().await {
            let (text, created) = done.unwrap();
            let Created::New(comment) = created else {
                panic!("{text} was not new")
            };
            assert_eq!(comment.comment, text);
            assert!(ids.insert(comment.id), "{:?} handed out twice", comment.id);
            let stored = store.get(comment.id).await.unwrap().expect("stored");
            assert_eq!(stored, comment);
        }
        assert_eq!(ids.len(), 300);
    }

    fn options(database: &Path) -> StoreOptions {
        StoreOptions {
            url: format!("sqlite://{}", database.display()),
            max_connections: 2,
            timeout: Duration::from_secs(5),
            sqlite_synchronous: Synchronous::Full,
        }
    }

    fn new_comment(item: &str, text: &str) -> NewComment {
        NewComment::parse(
            ContentId::parse(item).unwrap(),
            "t@example.com".into(),
            text.into(),
        )
        .unwrap()
    }

    /// Every item's comments as the database holds them, straight from the table.
    async fn stored_ids(store: &SqliteStore, item: &str) -> Vec<i64> {
        sqlx::query_scalar("SELECT id FROM comments WHERE content_id = ?1 ORDER BY id")
            .bind(item)
            .fetch_all(&store.readers)
            .await
            .unwrap()
    }

    /// What the list query reads for `item`, whole and page by page (bypassing the read cache).
    async fn listed_ids(store: &SqliteStore, item: &str) -> (Vec<i64>, Vec<i64>) {
        let content_id = ContentId::parse(item).unwrap();
        let ids = |comments: Vec<Comment>| comments.iter().map(|c| c.id.get()).collect::<Vec<_>>();
        let whole = ids(select_page(&store.readers, &content_id, Page::ALL)
            .await
            .unwrap());
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = Page {
                after,
                limit: Some(7),
            };
            let got = ids(select_page(&store.readers, &content_id, page)
                .await
                .unwrap());
            if got.is_empty() {
                break;
            }
            after = got.last().map(|&id| CommentId::from_stored(id));
            paged.extend(got);
        }
        (whole, paged)
    }

    async fn assert_lists_exact(store: &SqliteStore, items: &[String], when: &str) {
        for item in items {
            let want = stored_ids(store, item).await;
            let (whole, paged) = listed_ids(store, item).await;
            assert_eq!(whole, want, "{item}, whole, {when}");
            assert_eq!(paged, want, "{item}, in pages of 7, {when}");
        }
    }

    /// (mark, newest id, entries in comments_by_item, comments)
    async fn index_state(store: &SqliteStore) -> (i64, i64, i64, i64) {
        sqlx::query_as(
            "SELECT (SELECT id FROM comments_by_item_upto), \
             (SELECT coalesce(max(id), 0) FROM comments), \
             (SELECT count(*) FROM comments_by_item), (SELECT count(*) FROM comments)",
        )
        .fetch_one(&store.readers)
        .await
        .unwrap()
    }

    async fn wait_until_all_indexed(store: &SqliteStore) {
        let indexed = async {
            loop {
                let (mark, newest, entries, comments) = index_state(store).await;
                // `>=`: the mark stays at the largest id its cycle noted, and that comment may
                // have been deleted since, leaving a smaller newest id.
                if mark >= newest && entries == comments {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), indexed)
            .await
            .is_err()
        {
            let (mark, newest, entries, comments) = index_state(store).await;
            panic!(
                "the writer never indexed every comment by item: mark {mark}, newest id \
                 {newest}, {entries} entries for {comments} comments"
            );
        }
    }

    /// Comments move into `comments_by_item` in cycles of a few slices while writes and deletes
    /// keep coming: at every point the list query reads each stored comment of an item once, in
    /// order, whole or in pages, and once the writes stop the writer indexes the rest on its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lists_stay_exact_while_comments_move_into_the_item_index() {
        let dir = tempfile::tempdir().unwrap();
        // A cycle of 300 comments: 2 slices, with comments past the mark at every check.
        let store = Arc::new(
            SqliteStore::open_with(&options(&dir.path().join("c.db")), 300)
                .await
                .unwrap(),
        );
        let items: Vec<String> = (0..13).map(|n| format!("item-{n}")).collect();
        let mut checks = 0;
        for round in 0..8 {
            let mut creates = tokio::task::JoinSet::new();
            for n in 0..150 {
                let store = store.clone();
                let item = items[(n * 7 + round) % items.len()].clone();
                creates.spawn(async move {
                    let key = (n % 40 == 0).then(|| {
                        IdempotencyKey::parse(format!("k{round}-{n}").as_bytes()).unwrap()
                    });
                    store
                        .create(new_comment(&item, &format!("c{round}-{n}")), key)
                        .await
                        .unwrap()
                });
            }
            let mut created = Vec::new();
            while let Some(done) = creates.join_next().await {
                let Created::New(comment) = done.unwrap() else {
                    panic!("replayed")
                };
                created.push(comment.id);
            }
            // Some of them go again, and some older ones that are in comments_by_item by now.
            for id in created
                .iter()
                .step_by(17)
                .chain([CommentId::from_stored(round as i64 * 90 + 1)].iter())
            {
                store.delete(*id).await.unwrap();
            }
            assert_lists_exact(&store, &items, &format!("round {round}")).await;
            let (mark, newest, _, _) = index_state(&store).await;
            if mark > 0 && mark < newest {
                checks += 1;
            }
        }
        assert!(
            checks > 0,
            "no check saw comments on both sides of the mark"
        );
        wait_until_all_indexed(&store).await;
        assert_lists_exact(&store, &items, "after the writer went idle").await;
        store.close().await;
    }

    /// A crash can leave a cycle half done: some of its comments in `comments_by_item`, the mark
    /// before them all. A restart notes them again and finishes the cycle; lists are exact
    /// throughout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cycle_cut_short_is_finished_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("c.db");
        let items: Vec<String> = (0..5).map(|n| format!("item-{n}")).collect();
        let store = SqliteStore::open(&options(&database)).await.unwrap();
        for n in 0..400 {
            let item = &items[n % items.len()];
            store
                .create(new_comment(item, &format!("c{n}")), None)
                .await
                .unwrap();
        }
        wait_until_all_indexed(&store).await;
        // As a crash after a few slices would leave it: the mark back at 100, and the entries of
        // every other item past it gone.
        store.close().await;
        let mut conn = SqliteConnection::connect(&options(&database).url)
            .await
            .unwrap();
        sqlx::raw_sql(
            "UPDATE comments_by_item_upto SET id = 100; \
             DELETE FROM comments_by_item WHERE id > 100 AND content_id IN ('item-1', 'item-3');",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();

        let store = SqliteStore::open(&options(&database)).await.unwrap();
        assert_lists_exact(&store, &items, "after the restart").await;
        wait_until_all_indexed(&store).await;
        assert_lists_exact(&store, &items, "once the cycle is done").await;
        store.close().await;
    }

    /// A database made before `comments_by_item` existed (migration 0001 only) is migrated with
    /// every comment in it, and the old index is gone.
    #[tokio::test]
    async fn a_database_from_before_the_item_index_is_migrated_whole() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("c.db");
        let first_only = dir.path().join("migrations");
        std::fs::create_dir(&first_only).unwrap();
        std::fs::copy(
            "migrations/sqlite/0001_create_comments.sql",
            first_only.join("0001_create_comments.sql"),
        )
        .unwrap();
        let url = format!("sqlite://{}?mode=rwc", database.display());
        let mut conn = SqliteConnection::connect(&url).await.unwrap();
        sqlx::migrate::Migrator::new(first_only.as_path())
            .await
            .unwrap()
            .run(&mut conn)
            .await
            .unwrap();
        sqlx::raw_sql(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) \
             INSERT INTO comments (content_id, email, comment, created_at) \
             SELECT 'item-' || (i % 9), 't@example.com', CAST('c' || i AS BLOB), 0 FROM n",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();

        let store = SqliteStore::open(&options(&database)).await.unwrap();
        assert_eq!(index_state(&store).await, (500, 500, 500, 500));
        let old_index: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE name = 'comments_by_content'",
        )
        .fetch_one(&store.readers)
        .await
        .unwrap();
        assert_eq!(old_index, 0);
        let items: Vec<String> = (0..9).map(|n| format!("item-{n}")).collect();
        assert_lists_exact(&store, &items, "after the migration").await;
        store.close().await;
    }

    /// The list query reads through the indexes: a seek into `comments_by_item`, one per epoch
    /// into `comments_by_epoch`, and never a scan of `comments` (which would make every read cost
    /// the whole table).
    #[tokio::test]
    async fn the_list_query_seeks_and_never_scans_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&options(&dir.path().join("c.db")))
            .await
            .unwrap();
        let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "EXPLAIN QUERY PLAN {SELECT_PAGE}"
        )))
        .bind("item")
        .bind(0)
        .bind(20)
        .fetch_all(&store.readers)
        .await
        .unwrap();
        let plan: Vec<&str> = plan.iter().map(|(_, _, _, step)| step.as_str()).collect();
        let has = |step: &str| plan.iter().any(|line| line.starts_with(step));
        assert!(
            has("SEARCH i USING PRIMARY KEY (content_id=? AND id>?)"),
            "{plan:#?}"
        );
        assert!(
            has("SEARCH c USING INDEX comments_by_epoch (<expr>=? AND content_id=?"),
            "{plan:#?}"
        );
        assert!(
            has("SEARCH moved USING PRIMARY KEY (content_id=? AND id=?)"),
            "{plan:#?}"
        );
        let scans_comments = |line: &&str| {
            let mut words = line.split_whitespace();
            words.next() == Some("SCAN") && matches!(words.next(), Some("c" | "comments"))
        };
        assert!(!plan.iter().any(scans_comments), "{plan:#?}");
        store.close().await;
    }
}

//! Storage: one trait, two backends. Nothing here knows about HTTP.
//!
//! - [`sqlite`]: the embedded default, one replica, writes group-committed by a single writer.
//! - [`postgres`]: for many replicas, migrations under an advisory lock.

pub mod instrumented;
pub mod list_cache;
pub mod postgres;
pub mod sqlite;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::domain::{Comment, CommentId, ContentId, IdempotencyKey, NewComment, Page};

/// How long an `Idempotency-Key` is remembered. Retries come within minutes; a day covers a
/// client that retries after an outage without keeping keys forever.
pub const IDEMPOTENCY_KEY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// What a create did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// A new comment was committed.
    New(Comment),
    /// The key was seen before with the same comment: this is the first result, nothing stored.
    Replayed(Comment),
}

impl Created {
    pub fn comment(&self) -> &Comment {
        match self {
            Created::New(c) | Created::Replayed(c) => c,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The idempotency key was used before for a different comment.
    #[error("Idempotency-Key was already used for a different comment")]
    KeyReused,
    /// The database did not answer, or answered with an error that a retry may fix.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The operation did not finish within the storage timeout. For a write this means it was
    /// not applied (see each backend for the one exception).
    #[error("storage timed out: {0}")]
    TimedOut(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        if ran_out_of_time(&err) {
            StoreError::TimedOut(err.to_string())
        } else {
            StoreError::Unavailable(err.to_string())
        }
    }
}

/// Errors that mean "not within the storage timeout" (each was set to it): no connection in
/// time, SQLite's busy timeout on a lock, PostgreSQL's statement_timeout.
fn ran_out_of_time(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or_default();
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6), primary or extended (code & 0xff);
            // PostgreSQL query_canceled (57014).
            let sqlite_busy = code
                .parse::<u32>()
                .is_ok_and(|code| matches!(code & 0xff, 5 | 6));
            sqlite_busy || code == "57014"
        }
        _ => false,
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        StoreError::Unavailable(format!("migrations: {err}"))
    }
}

/// The one interface the HTTP layer uses. A write returns only once it is committed.
#[async_trait]
pub trait CommentStore: Send + Sync + 'static {
    /// Stores a comment, or returns the first result when `key` was used for the same comment.
    async fn create(
        &self,
        new: NewComment,
        key: Option<IdempotencyKey>,
    ) -> Result<Created, StoreError>;

    /// Comments on one item, oldest first.
    async fn list(&self, content_id: &ContentId, page: Page) -> Result<Listing, StoreError>;

    async fn get(&self, id: CommentId) -> Result<Option<Comment>, StoreError>;

    /// Deletes a comment; `false` when there was none with that id.
    async fn delete(&self, id: CommentId) -> Result<bool, StoreError>;

    /// Forgets idempotency keys older than [`IDEMPOTENCY_KEY_TTL`]; returns how many.
    async fn purge_expired_keys(&self) -> Result<u64, StoreError>;

    /// Succeeds when the store can serve requests (reachable and migrated).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Flushes and closes connections; called once at shutdown.
    async fn close(&self);
}

pub type SharedStore = Arc<dyn CommentStore>;

/// Every comment on one item, oldest first, shared by the readers that got it from the cache,
/// with room for one rendering of the whole list that they can share too (so a list that did not
/// change is not serialized again for every request).
#[derive(Debug, Default)]
pub struct ItemComments {
    comments: Vec<Comment>,
    rendered: OnceLock<Bytes>,
}

impl From<Vec<Comment>> for ItemComments {
    fn from(comments: Vec<Comment>) -> Self {
        ItemComments {
            comments,
            rendered: OnceLock::new(),
        }
    }
}

impl std::ops::Deref for ItemComments {
    type Target = [Comment];

    fn deref(&self) -> &[Comment] {
        &self.comments
    }
}

/// A list of comments shared without copying: a window into an item's comments (a cached list,
/// or the rows of one query).
#[derive(Debug, Clone)]
pub struct Listing {
    item: Arc<ItemComments>,
    range: std::ops::Range<usize>,
}

impl Listing {
    /// The part of `all` (every comment on an item, in id order) that `page` asks for.
    pub fn window(all: Arc<ItemComments>, page: Page) -> Listing {
        let start = page
            .after
            .map_or(0, |after| all.partition_point(|c| c.id <= after));
        let end = page.limit.map_or(all.len(), |limit| {
            all.len().min(start.saturating_add(limit as usize))
        });
        Listing {
            item: all,
            range: start..end,
        }
    }

    /// Keeps at most the first `len` comments.
    pub fn truncate(&mut self, len: usize) {
        self.range.end = self.range.end.min(self.range.start + len);
    }

    /// `render(self)`, remembered with the list when this is the item's whole list: a caller
    /// that always renders whole lists the same way renders each version once.
    pub fn render_whole(&self, render: impl FnOnce(&[Comment]) -> Bytes) -> Bytes {
        if self.range == (0..self.item.len()) {
            self.item.rendered.get_or_init(|| render(self)).clone()
        } else {
            render(self)
        }
    }
}

impl From<Vec<Comment>> for Listing {
    fn from(comments: Vec<Comment>) -> Self {
        Listing {
            range: 0..comments.len(),
            item: Arc::new(comments.into()),
        }
    }
}

impl std::ops::Deref for Listing {
    type Target = [Comment];

    fn deref(&self) -> &[Comment] {
        &self.item[self.range.clone()]
    }
}

/// Which backend a `--database-url` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// Settings both backends share.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub url: String,
    pub max_connections: u32,
    /// The longest a storage operation may take (connection, queue and query included); past it
    /// the request gets a 503 and a write is not applied.
    pub timeout: Duration,
    pub sqlite_synchronous: sqlite::Synchronous,
}

/// Opens the store the URL names. SQLite opens and migrates before returning (a local file that
/// cannot be opened is a configuration error); PostgreSQL returns at once and connects and
/// migrates in the background, retrying with backoff, so the process stays up while the database
/// is away and `ping` says why it is not ready.
pub async fn open(options: &StoreOptions) -> Result<SharedStore, StoreError> {
    match Backend::of(&options.url) {
        Some(Backend::Sqlite) => Ok(Arc::new(sqlite::SqliteStore::open(options).await?)),
        Some(Backend::Postgres) => Ok(Arc::new(postgres::PostgresStore::open(options)?)),
        None => Err(StoreError::Unavailable(
            "database URL must start with sqlite: or postgres://".into(),
        )),
    }
}

/// A stored row back into a [`Comment`]; a value that no longer parses means the database was
/// changed behind the service's back, which is a storage failure, not a client error.
pub(crate) fn decode_comment(
    id: i64,
    content_id: &str,
    email: String,
    comment: Vec<u8>,
    created_at: time::OffsetDateTime,
) -> Result<Comment, StoreError> {
    let corrupt = |what: &str| StoreError::Unavailable(format!("stored {what} is corrupt"));
    Ok(Comment {
        id: CommentId::from_stored(id),
        content_id: ContentId::parse(content_id).map_err(|_| corrupt("content_id"))?,
        email,
        comment: String::from_utf8(comment).map_err(|_| corrupt("comment"))?,
        created_at,
    })
}

/// Runs `operation` within `limit`, or says what timed out.
pub(crate) async fn within<T>(
    limit: Duration,
    what: &str,
    operation: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, operation)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::TimedOut(format!(
                "{what} took longer than {limit:?}"
            )))
        })
}

/// Microseconds since the Unix epoch, the resolution both backends keep.
pub(crate) fn now_micros() -> time::OffsetDateTime {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap_or(now)
}

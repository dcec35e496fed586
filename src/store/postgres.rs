//! The shared store: PostgreSQL, for any number of replicas.
//!
//! The pool connects lazily and migrations run in the background under sqlx's advisory lock, so
//! replicas starting together migrate once, and a replica started while the database is away
//! stays up (live, not ready) and becomes ready when the database appears.
//!
//! Every operation runs in a task of its own, so a request that goes away (client gone, storage
//! timeout) never cancels it halfway through a transaction and hands its connection back to the
//! pool mid-transaction. The request waits at most the storage timeout; past it, the task still
//! ends on its own: PostgreSQL's `statement_timeout` (set to the same value on every connection)
//! aborts a slow statement, which rolls the transaction back. Only a connection lost during the
//! COMMIT round trip itself leaves a write's outcome unknown; `Idempotency-Key` retries cover it.

use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{FromRow, PgExecutor};
use time::OffsetDateTime;

use super::{
    CommentStore, Created, IDEMPOTENCY_KEY_TTL, Listing, StoreError, StoreOptions, now_micros,
    within,
};
use crate::domain::{Comment, CommentId, ContentId, IdempotencyKey, NewComment, Page};

const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(10);

pub struct PostgresStore {
    pool: PgPool,
    timeout: Duration,
    /// `None` once migrations are done; until then, why they are not.
    pending: Arc<Mutex<Option<String>>>,
}

impl PostgresStore {
    pub fn open(options: &StoreOptions) -> Result<Self, StoreError> {
        let statement_timeout = format!("{}ms", options.timeout.as_millis().max(1));
        let connect = PgConnectOptions::from_str(&options.url)?
            .application_name("comments")
            .options([("statement_timeout", statement_timeout.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.timeout)
            // A broken connection shows up as a failed query (a 503 the client may retry), which
            // is cheaper than a round trip before every query to find it first.
            .test_before_acquire(false)
            .connect_lazy_with(connect);
        let pending = Arc::new(Mutex::new(Some(
            "PostgreSQL not ready: connecting".to_owned(),
        )));
        tokio::spawn(migrate_until_done(pool.clone(), pending.clone()));
        Ok(Self {
            pool,
            timeout: options.timeout,
            pending,
        })
    }
}

/// Retries with exponential backoff until the migrations have run, logging why each try failed.
async fn migrate_until_done(pool: PgPool, pending: Arc<Mutex<Option<String>>>) {
    let mut wait = FIRST_RETRY;
    loop {
        match sqlx::migrate!("migrations/postgres").run(&pool).await {
            Ok(()) => {
                *pending.lock().unwrap_or_else(|e| e.into_inner()) = None;
                tracing::info!("PostgreSQL migrations applied; storage ready");
                return;
            }
            Err(err) => {
                let reason = format!("PostgreSQL not ready: {err}");
                tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, "{reason}");
                *pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
            }
        }
        if pool.is_closed() {
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(LAST_RETRY);
    }
}

#[async_trait]
impl CommentStore for PostgresStore {
    async fn create(
        &self,
        new: NewComment,
        key: Option<IdempotencyKey>,
    ) -> Result<Created, StoreError> {
        self.run("create", create(self.pool.clone(), new, key))
            .await
    }

    async fn list(&self, content_id: &ContentId, page: Page) -> Result<Listing, StoreError> {
        let content_id = content_id.clone();
        self.run("list", list(self.pool.clone(), content_id, page))
            .await
            .map(Listing::from)
    }

    async fn get(&self, id: CommentId) -> Result<Option<Comment>, StoreError> {
        let pool = self.pool.clone();
        self.run("get", async move { fetch_comment(&pool, id).await })
            .await
    }

    async fn delete(&self, id: CommentId) -> Result<bool, StoreError> {
        let pool = self.pool.clone();
        self.run("delete", async move {
            let done = sqlx::query("DELETE FROM comments WHERE id = $1")
                .bind(id.get())
                .execute(&pool)
                .await?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }

    async fn purge_expired_keys(&self) -> Result<u64, StoreError> {
        let pool = self.pool.clone();
        self.run("purge", async move {
            let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                .bind(key_expiry_cutoff())
                .execute(&pool)
                .await?;
            Ok(done.rows_affected())
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if let Some(reason) = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Err(StoreError::Unavailable(reason));
        }
        let pool = self.pool.clone();
        self.run("ping", async move {
            sqlx::query("SELECT 1").execute(&pool).await?;
            Ok(())
        })
        .await
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

impl PostgresStore {
    /// Runs `operation` in its own task (see the module docs) and waits at most the timeout.
    async fn run<T: Send + 'static>(
        &self,
        what: &str,
        operation: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let task = tokio::spawn(operation);
        within(self.timeout, what, async {
            task.await
                .unwrap_or_else(|err| Err(StoreError::Unavailable(format!("{what} failed: {err}"))))
        })
        .await
    }
}

async fn create(
    pool: PgPool,
    new: NewComment,
    key: Option<IdempotencyKey>,
) -> Result<Created, StoreError> {
    if let Some(key) = &key
        && let Some(earlier) = replay(&pool, key, &new).await?
    {
        return earlier;
    }

    let mut tx = pool.begin().await?;
    let created_at = now_micros();
    let row: Row = sqlx::query_as(
        "INSERT INTO comments (content_id, email, comment, created_at) \
         VALUES ($1, $2, $3, $4) RETURNING id, content_id, email, comment, created_at",
    )
    .bind(new.content_id.as_str())
    .bind(new.email.as_str())
    .bind(new.comment.as_str().as_bytes())
    .bind(created_at)
    .fetch_one(&mut *tx)
    .await?;

    if let Some(key) = &key {
        // Claims the key unless a live claim exists. A concurrent claim makes this wait for
        // that transaction, then see its row: the loser rolls back and replays the winner.
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (key, comment_id, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO UPDATE SET comment_id = EXCLUDED.comment_id, \
             created_at = EXCLUDED.created_at WHERE idempotency_keys.created_at < $4",
        )
        .bind(key.as_str())
        .bind(row.id)
        .bind(created_at)
        .bind(key_expiry_cutoff())
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() == 0 {
            tx.rollback().await?;
            return match replay(&pool, key, &new).await? {
                Some(earlier) => earlier,
                None => Err(StoreError::Unavailable("idempotency key vanished".into())),
            };
        }
    }
    tx.commit().await?;
    Ok(Created::New(row.into_comment()?))
}

async fn list(pool: PgPool, content_id: ContentId, page: Page) -> Result<Vec<Comment>, StoreError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, content_id, email, comment, created_at FROM comments \
         WHERE content_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(content_id.as_str())
    .bind(page.after.map_or(0, CommentId::get))
    .bind(page.limit.map(i64::from))
    .fetch_all(&pool)
    .await?;
    rows.into_iter().map(Row::into_comment).collect()
}

/// The earlier result for `key`, if the key is live: the same comment or a conflict.
async fn replay(
    pool: &PgPool,
    key: &IdempotencyKey,
    new: &NewComment,
) -> Result<Option<Result<Created, StoreError>>, StoreError> {
    let earlier: Option<i64> = sqlx::query_scalar(
        "SELECT comment_id FROM idempotency_keys WHERE key = $1 AND created_at >= $2",
    )
    .bind(key.as_str())
    .bind(key_expiry_cutoff())
    .fetch_optional(pool)
    .await?;
    let Some(id) = earlier else { return Ok(None) };
    Ok(Some(
        match fetch_comment(pool, CommentId::from_stored(id)).await? {
            Some(first) if first.matches(new) => Ok(Created::Replayed(first)),
            _ => Err(StoreError::KeyReused),
        },
    ))
}

async fn fetch_comment<'c>(
    executor: impl PgExecutor<'c>,
    id: CommentId,
) -> Result<Option<Comment>, StoreError> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT id, content_id, email, comment, created_at FROM comments WHERE id = $1",
    )
    .bind(id.get())
    .fetch_optional(executor)
    .await?;
    row.map(Row::into_comment).transpose()
}

fn key_expiry_cutoff() -> OffsetDateTime {
    OffsetDateTime::now_utc() - IDEMPOTENCY_KEY_TTL
}

#[derive(FromRow)]
struct Row {
    id: i64,
    content_id: String,
    email: String,
    comment: Vec<u8>,
    created_at: OffsetDateTime,
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
        super::decode_comment(id, &content_id, email, comment, created_at)
    }
}

//! A store wrapper that times every operation (a metric and a span), so the backends stay free
//! of telemetry. Each backend bounds its own operations (see `StoreOptions::timeout`): only the
//! backend knows when giving up still guarantees a write was not applied.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Instant;

use async_trait::async_trait;
use prometheus::Histogram;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{Backend, CommentStore, Created, Listing, SharedStore, StoreError};
use crate::domain::{Comment, CommentId, ContentId, IdempotencyKey, NewComment, Page};
use crate::telemetry::metrics::Metrics;

/// The `operation` label, and the span `store.<operation>`.
#[derive(Debug, Clone, Copy)]
enum Operation {
    Create,
    List,
    Get,
    Delete,
    PurgeExpiredKeys,
    Ping,
}

impl Operation {
    const COUNT: usize = 6;

    fn label(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::List => "list",
            Operation::Get => "get",
            Operation::Delete => "delete",
            Operation::PurgeExpiredKeys => "purge_expired_keys",
            Operation::Ping => "ping",
        }
    }

    fn span_name(self) -> &'static str {
        match self {
            Operation::Create => "store.create",
            Operation::List => "store.list",
            Operation::Get => "store.get",
            Operation::Delete => "store.delete",
            Operation::PurgeExpiredKeys => "store.purge_expired_keys",
            Operation::Ping => "store.ping",
        }
    }
}

/// The `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Conflict,
    Error,
    Timeout,
}

impl Outcome {
    const COUNT: usize = 4;

    fn of<T>(result: &Result<T, StoreError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Ok,
            Err(StoreError::KeyReused) => Outcome::Conflict,
            Err(StoreError::TimedOut(_)) => Outcome::Timeout,
            Err(StoreError::Unavailable(_)) => Outcome::Error,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Conflict => "conflict",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
        }
    }
}

pub struct Instrumented {
    inner: SharedStore,
    metrics: Metrics,
    system: &'static str,
    /// The histogram of each (operation, outcome), looked up in the vector once, on first use
    /// (so only outcomes that happened have a series), then used without hashing or locking.
    durations: [[OnceLock<Histogram>; Outcome::COUNT]; Operation::COUNT],
}

impl Instrumented {
    pub fn new(inner: SharedStore, backend: Backend, metrics: Metrics) -> Self {
        let system = match backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgresql",
        };
        Self {
            inner,
            metrics,
            system,
            durations: Default::default(),
        }
    }

    fn duration(&self, operation: Operation, outcome: Outcome) -> &Histogram {
        self.durations[operation as usize][outcome as usize].get_or_init(|| {
            self.metrics
                .store_duration
                .with_label_values(&[operation.label(), outcome.label()])
        })
    }

    async fn observe<T>(
        &self,
        operation: Operation,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        // Built only when traces are on (no layer wants it otherwise): the logs do not show it.
        let span = tracing::info_span!(
            "store",
            otel.name = operation.span_name(),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
        );
        if !span.is_disabled() {
            span.set_attribute("db.system.name", self.system);
            span.set_attribute("db.operation.name", operation.label());
        }
        let started = Instant::now();
        let result = call.instrument(span.clone()).await;
        let outcome = Outcome::of(&result);
        if matches!(outcome, Outcome::Error | Outcome::Timeout) {
            span.record("otel.status_code", "ERROR");
        }
        self.duration(operation, outcome)
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

#[async_trait]
impl CommentStore for Instrumented {
    async fn create(
        &self,
        new: NewComment,
        key: Option<IdempotencyKey>,
    ) -> Result<Created, StoreError> {
        let created = self
            .observe(Operation::Create, self.inner.create(new, key))
            .await;
        if let Ok(Created::New(_)) = created {
            self.metrics.comments_created.inc();
        }
        created
    }

    async fn list(&self, content_id: &ContentId, page: Page) -> Result<Listing, StoreError> {
        self.observe(Operation::List, self.inner.list(content_id, page))
            .await
    }

    async fn get(&self, id: CommentId) -> Result<Option<Comment>, StoreError> {
        self.observe(Operation::Get, self.inner.get(id)).await
    }

    async fn delete(&self, id: CommentId) -> Result<bool, StoreError> {
        self.observe(Operation::Delete, self.inner.delete(id)).await
    }

    async fn purge_expired_keys(&self) -> Result<u64, StoreError> {
        self.observe(Operation::PurgeExpiredKeys, self.inner.purge_expired_keys())
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.observe(Operation::Ping, self.inner.ping()).await
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}

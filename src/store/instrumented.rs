//! A store wrapper that times every operation (a metric and a span), so the backends stay free
//! of telemetry. Each backend bounds its own operations (see `StoreOptions::timeout`): only the
//! backend knows when giving up still guarantees a write was not applied.

use std::future::Future;
use std::time::Instant;

use async_trait::async_trait;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{Backend, CommentStore, Created, Listing, SharedStore, StoreError};
use crate::domain::{Comment, CommentId, ContentId, IdempotencyKey, NewComment, Page};
use crate::telemetry::metrics::Metrics;

pub struct Instrumented {
    inner: SharedStore,
    metrics: Metrics,
    system: &'static str,
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
        }
    }

    /// `name` is the span name, `store.<operation>`.
    async fn observe<T>(
        &self,
        name: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let operation = name.strip_prefix("store.").unwrap_or(name);
        let span = tracing::info_span!(
            "store",
            otel.name = name,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
        );
        // Straight to OpenTelemetry (nothing when traces are off): the logs do not show them.
        span.set_attribute("db.system.name", self.system);
        span.set_attribute("db.operation.name", operation);
        let started = Instant::now();
        let result = call.instrument(span.clone()).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(StoreError::KeyReused) => "conflict",
            Err(StoreError::TimedOut(_)) => "timeout",
            Err(StoreError::Unavailable(_)) => "error",
        };
        if matches!(outcome, "error" | "timeout") {
            span.record("otel.status_code", "ERROR");
        }
        self.metrics
            .store_duration
            .with_label_values(&[operation, outcome])
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
            .observe("store.create", self.inner.create(new, key))
            .await;
        if let Ok(Created::New(_)) = created {
            self.metrics.comments_created.inc();
        }
        created
    }

    async fn list(&self, content_id: &ContentId, page: Page) -> Result<Listing, StoreError> {
        self.observe("store.list", self.inner.list(content_id, page))
            .await
    }

    async fn get(&self, id: CommentId) -> Result<Option<Comment>, StoreError> {
        self.observe("store.get", self.inner.get(id)).await
    }

    async fn delete(&self, id: CommentId) -> Result<bool, StoreError> {
        self.observe("store.delete", self.inner.delete(id)).await
    }

    async fn purge_expired_keys(&self) -> Result<u64, StoreError> {
        self.observe("store.purge_expired_keys", self.inner.purge_expired_keys())
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.observe("store.ping", self.inner.ping()).await
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}

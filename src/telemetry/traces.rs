//! OpenTelemetry traces over OTLP (gRPC or HTTP/protobuf), off unless an endpoint is set.
//!
//! Spans are batched on the SDK's own thread behind a bounded queue: a slow or absent collector
//! costs dropped spans (counted), never slower requests.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanProcessor,
};
use prometheus::IntCounter;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::registry::LookupSpan;

use crate::config::OtelConfig;

/// Spans waiting for export; beyond this they are dropped and counted. `OTEL_BSP_MAX_QUEUE_SIZE`
/// overrides it, as the SDK's other `OTEL_BSP_*` batch settings do.
const DEFAULT_MAX_QUEUED_SPANS: usize = 2048;
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for the last spans to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Process-wide like the tracer provider they describe; registered into each metrics registry.
pub static SPANS_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "comments_trace_spans_dropped_total",
        "Spans dropped because the export queue was full (collector slow or down)",
    )
    .expect("valid metric")
});
pub static SPANS_EXPORT_FAILED: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "comments_trace_spans_export_failed_total",
        "Spans the collector did not accept (unreachable, refused or timed out)",
    )
    .expect("valid metric")
});

/// The tracer provider, if traces are on. Keep it until shutdown, then call [`Tracing::shutdown`].
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Tracing {
    pub fn disabled() -> Self {
        Self { provider: None }
    }

    /// Builds the exporter the configuration names. Must run inside the Tokio runtime (the gRPC
    /// channel's connection tasks live there).
    pub fn from_config(otel: &OtelConfig) -> Result<Self, String> {
        let Some(endpoint) = otel.endpoint.as_deref().filter(|e| !e.trim().is_empty()) else {
            return Ok(Self::disabled());
        };
        let endpoint = endpoint.trim_end_matches('/');
        let exporter = match otel.protocol.as_str() {
            "grpc" => SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build(),
            _ => SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{endpoint}/v1/traces"))
                .with_timeout(EXPORT_TIMEOUT)
                .build(),
        }
        .map_err(|err| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {err}"))?;

        let capacity = std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_MAX_QUEUED_SPANS);
        let queued = std::sync::Arc::new(AtomicUsize::new(0));
        let batch = BatchSpanProcessor::builder(CountingExporter {
            inner: exporter,
            queued: queued.clone(),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(capacity)
                .build(),
        )
        .build();

        let provider = SdkTracerProvider::builder()
            .with_span_processor(BoundedQueue {
                inner: batch,
                queued,
                capacity,
            })
            .with_sampler(sampler(&otel.sampler, otel.sampler_arg))
            .with_resource(resource(otel)?)
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        Ok(Self {
            provider: Some(provider),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// The layer bridging `tracing` spans to OpenTelemetry: only this crate's spans (the request
    /// and storage spans), never the exporter's own, which would trace themselves forever.
    pub fn layer<S>(&self) -> Option<impl Layer<S> + use<S>>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        let tracer: SdkTracer = self.provider.as_ref()?.tracer("comments");
        let only_ours = Targets::new()
            .with_target("comments", LevelFilter::INFO)
            .with_default(LevelFilter::OFF);
        let layer: OpenTelemetryLayer<S, SdkTracer> = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            // Attributes say what happened, not where in our code or on which thread.
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_error_records_to_exceptions(true);
        Some(layer.with_filter(only_ours))
    }

    /// Flushes queued spans and stops the exporter. Blocking, so it runs off the async threads.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let flushed = tokio::task::spawn_blocking(move || {
            let result = provider.shutdown_with_timeout(FLUSH_TIMEOUT);
            drop(provider);
            result
        })
        .await;
        match flushed {
            Ok(Ok(())) => tracing::info!("traces flushed"),
            Ok(Err(err)) => tracing::warn!(error = %err, "traces not flushed"),
            Err(err) => tracing::warn!(error = %err, "trace flush task failed"),
        }
    }
}

fn sampler(name: &str, arg: Option<f64>) -> Sampler {
    let ratio = arg.unwrap_or(1.0);
    match name {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
        _ => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
    }
}

/// `service.name`, `service.version` and `OTEL_RESOURCE_ATTRIBUTES` (`key=value,key=value`).
fn resource(otel: &OtelConfig) -> Result<Resource, String> {
    let mut attributes = vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))];
    for pair in otel
        .resource_attributes
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.trim().is_empty())
    {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("OTEL_RESOURCE_ATTRIBUTES: {pair:?} is not key=value"))?;
        attributes.push(KeyValue::new(
            key.trim().to_owned(),
            value.trim().to_owned(),
        ));
    }
    Ok(Resource::builder_empty()
        .with_attributes(attributes)
        .with_service_name(otel.service_name.clone())
        .build())
}

/// Admits a span to the batch queue only while there is room, counting the ones turned away.
/// The batch processor drops spans on a full queue too, but keeps that count to itself.
#[derive(Debug)]
struct BoundedQueue {
    inner: BatchSpanProcessor,
    queued: std::sync::Arc<AtomicUsize>,
    capacity: usize,
}

impl SpanProcessor for BoundedQueue {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            SPANS_DROPPED.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Frees queue room as batches leave for the collector, and counts the ones it refused.
#[derive(Debug)]
struct CountingExporter {
    inner: SpanExporter,
    queued: std::sync::Arc<AtomicUsize>,
}

impl opentelemetry_sdk::trace::SpanExporter for CountingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let count = batch.len();
        self.queued.fetch_sub(count, Ordering::AcqRel);
        let result = self.inner.export(batch).await;
        if result.is_err() {
            SPANS_EXPORT_FAILED.inc_by(count as u64);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};

    use super::*;

    /// How many of `n` fresh root traces (or children of `parent`) `sampler` keeps.
    fn kept(sampler: &Sampler, parent: Option<bool>, n: u128) -> u128 {
        (1..=n)
            .filter(|i| {
                let trace_id = TraceId::from_bytes(
                    (i * 0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835).to_be_bytes(),
                );
                let context = parent.map(|sampled| {
                    let flags = if sampled {
                        TraceFlags::SAMPLED
                    } else {
                        TraceFlags::default()
                    };
                    let remote = SpanContext::new(
                        trace_id,
                        SpanId::from_bytes([1; 8]),
                        flags,
                        true,
                        TraceState::default(),
                    );
                    Context::new().with_remote_span_context(remote)
                });
                let result = sampler.should_sample(
                    context.as_ref(),
                    trace_id,
                    "GET /",
                    &SpanKind::Server,
                    &[],
                    &[],
                );
                result.decision == SamplingDecision::RecordAndSample
            })
            .count() as u128
    }

    #[test]
    fn every_otel_traces_sampler_means_what_the_specification_says() {
        let n = 2_000;
        assert_eq!(kept(&sampler("always_on", None), None, n), n);
        assert_eq!(kept(&sampler("always_off", None), None, n), 0);
        let quarter = kept(&sampler("traceidratio", Some(0.25)), None, n);
        assert!(
            (400..=600).contains(&quarter),
            "traceidratio 0.25 kept {quarter} of {n}"
        );
        assert_eq!(
            kept(&sampler("traceidratio", None), None, n),
            n,
            "the ratio defaults to 1"
        );

        // Parent-based samplers follow a sampled or unsampled caller, whatever their root rule.
        for name in [
            "parentbased_always_on",
            "parentbased_always_off",
            "parentbased_traceidratio",
        ] {
            let sampler = sampler(name, Some(0.25));
            assert_eq!(kept(&sampler, Some(true), n), n, "{name}, sampled parent");
            assert_eq!(
                kept(&sampler, Some(false), n),
                0,
                "{name}, unsampled parent"
            );
        }
        assert_eq!(kept(&sampler("parentbased_always_on", None), None, n), n);
        assert_eq!(kept(&sampler("parentbased_always_off", None), None, n), 0);
        let roots = kept(&sampler("parentbased_traceidratio", Some(0.25)), None, n);
        assert!(
            (400..=600).contains(&roots),
            "parentbased_traceidratio 0.25 kept {roots} roots of {n}"
        );
        // Unknown names fall back to the default, parentbased_always_on (config refuses them).
        assert_eq!(kept(&sampler("nonsense", None), None, n), n);
    }
}

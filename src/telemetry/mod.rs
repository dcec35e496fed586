//! Telemetry, set up in one place: logs (JSON lines or pretty, filtered by `RUST_LOG`), traces
//! (OpenTelemetry over OTLP when an endpoint is configured) and metrics ([`metrics`]).

pub mod metrics;
pub mod traces;

use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, OtelConfig};

pub use traces::Tracing;

/// Installs the global subscriber. Call once, from `main`; tests install their own or none.
pub fn init(format: LogFormat, otel: &OtelConfig) -> Result<Tracing, String> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new("info"))
        .map_err(|err| format!("RUST_LOG: {err}"))?;
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().pretty().boxed(),
    };
    let tracing = Tracing::from_config(otel)?;
    // Storage spans are for traces only: no log line needs them, so the log layer skips the work.
    let not_storage = filter_fn(|meta| !(meta.is_span() && meta.name() == "store"));
    tracing_subscriber::registry()
        .with(logs.with_filter(filter.and(not_storage)))
        .with(tracing.layer())
        .try_init()
        .map_err(|err| format!("cannot install the log subscriber: {err}"))?;
    Ok(tracing)
}

//! Telemetry, set up in one place: logs (JSON lines or pretty, filtered by `RUST_LOG`), traces
//! (OpenTelemetry over OTLP when an endpoint is configured) and metrics ([`metrics`]).

pub mod json_lines;
pub mod log_writer;
pub mod metrics;
pub mod traces;

use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, OtelConfig};

pub use traces::Tracing;

/// What must live until shutdown: the trace exporter and the log writer.
pub struct Telemetry {
    tracing: Tracing,
    logs: log_writer::LogFlusher,
}

impl Telemetry {
    /// Flushes the last spans, then the last log lines (off the async threads: both block).
    pub async fn shutdown(self) {
        self.tracing.shutdown().await;
        let logs = self.logs;
        let _ = tokio::task::spawn_blocking(move || drop(logs)).await;
    }
}

/// Installs the global subscriber. Call once, from `main`; tests install their own or none.
///
/// Lines are written to stdout by a thread of their own, in batches ([`log_writer`]): formatting
/// stays on the request path, the `write` does not.
pub fn init(format: LogFormat, otel: &OtelConfig) -> Result<Telemetry, String> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new("info"))
        .map_err(|err| format!("RUST_LOG: {err}"))?;
    let (stdout, logs) = log_writer::spawn(std::io::stdout())
        .map_err(|err| format!("cannot start the log writer: {err}"))?;
    let lines = match format {
        LogFormat::Json => json_lines::JsonLines::new(stdout).boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .pretty()
            .with_writer(stdout)
            .boxed(),
    };
    let tracing = Tracing::from_config(otel)?;
    // The request and storage spans are for traces only (log lines inside a request get its ids
    // from `json_lines::in_request`), so the log layer skips them, and without an exporter they
    // are never built.
    let not_trace_spans =
        filter_fn(|meta| !(meta.is_span() && matches!(meta.name(), "request" | "store")));
    let logs_only =
        tracing_subscriber::registry().with(lines.with_filter(filter.and(not_trace_spans)));
    // Without an exporter, no trace layer at all: an absent (`None`) layer would declare an
    // interest in every span and event, so the storage spans and every dependency's debug events
    // would be built for nobody.
    match tracing.layer() {
        Some(traces) => logs_only.with(traces).try_init(),
        None => logs_only.try_init(),
    }
    .map_err(|err| format!("cannot install the log subscriber: {err}"))?;
    Ok(Telemetry { tracing, logs })
}

/// For the unit tests that read log output.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::{Arc, Mutex};

    /// An in-memory log sink, shared by its clones.
    #[derive(Clone, Default)]
    pub struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

    impl SharedBuffer {
        pub fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl std::io::Write for SharedBuffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}

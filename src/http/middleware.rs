//! Per-request telemetry: the request span and log line (tower-http's TraceLayer with our span
//! and response hooks), the HTTP metrics, and the JSON answer to a panic.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, Response, StatusCode};
use axum::middleware::Next;
use axum::response::IntoResponse;
use opentelemetry::trace::TraceContextExt;
use tokio::sync::Semaphore;
use tower_http::trace::{MakeSpan, OnResponse, TraceLayer};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{AppState, REQUEST_ID};
use crate::telemetry::metrics::{Metrics, UNMATCHED_ROUTE};

/// The route template a request matched, or one shared value for everything else, so labels
/// and span names stay bounded whatever paths clients send.
fn route_of<B>(request: &axum::http::Request<B>) -> &str {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
}

/// Keeps a client's `x-request-id` only if it is short and plain (and sent once); otherwise the
/// request gets a fresh one, so logs and responses never carry a client's 8 KB or odd bytes.
pub fn drop_unfit_request_id<B>(mut request: axum::http::Request<B>) -> axum::http::Request<B> {
    let mut ids = request.headers().get_all(REQUEST_ID).iter();
    let fit = match (ids.next(), ids.next()) {
        (None, _) => true,
        (Some(id), None) => {
            id.len() <= 128
                && id
                    .as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
        }
        (Some(_), Some(_)) => false,
    };
    if !fit {
        request.headers_mut().remove(REQUEST_ID);
    }
    request
}

/// Standard methods by name; anything else shares one label value.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

pub type RequestTraceLayer = TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    RequestSpan,
    (),
    LogResponse,
    (),
    (),
    (),
>;

/// One span per request, named `METHOD route` for trace backends.
pub fn trace_layer() -> RequestTraceLayer {
    TraceLayer::new_for_http()
        .make_span_with(RequestSpan)
        .on_request(())
        .on_response(LogResponse)
        .on_body_chunk(())
        .on_eos(())
        .on_failure(())
}

#[derive(Clone, Copy)]
pub struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &axum::http::Request<B>) -> Span {
        let method = method_label(request.method());
        let route = route_of(request);
        let headers = request.headers();
        let request_id = headers
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let span = tracing::info_span!(
            "request",
            otel.name = format!("{method} {route}"),
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = method,
            http.route = route,
            url.path = request.uri().path(),
            http.response.status_code = Empty,
            request_id,
            trace_id = Empty,
            span_id = Empty,
        );
        // Continue the caller's trace (W3C traceparent). Without the OpenTelemetry layer (traces
        // off) this does nothing and the log still carries the caller's trace id.
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&opentelemetry_http::HeaderExtractor(headers))
        });
        let _ = span.set_parent(parent);
        let context = span.context();
        let ours = context.span().span_context().clone();
        if ours.is_valid() {
            span.record("trace_id", tracing::field::display(ours.trace_id()));
            span.record("span_id", tracing::field::display(ours.span_id()));
        } else if let Some(trace_id) = caller_trace_id(headers) {
            span.record("trace_id", trace_id);
        }
        span
    }
}

/// The trace id of a valid `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`).
fn caller_trace_id(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = value.split('-');
    let (_version, trace_id) = (parts.next()?, parts.next()?);
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    (trace_id.len() == 32 && hex(trace_id) && trace_id.bytes().any(|b| b != b'0'))
        .then_some(trace_id)
}

/// The one log line per request.
#[derive(Clone, Copy)]
pub struct LogResponse;

impl<B> OnResponse<B> for LogResponse {
    fn on_response(self, response: &Response<B>, latency: Duration, span: &Span) {
        let status = response.status().as_u16();
        span.record("http.response.status_code", i64::from(status));
        if response.status().is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        tracing::info!(
            status,
            latency_ms = latency.as_secs_f64() * 1000.0,
            "request"
        );
    }
}

/// How many API requests may be handled at once, counted separately for reads and writes so a
/// burst of slow writes (each waits for an fsync) never starves cheap reads, or the other way.
#[derive(Clone)]
pub struct InFlightLimit {
    reads: Arc<Semaphore>,
    writes: Arc<Semaphore>,
}

impl InFlightLimit {
    pub fn new(each: usize) -> Self {
        Self {
            reads: Arc::new(Semaphore::new(each)),
            writes: Arc::new(Semaphore::new(each)),
        }
    }
}

/// Beyond the limit a request is answered at once with 503 and Retry-After instead of queueing:
/// a queue would only turn overload into timeouts, and unbounded memory.
pub async fn shed_load(
    State(limit): State<InFlightLimit>,
    request: Request,
    next: Next,
) -> Response<axum::body::Body> {
    let slots = match *request.method() {
        Method::GET | Method::HEAD | Method::OPTIONS => &limit.reads,
        _ => &limit.writes,
    };
    match slots.clone().try_acquire_owned() {
        Ok(_slot) => next.run(request).await,
        Err(_) => crate::error::ApiError::Unavailable(
            "the server is at its concurrency limit, retry later".into(),
        )
        .into_response(),
    }
}

/// Counts and times every request by method, route template and status.
pub async fn track_metrics(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> impl IntoResponse {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = route_of(&request).to_owned();
    let _in_flight = InFlight::enter(&state.metrics);

    let response = next.run(request).await;

    let status = response.status();
    let labels = [method, route.as_str(), status.as_str()];
    state.metrics.http_requests.with_label_values(&labels).inc();
    state
        .metrics
        .http_duration
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Keeps `http_requests_in_flight` right even when a client hangs up mid-request (the future is
/// dropped, and so is this).
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn enter(metrics: &'a Metrics) -> Self {
        metrics.http_in_flight.inc();
        Self(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.http_in_flight.dec();
    }
}

/// A handler panicked: count it, log it (inside the request span, so with the request id) and
/// answer with the JSON error shape instead of dropping the connection.
pub fn panic_response(
    metrics: Metrics,
) -> impl Fn(Box<dyn Any + Send + 'static>) -> Response<axum::body::Body> + Clone {
    move |panic| {
        metrics.http_panics.inc();
        let detail = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        tracing::error!(panic = %detail, "handler panicked");
        crate::error::json_response(StatusCode::INTERNAL_SERVER_ERROR, "ERROR", "internal error")
    }
}

//! Per-request telemetry: the request span and log line (tower-http's TraceLayer with our span
//! and response hooks), the HTTP metrics, and the JSON answer to a panic.

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, Response, StatusCode};
use axum::middleware::Next;
use axum::response::IntoResponse;
use opentelemetry::trace::TraceContextExt;
use tokio::sync::Semaphore;
use tracing::field::Empty;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::REQUEST_ID;
use crate::telemetry::metrics::{Metrics, UNMATCHED_ROUTE};

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

/// Per request: a span that continues the caller's trace (the parent of the storage spans and of
/// any log line inside the request), the HTTP metrics, and the one log line.
///
/// Written out rather than tower-http's `TraceLayer`, for cost: measured with callgrind, the JSON
/// log formatter re-read and re-wrote the request span's fields for each `record` and for every
/// line logged inside the span, which was half of all the instructions a `/health-check` took.
/// Here the span carries only what log lines inside it need (request id, trace id); the HTTP
/// attributes go to OpenTelemetry directly; and the request line is logged after the span is
/// left, with its own fields.
pub async fn observe(
    State(metrics): State<Metrics>,
    request: Request,
    next: Next,
) -> Response<axum::body::Body> {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
    let request_id = request.headers().get(REQUEST_ID).cloned();
    let request_id = request_id
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let (span, trace) = request_span(request.headers(), method, route, request_id);
    if trace.exported {
        span.set_attribute("http.request.method", method);
        span.set_attribute("http.route", route.to_owned());
        span.set_attribute("url.path", request.uri().path().to_owned());
    }
    let _in_flight = InFlight::enter(&metrics);

    let response = next.run(request).instrument(span.clone()).await;

    let status = response.status();
    if trace.exported {
        span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
        if status.is_server_error() {
            span.set_status(opentelemetry::trace::Status::error(
                status.as_str().to_owned(),
            ));
        }
    }
    drop(span);
    let elapsed = started.elapsed();
    metrics.observe_request(method, route, status.as_u16(), elapsed.as_secs_f64());
    tracing::info!(
        method,
        route,
        status = status.as_u16(),
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        request_id,
        trace_id = trace.trace_id.as_deref(),
        span_id = trace.span_id.as_deref(),
        "request"
    );
    response
}

/// The trace a request belongs to, for its log line.
struct TraceIds {
    /// Whether OpenTelemetry is on and this request's span is sampled.
    exported: bool,
    trace_id: Option<String>,
    span_id: Option<String>,
}

fn request_span(
    headers: &axum::http::HeaderMap,
    method: &'static str,
    route: &str,
    request_id: &str,
) -> (Span, TraceIds) {
    let caller = caller_trace_id(headers);
    let span = tracing::info_span!(
        "request",
        otel.name = Empty,
        otel.kind = "server",
        request_id,
        trace_id = caller,
        span_id = Empty,
    );
    // Continue the caller's trace (W3C traceparent). Without the OpenTelemetry layer (traces
    // off) this does nothing, and log lines carry the caller's trace id.
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&opentelemetry_http::HeaderExtractor(headers))
    });
    let traced = span.set_parent(parent).is_ok();
    let ours = traced.then(|| {
        // Named before the span is built: OpenTelemetry reads the name then.
        span.record("otel.name", format!("{method} {route}"));
        span.context().span().span_context().clone()
    });
    let Some(ours) = ours.filter(|context| context.is_valid()) else {
        let trace_id = caller.map(str::to_owned);
        let ids = TraceIds {
            exported: false,
            trace_id,
            span_id: None,
        };
        return (span, ids);
    };
    let trace_id = ours.trace_id().to_string();
    let span_id = ours.span_id().to_string();
    span.record("trace_id", trace_id.as_str());
    span.record("span_id", span_id.as_str());
    let ids = TraceIds {
        exported: ours.is_sampled(),
        trace_id: Some(trace_id),
        span_id: Some(span_id),
    };
    (span, ids)
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

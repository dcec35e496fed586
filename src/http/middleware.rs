//! What every request goes through besides its handler: telemetry ([`ObserveLayer`]: metrics,
//! the log line, the server span), the API limits ([`ApiLimitsLayer`]: in-flight requests and
//! the request timeout), the body limits ([`BodyLimits`]), request-id hygiene, and the JSON
//! answer to a panic.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use opentelemetry::trace::TraceContextExt;
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};
use tower_http::timeout::DeadlineBody;
use tracing::field::Empty;
use tracing::instrument::Instrumented;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::REQUEST_ID;
use crate::error::ApiError;
use crate::telemetry::json_lines::{self, RequestContext};
use crate::telemetry::metrics::{Metrics, UNMATCHED_ROUTE};

/// Gives every request one `x-request-id`: the client's if it sent one that is short and plain
/// (and sent it once), otherwise a fresh UUID v4, so logs and answers never carry a client's 8 KB
/// or odd bytes. [`Observe`] logs it and sends it back.
///
/// Ours rather than tower-http's `SetRequestIdLayer`: that layer also puts the id into the
/// request's extensions, which nothing reads. With axum's three (the original URI, the matched
/// path, the URL parameters) that was the fourth entry, so the map grew (a rehash, an allocation
/// and a free) on every request. Replacing the layer took a cached GET list from 27.9k to 26.6k
/// instructions (callgrind).
pub fn ensure_request_id<B>(mut request: axum::http::Request<B>) -> axum::http::Request<B> {
    let mut ids = request.headers().get_all(REQUEST_ID).iter();
    let fit = match (ids.next(), ids.next()) {
        (Some(id), None) => {
            id.len() <= 128
                && id
                    .as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
        }
        _ => false,
    };
    if !fit {
        request.headers_mut().insert(REQUEST_ID, fresh_request_id());
    }
    request
}

/// A UUID v4 (from a thread-local generator: uuid's `fast-rng`), formatted on the stack.
fn fresh_request_id() -> HeaderValue {
    let mut text = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(id).expect("a UUID is a valid header value")
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

/// Per request: the HTTP metrics, the one log line, the `x-request-id` answer header, and (when
/// traces are on) a server span that continues the caller's trace and parents the storage spans.
/// Lines logged while the request is handled carry its request id and trace ids (see
/// [`json_lines::in_request`]).
///
/// A tower service of its own rather than `axum::middleware::from_fn` or tower-http's
/// `TraceLayer`, for cost: this runs on every request, and measured with callgrind and wrk,
/// `from_fn` boxes the next service and the future per request, and a `tracing` span per request
/// (kept for log lines inside it) cost 8% of the requests per second of a cached GET. Without an
/// exporter no span is built at all; log lines get the ids from a task-local instead.
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Metrics,
}

impl ObserveLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, E> Service<Request> for Observe<S>
where
    S: Service<Request, Response = axum::http::Response<B>, Error = E>,
{
    type Response = axum::http::Response<B>;
    type Error = E;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let method = method_label(request.method());
        let route = request.extensions().get::<MatchedPath>().cloned();
        let route_label = route.as_ref().map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
        let (span, trace) = request_span(request.headers(), method, route_label);
        if trace.exported {
            span.set_attribute("http.request.method", method);
            span.set_attribute("url.scheme", "http");
            span.set_attribute("http.route", route_label.to_owned());
            span.set_attribute("url.path", request.uri().path().to_owned());
        }
        let context = RequestContext {
            request_id: request.headers().get(REQUEST_ID).cloned(),
            trace_id: trace.trace_id,
            span_id: trace.span_id,
        };
        let handled = self.inner.call(request).instrument(span.clone());
        ObserveFuture {
            inner: json_lines::in_request(context, handled),
            done: Some(Observed {
                started,
                method,
                route,
                exported: trace.exported.then_some(span),
                _in_flight: InFlight::enter(&self.metrics),
                metrics: self.metrics.clone(),
            }),
        }
    }
}

/// What [`ObserveFuture`] needs once the response is there.
struct Observed {
    started: Instant,
    method: &'static str,
    route: Option<MatchedPath>,
    /// The request's span, when it is exported: it gets the status.
    exported: Option<Span>,
    metrics: Metrics,
    _in_flight: InFlight,
}

pin_project! {
    pub struct ObserveFuture<F> {
        #[pin]
        inner: TaskLocalFuture<RequestContext, Instrumented<F>>,
        done: Option<Observed>,
    }
}

impl<F, B, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<axum::http::Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let mut result = std::task::ready!(this.inner.as_mut().poll(cx));
        let done = this
            .done
            .take()
            .expect("ObserveFuture polled after completion");
        let context = this.inner.take_value();
        if let Ok(response) = &mut result {
            // The request id goes back to the caller here rather than through tower-http's
            // `PropagateRequestIdLayer`: that layer also puts it into the response's extensions,
            // which nothing reads. Without that map's allocation, insert and drop a cached GET
            // takes 30.1k instructions instead of 31.8k (callgrind).
            if let Some(id) = context.as_ref().and_then(|c| c.request_id.as_ref()) {
                response
                    .headers_mut()
                    .entry(REQUEST_ID)
                    .or_insert_with(|| id.clone());
            }
            done.finish(response.status(), context);
        }
        Poll::Ready(result)
    }
}

impl Observed {
    fn finish(self, status: StatusCode, context: Option<RequestContext>) {
        if let Some(span) = &self.exported {
            span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
            if status.is_server_error() {
                span.set_status(opentelemetry::trace::Status::error(
                    status.as_str().to_owned(),
                ));
            }
        }
        let elapsed = self.started.elapsed();
        let route = self
            .route
            .as_ref()
            .map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
        self.metrics
            .observe_request(self.method, route, status.as_u16(), elapsed.as_secs_f64());
        let context = context.unwrap_or_default();
        let request_id = context.request_id.as_ref().and_then(|v| v.to_str().ok());
        tracing::info!(
            // The message as a plain field: the same line as `info!(..., "request")`, whose
            // message is format arguments, formatted per line (0.4k instructions, callgrind).
            message = "request",
            method = self.method,
            route,
            status = status.as_u16(),
            // Whole microseconds: `0.369`, not the `0.36901700000000004` of the float product.
            latency_ms = elapsed.as_micros() as f64 / 1000.0,
            request_id,
            trace_id = context.trace_id.as_deref(),
            span_id = context.span_id.as_deref(),
        );
    }
}

/// The trace a request belongs to, for its log lines.
struct TraceIds {
    /// Whether OpenTelemetry is on and this request's span is sampled.
    exported: bool,
    trace_id: Option<String>,
    span_id: Option<String>,
}

/// The request's server span, named `METHOD route`, continuing the caller's trace (W3C
/// `traceparent`). Only the trace layer takes these spans: with traces off it is a disabled span
/// that costs nothing, and log lines carry the caller's trace id.
fn request_span(headers: &HeaderMap, method: &'static str, route: &str) -> (Span, TraceIds) {
    let span = tracing::info_span!("request", otel.name = Empty, otel.kind = "server");
    let caller = || TraceIds {
        exported: false,
        trace_id: caller_trace_id(headers).map(str::to_owned),
        span_id: None,
    };
    if span.is_disabled() {
        return (span, caller());
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&opentelemetry_http::HeaderExtractor(headers))
    });
    if span.set_parent(parent).is_err() {
        return (span, caller());
    }
    // Named before the span is built: OpenTelemetry reads the name then.
    span.record("otel.name", format!("{method} {route}"));
    let ours = span.context().span().span_context().clone();
    if !ours.is_valid() {
        return (span, caller());
    }
    let ids = TraceIds {
        exported: ours.is_sampled(),
        trace_id: Some(ours.trace_id().to_string()),
        span_id: Some(ours.span_id().to_string()),
    };
    (span, ids)
}

/// The trace id of a valid `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`).
fn caller_trace_id(headers: &HeaderMap) -> Option<&str> {
    // A `HeaderName` constant, not a `&str`: a string key is parsed and lower-cased per lookup.
    const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    let value = headers.get(TRACEPARENT)?.to_str().ok()?;
    let mut parts = value.split('-');
    let (_version, trace_id) = (parts.next()?, parts.next()?);
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    (trace_id.len() == 32 && hex(trace_id) && trace_id.bytes().any(|b| b != b'0'))
        .then_some(trace_id)
}

/// The limits on a request's body: its size (axum's `DefaultBodyLimit`, which the extractors
/// read; past it the answer is 413) and the time it may take to arrive (then reading it fails,
/// and the handler answers 408). Only requests that have a body get them: most are GETs, and
/// for those the limit's request extension (an insert and its drop) and the deadline's timer
/// would be work for nothing.
#[derive(Clone)]
pub struct BodyLimits<S> {
    without_body: S,
    with_body: <DefaultBodyLimit as Layer<S>>::Service,
    read_timeout: Duration,
}

impl<S: Clone> BodyLimits<S> {
    pub fn new(inner: S, max_bytes: usize, read_timeout: Duration) -> Self {
        Self {
            with_body: DefaultBodyLimit::max(max_bytes).layer(inner.clone()),
            without_body: inner,
            read_timeout,
        }
    }
}

impl<S> Service<Request> for BodyLimits<S>
where
    S: Service<Request>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    /// Both paths are the same inner service (the router, always ready), so both are polled.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        std::task::ready!(self.without_body.poll_ready(cx))?;
        self.with_body.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> S::Future {
        if request.body().is_end_stream() {
            return self.without_body.call(request);
        }
        let read_timeout = self.read_timeout;
        self.with_body
            .call(request.map(|body| Body::new(DeadlineBody::new(read_timeout, body))))
    }
}

/// The paths [`ApiLimits`] limits.
pub const API_PREFIX: &str = "/api/";

/// The limits on the API routes (those under [`API_PREFIX`]; not the probes, so an overloaded pod
/// is not also restarted or pulled from service for being busy): how many requests are handled at
/// once, counted separately for reads and writes so a burst of slow writes (each waits for an
/// fsync) never starves cheap reads, or the other way; and how long one may take.
///
/// Beyond the in-flight limit a request is answered at once with 503 and `Retry-After` instead
/// of queueing: a queue would only turn overload into timeouts, and unbounded memory. Past the
/// request timeout the answer is a 503 too (the server, not the client, was too slow).
///
/// It picks the API routes by their matched path, not by being layered onto the API router
/// alone: it then sits in the same per-route layer as [`ObserveLayer`], and axum boxes each
/// route once instead of twice (every box is cloned, and its future boxed, per request).
#[derive(Clone)]
pub struct ApiLimitsLayer {
    reads: Arc<Semaphore>,
    writes: Arc<Semaphore>,
    timeout: Duration,
}

impl ApiLimitsLayer {
    pub fn new(in_flight_each: usize, timeout: Duration) -> Self {
        Self {
            reads: Arc::new(Semaphore::new(in_flight_each)),
            writes: Arc::new(Semaphore::new(in_flight_each)),
            timeout,
        }
    }
}

impl<S> Layer<S> for ApiLimitsLayer {
    type Service = ApiLimits<S>;

    fn layer(&self, inner: S) -> ApiLimits<S> {
        ApiLimits {
            inner,
            limits: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ApiLimits<S> {
    inner: S,
    limits: ApiLimitsLayer,
}

impl<S, E> Service<Request> for ApiLimits<S>
where
    S: Service<Request, Response = Response, Error = E>,
{
    type Response = Response;
    type Error = E;
    type Future = LimitedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let api = request
            .extensions()
            .get::<MatchedPath>()
            .is_some_and(|route| route.as_str().starts_with(API_PREFIX));
        if !api {
            return LimitedFuture::Unlimited {
                inner: self.inner.call(request),
            };
        }
        let slots = match *request.method() {
            Method::GET | Method::HEAD | Method::OPTIONS => &self.limits.reads,
            _ => &self.limits.writes,
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => LimitedFuture::Admitted {
                inner: tokio::time::timeout(self.limits.timeout, self.inner.call(request)),
                _slot: slot,
            },
            Err(_) => LimitedFuture::Shed {
                response: Some(
                    ApiError::Unavailable(
                        "the server is at its concurrency limit, retry later".into(),
                    )
                    .into_response(),
                ),
            },
        }
    }
}

pin_project! {
    #[project = LimitedProjection]
    pub enum LimitedFuture<F> {
        Admitted {
            #[pin]
            inner: tokio::time::Timeout<F>,
            _slot: OwnedSemaphorePermit,
        },
        Shed {
            response: Option<Response>,
        },
        Unlimited {
            #[pin]
            inner: F,
        },
    }
}

impl<F, E> Future for LimitedFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            LimitedProjection::Admitted { inner, .. } => match std::task::ready!(inner.poll(cx)) {
                Ok(answered) => Poll::Ready(answered),
                Err(_elapsed) => Poll::Ready(Ok(ApiError::Unavailable(
                    "the server did not answer within the request timeout".into(),
                )
                .into_response())),
            },
            LimitedProjection::Shed { response } => Poll::Ready(Ok(response
                .take()
                .expect("LimitedFuture polled after completion"))),
            LimitedProjection::Unlimited { inner } => inner.poll(cx),
        }
    }
}

/// Keeps `http_requests_in_flight` right even when a client hangs up mid-request (the future is
/// dropped, and so is this).
struct InFlight(Metrics);

impl InFlight {
    fn enter(metrics: &Metrics) -> Self {
        metrics.http_in_flight.inc();
        Self(metrics.clone())
    }
}

impl Drop for InFlight {
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

//! The HTTP surface. A request goes: [`router`] (shared layers) -> one file per area:
//! [`original`] (the Flask-compatible API), [`v1`] (the versioned API), [`health`] (probes and
//! version), [`openapi`] (the generated document). Handlers parse into domain types and call the
//! store; nothing here knows SQL.

pub mod extract;
pub mod health;
pub mod middleware;
pub mod openapi;
pub mod original;
pub mod rate_limit;
pub mod v1;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower::util::MapRequest;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::{SetResponseHeader, SetResponseHeaderLayer};
use utoipa_axum::router::OpenApiRouter;

use crate::BuildInfo;
use crate::auth::AdminToken;
use crate::error::ApiError;
use crate::shutdown::Lifecycle;
use crate::store::SharedStore;
use crate::telemetry::metrics::Metrics;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler can reach, behind one `Arc`: axum clones the state for every request (and
/// extractor), and one reference count is cheaper than one per field (perf: 3% of a cached GET).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The services and settings behind [`AppState`].
pub struct Shared {
    pub store: SharedStore,
    pub admin_token: Option<AdminToken>,
    pub lifecycle: Lifecycle,
    pub metrics: Metrics,
    pub build: BuildInfo,
    pub max_body_bytes: u64,
    pub openapi_json: Bytes,
}

/// Limits the router applies to every request.
#[derive(Clone)]
pub struct Limits {
    pub request_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_body_bytes: u64,
    pub max_concurrency: usize,
    pub write_rate_limit: Option<Arc<rate_limit::Config>>,
}

/// The API as one service: the routes inside the shared layers ([`with_shared_layers`]).
///
/// The stack's own type, spelled out, rather than a `BoxCloneSyncService`: hyper's glue clones
/// the service for every request, and a box's clone allocates and clones the whole stack behind
/// it, and boxes its future too (a cached GET list 28.1k -> 27.9k instructions, `/health-check`
/// 25.1k -> 24.7k, callgrind). And not
/// a `Router` with the stack as its fallback service: that outer router routed every request a
/// second time (a path lookup, URL parameters, a service clone: about 2k of 37.5k).
pub type ApiService = MapRequest<
    SetResponseHeader<SetResponseHeader<middleware::BodyLimits<Router>, HeaderValue>, HeaderValue>,
    fn(Request) -> Request,
>;

/// The API service: every route, the OpenAPI document built from the same handlers, and the
/// shared layers. Tests drive it directly or through a listener.
pub fn router(shared: Shared, limits: Limits) -> ApiService {
    let mut api = OpenApiRouter::with_openapi(openapi::base())
        .merge(original::routes())
        .merge(v1::routes());
    if let Some(config) = &limits.write_rate_limit {
        api = api.layer(rate_limit::layer(config.clone()));
    }
    let (routes, document) = api.merge(health::routes()).split_for_parts();
    let state = AppState::new(Shared {
        openapi_json: openapi::render(document),
        ..shared
    });
    with_shared_layers(routes, state, limits)
}

/// What every route shares, outermost first: request id, security headers, the body limits (size
/// and time), then per route the request span and log line, metrics, the request id's answer
/// header, panic recovery and, on the API routes, the in-flight limit and request timeout; and
/// the JSON 404/405.
///
/// Only what needs the matched route (`observe` for the `route` label, the API limits to tell
/// API routes from probes) is layered per route, in one `layer` call: axum boxes a route again
/// for each `Router::layer`, and clones every box for every request. The rest wraps the whole
/// router once.
pub fn with_shared_layers(routes: Router<AppState>, state: AppState, limits: Limits) -> ApiService {
    let max_body = usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX);
    let routes = routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(middleware::ObserveLayer::new(state.metrics.clone()))
                .layer(CatchPanicLayer::custom(middleware::panic_response(
                    state.metrics.clone(),
                )))
                .layer(middleware::ApiLimitsLayer::new(
                    limits.max_concurrency,
                    limits.request_timeout,
                )),
        )
        .with_state(state);
    ServiceBuilder::new()
        .map_request(middleware::ensure_request_id as fn(Request) -> Request)
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        // Nothing here is meant to render in a browser: no scripts, frames or loads.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
        .layer_fn(|routes| middleware::BodyLimits::new(routes, max_body, limits.body_read_timeout))
        .service(routes)
}

/// The metrics router, for the second listener: `/metrics` in the Prometheus text format.
pub fn metrics_router(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(serve_metrics))
        .with_state(metrics)
}

async fn serve_metrics(axum::extract::State(metrics): axum::extract::State<Metrics>) -> Response {
    // The text exposition format, labelled as the Go client does.
    let content_type = "text/plain; version=0.0.4; charset=utf-8";
    (
        [(axum::http::header::CONTENT_TYPE, content_type)],
        metrics.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed(method: Method) -> Response {
    let message = format!("method {method} is not allowed on this route");
    crate::error::json_response(StatusCode::METHOD_NOT_ALLOWED, "ERROR", &message)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::telemetry::test_support::SharedBuffer;

    async fn state() -> (AppState, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let options = crate::store::StoreOptions {
            url: format!("sqlite://{}/c.db", dir.path().display()),
            max_connections: 1,
            timeout: Duration::from_secs(1),
            sqlite_synchronous: crate::store::sqlite::Synchronous::Normal,
        };
        let state = AppState::new(Shared {
            store: crate::store::open(&options).await.unwrap(),
            admin_token: None,
            lifecycle: Default::default(),
            metrics: Metrics::new(&crate::BuildInfo::CURRENT),
            build: crate::BuildInfo::CURRENT,
            max_body_bytes: 1024,
            openapi_json: Bytes::new(),
        });
        (state, dir)
    }

    fn limits() -> Limits {
        Limits {
            request_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(5),
            max_body_bytes: 1024,
            max_concurrency: 8,
            write_rate_limit: None,
        }
    }

    /// Every log line of this test binary. The subscriber is process-wide: a per-test (scoped)
    /// one races with other tests over tracing's cached callsite interest.
    fn captured_logs() -> &'static SharedBuffer {
        static LOGS: std::sync::OnceLock<SharedBuffer> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = SharedBuffer::default();
            let writer = logs.clone();
            use tracing_subscriber::layer::SubscriberExt;
            use tracing_subscriber::util::SubscriberInitExt;
            tracing_subscriber::registry()
                .with(crate::telemetry::json_lines::JsonLines::new(move || {
                    writer.clone()
                }))
                .init();
            logs
        })
    }

    #[tokio::test]
    async fn a_panicking_handler_gets_a_json_500_counted_and_logged_with_its_request_id() {
        let logs = captured_logs();
        let (state, _dir) = state().await;
        let metrics = state.metrics.clone();
        async fn broken() -> &'static str {
            panic!("the handler broke")
        }
        let routes = Router::new().route("/boom", axum::routing::get(broken));
        let app = with_shared_layers(routes, state, limits());
        let request = Request::get("/boom")
            .header("x-request-id", "req-42")
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();

        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["x-request-id"], "req-42");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(
            &body[..],
            br#"{"status":"ERROR","message":"internal error"}"#
        );
        assert_eq!(metrics.http_panics.get(), 1);
        let logged = logs.text();
        let line = logged
            .lines()
            .find(|l| l.contains("handler panicked"))
            .expect("the panic is logged");
        assert!(
            line.contains("the handler broke") && line.contains("req-42"),
            "{line}"
        );
    }

    #[tokio::test]
    async fn every_answer_carries_the_request_id() {
        let (state, _dir) = state().await;
        let routes = Router::new().route(
            "/echo",
            axum::routing::post(|body: Bytes| async move { body }),
        );
        let app = with_shared_layers(routes, state, limits());
        let cases = [
            (Method::POST, "/echo", "small", StatusCode::OK),
            (Method::GET, "/nowhere", "", StatusCode::NOT_FOUND),
            (Method::GET, "/echo", "", StatusCode::METHOD_NOT_ALLOWED),
            (
                Method::POST,
                "/echo",
                &"x".repeat(2048),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
        ];
        for (method, path, body, status) in cases {
            let request = Request::builder()
                .method(method.clone())
                .uri(path)
                .header("x-request-id", "req-7")
                .body(Body::from(body.to_owned()))
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), status, "{method} {path}");
            assert_eq!(
                response.headers().get_all("x-request-id").iter().count(),
                1,
                "{method} {path}"
            );
            assert_eq!(
                response.headers()["x-request-id"],
                "req-7",
                "{method} {path}"
            );
        }
    }

    #[tokio::test]
    async fn unfit_request_ids_are_replaced() {
        let (state, _dir) = state().await;
        let app = with_shared_layers(Router::new(), state, limits());
        for unfit in ["x".repeat(129), "has space".into(), "semi;colon".into()] {
            let request = Request::get("/nowhere")
                .header("x-request-id", unfit.as_str())
                .body(Body::empty())
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            let id = response.headers()["x-request-id"].to_str().unwrap();
            assert_ne!(id, unfit);
            assert_eq!(id.len(), 36, "a fresh UUID");
        }
        // Sent twice, or not at all: one fresh id, a different one each time.
        let twice = Request::get("/nowhere")
            .header("x-request-id", "a")
            .header("x-request-id", "b")
            .body(Body::empty())
            .unwrap();
        let none = Request::get("/nowhere").body(Body::empty()).unwrap();
        let mut fresh = Vec::new();
        for request in [twice, none] {
            let response = app.clone().oneshot(request).await.unwrap();
            let ids: Vec<_> = response.headers().get_all("x-request-id").iter().collect();
            assert_eq!(ids.len(), 1, "{ids:?}");
            let id = ids[0].to_str().unwrap().to_owned();
            assert!(
                id.len() == 36 && id.bytes().filter(|&b| b == b'-').count() == 4,
                "{id}"
            );
            fresh.push(id);
        }
        assert_ne!(fresh[0], fresh[1]);
    }
}

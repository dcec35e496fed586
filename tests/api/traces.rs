//! Traces, proven against a real OTLP receiver (gRPC and HTTP/protobuf) built on the OTLP protobuf
//! definitions: the real binary exports a server span per request that continues the caller's
//! trace, with a storage child span, flushed at shutdown; an absent collector costs nothing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{Db, Server};
use nix::sys::signal::Signal;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// A span as received, with its resource's attributes.
#[derive(Clone, Debug)]
struct Received {
    resource: Vec<KeyValue>,
    span: Span,
}

#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<Received>>>);

impl Collected {
    fn take(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap();
        for resource_spans in request.resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        resource: resource.clone(),
                        span,
                    });
                }
            }
        }
    }

    fn spans(&self) -> Vec<Received> {
        self.0.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl TraceService for Collected {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.take(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Starts an OTLP receiver for `protocol` on 127.0.0.1 and returns its endpoint.
async fn start_receiver(protocol: &str, collected: Collected) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    match protocol {
        "grpc" => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(collected))
                    .serve_with_incoming(incoming),
            );
        }
        _ => {
            let app = axum::Router::new().route(
                "/v1/traces",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let collected = collected.clone();
                    async move {
                        collected.take(ExportTraceServiceRequest::decode(body).unwrap());
                        (
                            [("content-type", "application/x-protobuf")],
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        )
                    }
                }),
            );
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
    }
    format!("http://{addr}")
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|AnyValue { value }| value.as_ref())
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        other => Some(format!("{other:?}")),
    }
}

fn int_attribute(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attribute(attributes, key)? {
        any_value::Value::IntValue(n) => Some(*n),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
const UNSAMPLED_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

async fn spans_continue_the_callers_trace_and_reach_the_collector(protocol: &str) {
    let collected = Collected::default();
    let endpoint = start_receiver(protocol, collected.clone()).await;
    let db = Db::sqlite().await;
    let mut server = Server::start(&[
        ("COMMENTS_DATABASE_URL", &db.url),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_SERVICE_NAME", "comments-under-test"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test,team=platform",
        ),
        // Nothing is exported on a timer during the test: every span must come from the flush
        // at shutdown.
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ("COMMENTS_SHUTDOWN_DELAY", "0s"),
    ]);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;

    let traced = client
        .get(server.url("/api/comment/list/42"))
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(traced.status(), 404);
    let unsampled = client
        .get(server.url("/api/comment/list/42"))
        .header(
            "traceparent",
            format!("00-{UNSAMPLED_TRACE_ID}-{PARENT_ID}-00"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(unsampled.status(), 404);
    let fresh = client
        .post(server.url("/api/comment/new"))
        .json(&serde_json::json!({"email": "t@example.com", "comment": "traced", "content_id": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), 200);

    server.signal(Signal::SIGTERM);
    let status = server.wait(Duration::from_secs(15)).expect("exits");
    assert_eq!(status.code(), Some(0));
    let spans = collected.spans();

    // The server span continues the caller's trace.
    let server_span = spans
        .iter()
        .find(|r| {
            hex(&r.span.trace_id) == TRACE_ID && r.span.parent_span_id == decode_hex(PARENT_ID)
        })
        .unwrap_or_else(|| {
            panic!(
                "no span continuing the caller's trace in {:#?}",
                names(&spans)
            )
        });
    let span = &server_span.span;
    assert_eq!(span.name, "GET /api/comment/list/{content_id}");
    assert_eq!(span.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(
        string_attribute(&span.attributes, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(
        string_attribute(&span.attributes, "http.route").as_deref(),
        Some("/api/comment/list/{content_id}")
    );
    assert_eq!(
        string_attribute(&span.attributes, "url.path").as_deref(),
        Some("/api/comment/list/42")
    );
    assert_eq!(
        string_attribute(&span.attributes, "url.scheme").as_deref(),
        Some("http")
    );
    assert_eq!(
        int_attribute(&span.attributes, "http.response.status_code"),
        Some(404),
        "{:?}",
        span.attributes
    );
    assert_eq!(
        string_attribute(&server_span.resource, "service.name").as_deref(),
        Some("comments-under-test")
    );
    assert_eq!(
        string_attribute(&server_span.resource, "deployment.environment").as_deref(),
        Some("test")
    );
    assert_eq!(
        string_attribute(&server_span.resource, "team").as_deref(),
        Some("platform")
    );

    // ...with a storage call as its child.
    let child = spans
        .iter()
        .find(|r| r.span.parent_span_id == span.span_id)
        .expect("a storage child span");
    assert_eq!(child.span.name, "store.list");
    assert_eq!(child.span.trace_id, span.trace_id);
    assert_eq!(child.span.kind, 3, "SPAN_KIND_CLIENT");
    assert_eq!(
        string_attribute(&child.span.attributes, "db.system.name").as_deref(),
        Some("sqlite")
    );

    // The caller said "not sampled": the parent-based sampler exports nothing of that trace.
    assert!(
        !spans
            .iter()
            .any(|r| hex(&r.span.trace_id) == UNSAMPLED_TRACE_ID)
    );

    // A request without traceparent starts a new trace, also with its storage child.
    let created = spans
        .iter()
        .find(|r| r.span.name == "POST /api/comment/new")
        .expect("the POST span");
    assert!(created.span.parent_span_id.is_empty(), "a root span");
    assert!(spans.iter().any(|r| r.span.name == "store.create" && r.span.parent_span_id == created.span.span_id));

    // The request's log line carries the same trace and span ids.
    let logs = server.logs_after_exit();
    let line = logs
        .iter()
        .find(|l| l.contains(r#""message":"request""#) && l.contains(TRACE_ID))
        .expect("a request log line with the trace id");
    let entry: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(entry["trace_id"], TRACE_ID);
    assert_eq!(entry["span_id"], hex(&span.span_id));
}

fn decode_hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn names(spans: &[Received]) -> Vec<(String, String)> {
    spans
        .iter()
        .map(|r| (r.span.name.clone(), hex(&r.span.trace_id)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_spans_continue_the_callers_trace() {
    spans_continue_the_callers_trace_and_reach_the_collector("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_spans_continue_the_callers_trace() {
    spans_continue_the_callers_trace_and_reach_the_collector("http/protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_never_slows_requests_and_drops_are_counted() {
    // A port with nothing behind it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let db = Db::sqlite().await;
    let server = Server::start(&[
        ("COMMENTS_DATABASE_URL", &db.url),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "16"),
    ]);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;

    let mut slowest = Duration::ZERO;
    for n in 0..300 {
        let started = Instant::now();
        let response = client
            .post(server.url("/api/comment/new"))
            .json(&serde_json::json!({"email": "d@example.com", "comment": format!("c{n}"), "content_id": 3}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        slowest = slowest.max(started.elapsed());
    }
    // An exporter in the request path would make requests wait for connection attempts.
    assert!(
        slowest < Duration::from_secs(1),
        "slowest request took {slowest:?}"
    );

    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = client
            .get(format!("http://{}/metrics", server.metrics_addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let dropped = metric(&text, "comments_trace_spans_dropped_total ");
        let failed = metric(&text, "comments_trace_spans_export_failed_total ");
        if dropped > 0.0 && failed > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dropped={dropped} failed={failed}: spans lost to a full queue or a dead collector are not counted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

//! The metrics contract: exact names, types and label sets (the dashboard and alerts rely on
//! them), counts that agree with the traffic, and label sets that stay bounded whatever clients
//! send.

use std::collections::{BTreeMap, BTreeSet};

use crate::common::{Db, TestApp};

/// One scraped sample: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format: `# TYPE` lines and samples.
fn parse(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap();
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value: value.parse().unwrap(),
        });
    }
    (types, samples)
}

fn label_names(samples: &[Sample], name: &str) -> BTreeSet<String> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .flat_map(|s| s.labels.keys().cloned())
        .collect()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

async fn traffic(app: &TestApp) {
    let body = r#"{"email":"m@example.com","comment":"metered","content_id":1}"#;
    for _ in 0..3 {
        assert_eq!(app.post_json("/api/comment/new", body).await.status, 200);
    }
    for _ in 0..5 {
        assert_eq!(app.get("/api/comment/list/1").await.status, 200);
    }
    assert_eq!(app.get("/api/comment/list/404").await.status, 404);
    assert_eq!(app.post_json("/api/comment/new", "{").await.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_names_types_and_labels_are_the_contract() {
    let app = TestApp::spawn(Db::sqlite().await).await;
    traffic(&app).await;

    let response = app
        .client
        .get(format!("http://{}/metrics", app.metrics_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let (types, samples) = parse(&response.text().await.unwrap());

    let expected_types = [
        ("http_requests_total", "counter"),
        ("http_request_duration_seconds", "histogram"),
        ("http_requests_in_flight", "gauge"),
        ("comments_created_total", "counter"),
        ("comments_store_operation_duration_seconds", "histogram"),
        ("comments_build_info", "gauge"),
        ("comments_trace_spans_dropped_total", "counter"),
        ("comments_trace_spans_export_failed_total", "counter"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ];
    for (name, kind) in expected_types {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
    }

    let http = set(&["method", "route", "status"]);
    assert_eq!(label_names(&samples, "http_requests_total"), http);
    assert_eq!(
        label_names(&samples, "http_request_duration_seconds_count"),
        http
    );
    let mut with_le = http.clone();
    with_le.insert("le".into());
    assert_eq!(
        label_names(&samples, "http_request_duration_seconds_bucket"),
        with_le
    );
    assert_eq!(
        label_names(&samples, "comments_store_operation_duration_seconds_count"),
        set(&["operation", "outcome"])
    );
    assert_eq!(
        label_names(&samples, "comments_build_info"),
        set(&["commit", "version"])
    );
    assert!(label_names(&samples, "http_requests_in_flight").is_empty());
    assert!(label_names(&samples, "comments_created_total").is_empty());

    // Buckets exactly as DESIGN.md lists them.
    let buckets: Vec<String> = samples
        .iter()
        .filter(|s| {
            s.name == "http_request_duration_seconds_bucket"
                && s.labels["route"] == "/api/comment/list/{content_id}"
                && s.labels["status"] == "200"
        })
        .map(|s| s.labels["le"].clone())
        .collect();
    assert_eq!(
        buckets,
        [
            "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
            "1", "2.5", "5", "10", "+Inf"
        ]
    );

    // Counts agree with the traffic sent.
    let list = [
        ("method", "GET"),
        ("route", "/api/comment/list/{content_id}"),
    ];
    assert_eq!(
        value(
            &samples,
            "http_requests_total",
            &[list[0], list[1], ("status", "200")]
        ),
        5.0
    );
    assert_eq!(
        value(
            &samples,
            "http_requests_total",
            &[list[0], list[1], ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "http_request_duration_seconds_count",
            &[list[0], list[1], ("status", "200")]
        ),
        5.0
    );
    let new = [("method", "POST"), ("route", "/api/comment/new")];
    assert_eq!(
        value(
            &samples,
            "http_requests_total",
            &[new[0], new[1], ("status", "200")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &samples,
            "http_requests_total",
            &[new[0], new[1], ("status", "400")]
        ),
        1.0
    );
    assert_eq!(value(&samples, "comments_created_total", &[]), 3.0);
    assert_eq!(
        value(
            &samples,
            "comments_store_operation_duration_seconds_count",
            &[("operation", "create"), ("outcome", "ok")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &samples,
            "comments_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(value(&samples, "http_requests_in_flight", &[]), 0.0);
    assert!(value(&samples, "process_resident_memory_bytes", &[]) > 0.0);

    // The commit baked in at build time, the same in /version and build_info. scripts/test.sh
    // builds with it set to the checkout's HEAD; a plain `cargo test` says "unknown".
    let commit = option_env!("COMMENTS_GIT_COMMIT")
        .filter(|c| !c.is_empty())
        .unwrap_or("unknown");
    let version: serde_json::Value =
        serde_json::from_slice(&app.get("/version").await.body).unwrap();
    assert_eq!(version["commit"], commit);
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        value(&samples, "comments_build_info", &[("commit", commit)]),
        1.0
    );
    if commit != "unknown" {
        let head = std::process::Command::new("git")
            .args(["rev-parse", &format!("--short={}", commit.len()), "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&head.stdout).trim(),
            commit,
            "built from another commit"
        );
    }

    // /metrics is not on the public port.
    assert_eq!(app.get("/metrics").await.status, 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_sets_stay_bounded_whatever_paths_clients_send() {
    let app = TestApp::spawn(Db::sqlite().await).await;
    for n in 0..300 {
        app.get(&format!("/api/comment/list/item-{n}")).await;
        app.get(&format!("/api/v1/comments/{}", n + 1)).await;
        app.get(&format!("/junk/{n}/{}", "x".repeat(n % 7))).await;
        app.get(&format!("/api/comment/list/bad%20id{n}")).await;
    }
    for method in ["PATCH", "FOO", "PROPFIND", "BREW"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        app.client
            .request(method, app.url("/health-check"))
            .send()
            .await
            .unwrap();
    }
    let (_, samples) = parse(&app.metrics().await);
    let series: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == "http_requests_total")
        .collect();
    let routes: BTreeSet<&str> = series.iter().map(|s| s.labels["route"].as_str()).collect();
    assert!(series.len() <= 15, "{} series: {series:#?}", series.len());
    assert!(routes.contains("unmatched"));
    assert!(
        routes
            .iter()
            .all(|r| *r == "unmatched" || r.starts_with('/') && !r.contains("item-"))
    );
    let methods: BTreeSet<&str> = series.iter().map(|s| s.labels["method"].as_str()).collect();
    assert!(methods.contains("OTHER"), "{methods:?}");
    assert!(!methods.contains("BREW"));
    let total: f64 = series.iter().map(|s| s.value).sum();
    assert!(total >= 1204.0, "every request counted: {total}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_replay_is_not_counted_as_created() {
    let app = TestApp::spawn(Db::sqlite().await).await;
    for _ in 0..3 {
        let response = app
            .client
            .post(app.url("/api/v1/contents/1/comments"))
            .header("content-type", "application/json")
            .header("idempotency-key", "once")
            .body(r#"{"email":"r@example.com","comment":"same"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let (_, samples) = parse(&app.metrics().await);
    assert_eq!(value(&samples, "comments_created_total", &[]), 1.0);
    app.stop().await;
}

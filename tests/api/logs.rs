//! Logs: one JSON line per request with method, route, status, latency, request id and trace id;
//! the request id honoured or generated and returned; no secret ever logged.

use std::time::Duration;

use crate::common::{Db, Server};
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_logs_one_json_line_with_its_ids() {
    let db = Db::sqlite().await;
    let mut server = Server::start(&[("COMMENTS_DATABASE_URL", &db.url)]);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;
    server.drain_logs();

    let traceparent = "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01";
    let given = client
        .get(server.url("/api/comment/list/9"))
        .header("x-request-id", "client-chose-this")
        .header("traceparent", traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "client-chose-this");
    let generated = client
        .get(server.url("/health-check"))
        .send()
        .await
        .unwrap();
    let generated_id = generated.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(generated_id.len(), 36, "a UUID: {generated_id}");

    server.signal(Signal::SIGTERM);
    server.wait(Duration::from_secs(15)).expect("exits");
    // Every line is JSON; the request lines are the two requests above (the readiness polls
    // before them may still be on their way when the test drained the logs).
    let requests: Vec<serde_json::Value> = server
        .logs_after_exit()
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .filter(|entry: &serde_json::Value| {
            entry["message"] == "request" && entry["route"] != "/readyz"
        })
        .collect();
    assert_eq!(requests.len(), 2, "{requests:#?}");

    let first = &requests[0];
    assert_eq!(first["level"], "INFO");
    assert_eq!(first["status"], 404);
    assert!(first["latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(first["method"], "GET");
    assert_eq!(first["route"], "/api/comment/list/{content_id}");
    assert_eq!(first["request_id"], "client-chose-this");
    // Traces are off here, so the log carries the caller's trace id.
    assert_eq!(first["trace_id"], "0123456789abcdef0123456789abcdef");
    assert!(first["timestamp"].is_string());
    // The request line stands on its own: its fields, not a copy of the span's.
    assert!(first.get("span").is_none(), "{first}");

    assert_eq!(requests[1]["request_id"], generated_id.as_str());
    assert_eq!(requests[1]["status"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    const TOKEN: &str = "tok-3f9a1c77e2b54d0e9c6a";
    const PASSWORD: &str = "pw-8d2e61b0c4f94a7b";
    let db = Db::postgres().await;
    // Trust authentication ignores the password, so the URL can carry one and still connect.
    let url = db.url.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{PASSWORD}@"),
        1,
    );
    assert!(url.contains(PASSWORD));
    let mut server = Server::start(&[
        ("COMMENTS_DATABASE_URL", &url),
        ("COMMENTS_ADMIN_TOKEN", TOKEN),
        ("RUST_LOG", "trace"),
    ]);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;

    let created: serde_json::Value = client
        .post(server.url("/api/v1/contents/s/comments"))
        .json(&serde_json::json!({"email": "s@example.com", "comment": "secret test"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let path = format!("/api/v1/comments/{}", created["id"]);
    let wrong = client
        .delete(server.url(&path))
        .bearer_auth(format!("{TOKEN}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(!wrong.text().await.unwrap().contains(TOKEN));
    let right = client
        .delete(server.url(&path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 204);

    server.signal(Signal::SIGTERM);
    server.wait(Duration::from_secs(15)).expect("exits");
    let logs = server.logs_after_exit();
    assert!(
        logs.len() > 10,
        "trace logging produced {} lines",
        logs.len()
    );
    for line in &logs {
        assert!(!line.contains(TOKEN), "admin token logged: {line}");
        assert!(!line.contains(PASSWORD), "database password logged: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pretty_logs_are_for_humans() {
    let db = Db::sqlite().await;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_comments"));
    command
        .env("COMMENTS_DATABASE_URL", &db.url)
        .env("COMMENTS_LOG_FORMAT", "pretty")
        .env("COMMENTS_LISTEN", "127.0.0.1:0")
        .env("COMMENTS_METRICS_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped());
    let child = command.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("serving"), "{text}");
    assert!(
        !text.trim_start().starts_with('{'),
        "pretty output is not JSON: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_filters_the_lines() {
    // Warnings everywhere, plus the lifecycle lines (the test finds the port in "serving").
    let db = Db::sqlite().await;
    let mut server = Server::start(&[
        ("COMMENTS_DATABASE_URL", &db.url),
        ("RUST_LOG", "warn,comments::app=info"),
    ]);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;
    for path in ["/health-check", "/api/comment/list/1", "/nowhere"] {
        client.get(server.url(path)).send().await.unwrap();
    }
    server.signal(Signal::SIGTERM);
    server.wait(Duration::from_secs(15)).expect("exits");
    let lines = server.logs_after_exit();
    assert!(
        lines.iter().any(|l| l.contains(r#""message":"stopped""#)),
        "{lines:#?}"
    );
    for line in &lines {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        let kept = matches!(entry["level"].as_str(), Some("WARN" | "ERROR"))
            || entry["target"] == "comments::app";
        assert!(kept, "RUST_LOG let through: {line}");
        assert_ne!(entry["message"], "request", "{line}");
    }
}

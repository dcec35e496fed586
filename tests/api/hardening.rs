//! Hostile clients: security headers on every answer, the write rate limit, admin failures
//! counted, and request smuggling / header tricks refused at the HTTP layer.

use std::time::Duration;

use crate::common::{Db, TestApp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_nosniff_and_a_restrictive_csp() {
    let app = TestApp::spawn(Db::sqlite().await).await;
    let answers = [
        app.get("/health-check").await,
        app.get("/api/comment/list/1").await,
        app.get("/no/such/route").await,
        app.get("/openapi.json").await,
        app.post_json("/api/comment/new", "{").await,
    ];
    for reply in answers {
        assert_eq!(
            reply.header("x-content-type-options"),
            Some("nosniff"),
            "{}",
            reply.text()
        );
        assert_eq!(
            reply.header("content-security-policy"),
            Some("default-src 'none'; frame-ancestors 'none'")
        );
    }
    app.stop().await;
}

async fn post_from(app: &TestApp, forwarded_for: Option<&str>) -> crate::common::Reply {
    let mut request = app
        .client
        .post(app.url("/api/comment/new"))
        .header("content-type", "application/json")
        .body(r#"{"email":"r@example.com","comment":"limited","content_id":1}"#);
    if let Some(address) = forwarded_for {
        request = request.header("x-forwarded-for", address);
    }
    crate::common::Reply::from(request.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_beyond_the_rate_limit_get_429_with_retry_after_and_reads_do_not() {
    let app = TestApp::spawn_with(Db::sqlite().await, |config| {
        config.write_rate_limit = 0.5;
        config.write_rate_burst = 3;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(post_from(&app, None).await.status, 200);
    }
    let limited = post_from(&app, None).await;
    assert_eq!(limited.status, 429);
    assert!(limited.error_message().contains("too many writes"));
    let wait: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    // Reads are not rate limited; and without the trust flag a forwarded address changes nothing.
    assert_eq!(app.get("/api/comment/list/1").await.status, 200);
    assert_eq!(post_from(&app, Some("203.0.113.9")).await.status, 429);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
    let app = TestApp::spawn_with(Db::sqlite().await, |config| {
        config.write_rate_limit = 0.5;
        config.write_rate_burst = 1;
        config.trust_forwarded_for = true;
    })
    .await;
    // The last entry is the one the proxy added; earlier ones are whatever the client claimed.
    assert_eq!(
        post_from(&app, Some("10.9.9.9, 198.51.100.1")).await.status,
        200
    );
    assert_eq!(
        post_from(&app, Some("10.9.9.8, 198.51.100.1")).await.status,
        429
    );
    assert_eq!(post_from(&app, Some("198.51.100.2")).await.status, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_admin_requests_are_counted() {
    let app = TestApp::spawn_with(Db::sqlite().await, |config| {
        config.admin_token = Some("the-token".into())
    })
    .await;
    for auth in ["Bearer nope", "Bearer the-toke", "Basic the-token"] {
        let response = app
            .client
            .delete(app.url("/api/v1/comments/1"))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    let metrics = app.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "comments_admin_auth_failures_total 3"),
        "{metrics}"
    );
    app.stop().await;
}

/// Sends raw bytes on one connection and returns everything the server says before closing.
async fn raw(app: &TestApp, request: &str) -> String {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn responses(answer: &str) -> usize {
    answer.matches("HTTP/1.1 ").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_and_header_tricks_are_refused() {
    let app = TestApp::spawn(Db::sqlite().await).await;
    let smuggled = "GET /api/comment/list/1 HTTP/1.1\r\nHost: x\r\n\r\n";

    // Content-Length and Transfer-Encoding together: a front proxy and this server could split
    // the stream differently, so the request is refused and the connection closed.
    let both = format!(
        "POST /api/comment/new HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
    );
    let answer = raw(&app, &both).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(
        responses(&answer),
        1,
        "the smuggled request was answered: {answer}"
    );

    // Two different lengths.
    let lengths = "POST /api/comment/new HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                   Content-Length: 5\r\nContent-Length: 60\r\n\r\n{}";
    assert!(raw(&app, lengths).await.starts_with("HTTP/1.1 400"));

    // A chunked body hiding a second request after its end is one request, then another:
    // never the hidden bytes as part of the first.
    let obfuscated_te = format!(
        "POST /api/comment/new HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"
    );
    let answer = raw(&app, &obfuscated_te).await;
    assert!(
        answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.1 501"),
        "{answer}"
    );
    assert_eq!(responses(&answer), 1, "{answer}");

    // A line break inside a header value (response splitting) and obsolete line folding.
    let split = "GET /health-check HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\rInjected: yes\r\n\r\n";
    let answer = raw(&app, split).await;
    assert!(!answer.contains("Injected"), "{answer}");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let folded = "GET /health-check HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\r\n folded\r\n\r\n";
    assert!(raw(&app, folded).await.starts_with("HTTP/1.1 400"));

    // A request head larger than the server reads is refused, not buffered without end.
    let huge = format!(
        "GET /health-check HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let answer = raw(&app, &huge).await;
    assert!(
        answer.is_empty()
            || answer.starts_with("HTTP/1.1 431")
            || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );

    // The server still answers normally.
    assert_eq!(app.get("/health-check").await.status, 200);
    app.stop().await;
}

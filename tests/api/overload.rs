//! Overload: load is shed with a quick 503 instead of queueing without bound, connections are
//! capped, slow clients are cut off, and through a flood normal clients still get answers while
//! memory stays bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Db, Server, TestApp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request held in flight: its head and the start of a body that never finishes.
async fn hold(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = "POST /api/comment/new HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"email\":";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Whether the server closes `stream` within `limit` (a read sees the end or an error).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buffer = [0u8; 512];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_beyond_the_concurrency_limit_is_shed_with_a_quick_503() {
    let app = TestApp::spawn_with(Db::sqlite().await, |config| config.max_concurrency = 2).await;
    let held = [hold(app.addr).await, hold(app.addr).await];
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let shed = app
        .post_json(
            "/api/comment/new",
            r#"{"email":"a@b.co","comment":"x","content_id":1}"#,
        )
        .await;
    assert_eq!(shed.status, 503);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "shed, not queued"
    );
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert_eq!(shed.json()["status"], "UNAVAILABLE");
    assert!(shed.error_message().contains("concurrency limit"));
    // Reads have their own slots: slow writes do not starve them.
    assert_eq!(app.get("/api/comment/list/1").await.status, 404);
    // Probes are not limited: a busy pod is neither restarted nor pulled from service for it.
    assert_eq!(app.get("/livez").await.status, 200);
    assert_eq!(app.get("/readyz").await.status, 200);

    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = app
        .post_json(
            "/api/comment/new",
            r#"{"email":"a@b.co","comment":"x","content_id":1}"#,
        )
        .await;
    assert_eq!(after.status, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_and_idle_ones_time_out() {
    let app = TestApp::spawn_with(Db::sqlite().await, |config| {
        config.max_connections = 4;
        config.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(app.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(app.addr).await.unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_millis(300)).await,
        "a fifth connection was kept"
    );

    // Idle connections are closed at the header read timeout, freeing their slots.
    for connection in &mut idle {
        assert!(
            closed_within(connection, Duration::from_secs(2)).await,
            "an idle connection stayed open"
        );
    }
    assert_eq!(app.get("/health-check").await.status, 200);
    app.stop().await;
}

/// Sends one keep-alive request on `stream` and reads its whole answer.
async fn request_on(stream: &mut TcpStream, path: &str) -> String {
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    read_answer(stream, path).await
}

/// Reads one whole answer from `stream` (the headers say how long), within 5 s.
async fn read_answer(stream: &mut TcpStream, path: &str) -> String {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert!(read > 0, "closed before answering {path}");
        answer.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
    }
}

/// An app whose connections may wait 500 ms for a request head, and a keep-alive connection to
/// it that has had `requests` answered.
async fn answered_connection(requests: usize) -> (TestApp, TcpStream) {
    let app = TestApp::spawn_with(Db::sqlite().await, |config| {
        config.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    for _ in 0..requests {
        assert!(
            request_on(&mut stream, "/health-check")
                .await
                .starts_with("HTTP/1.1 200")
        );
    }
    (app, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_idle_after_a_request_are_closed_at_the_header_timeout() {
    let (app, mut stream) = answered_connection(3).await;
    // Then nothing: the connection may wait for its next request head only that long.
    let started = Instant::now();
    assert!(
        closed_within(&mut stream, Duration::from_secs(3)).await,
        "the idle connection stayed open"
    );
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(400),
        "closed after only {idle:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trickled_after_a_request_is_cut_off_at_the_header_timeout() {
    let (app, mut stream) = answered_connection(1).await;
    // A byte every 100 ms: the bytes keep coming, but the head would take 4 s to complete.
    let started = Instant::now();
    for byte in b"GET /health-check HTTP/1.1\r\nHost: x\r\n\r\n" {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let cut = started.elapsed();
    assert!(
        closed_within(&mut stream, Duration::from_millis(500)).await,
        "a trickled head kept the connection open for {cut:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "cut off only after {:?}",
        started.elapsed()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_body_takes_longer_than_the_header_timeout_is_answered() {
    let app = TestApp::spawn_with(Db::sqlite().await, |config| {
        config.header_read_timeout = Duration::from_millis(300);
        config.body_read_timeout = Duration::from_secs(5);
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let body = r#"{"email":"slow@example.com","comment":"took a while","content_id":1}"#;
    let head = format!(
        "POST /api/comment/new HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The head is in: from here the body's own deadline applies, not the head's.
    let (first, rest) = body.split_at(body.len() / 2);
    for part in [first, rest] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        stream.write_all(part.as_bytes()).await.unwrap();
    }
    let answer = read_answer(&mut stream, "/api/comment/new").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_older_than_the_maximum_age_are_closed_after_their_current_request() {
    let app = TestApp::spawn_with(Db::sqlite().await, |config| {
        config.max_connection_age = Duration::from_millis(600);
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();
    let mut answered = 0;
    // A busy client: a request every 50 ms, each answered in full, until the server closes.
    loop {
        let head = "GET /health-check HTTP/1.1\r\nHost: x\r\n\r\n";
        if stream.write_all(head.as_bytes()).await.is_err() {
            break;
        }
        let mut buffer = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(read)) => {
                let text = String::from_utf8_lossy(&buffer[..read]);
                assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                answered += 1;
            }
            Err(_) => panic!("no answer within 5 s"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the connection outlived its maximum age"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_millis(550),
        "closed after only {lived:?}"
    );
    assert!(
        answered >= 5,
        "only {answered} requests answered before the close"
    );
    // The client simply opens a new connection.
    assert_eq!(app.get("/health-check").await.status, 200);
    app.stop().await;
}

/// VmRSS of a process, in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_a_flood_and_slow_clients_normal_clients_get_answers_and_memory_stays_bounded() {
    let db = Db::sqlite().await;
    let server = Server::start(&[
        ("COMMENTS_DATABASE_URL", &db.url),
        ("COMMENTS_MAX_CONCURRENCY", "16"),
        ("COMMENTS_HEADER_READ_TIMEOUT", "1s"),
        ("COMMENTS_BODY_READ_TIMEOUT", "1s"),
    ]);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;
    let seeded = client
        .post(server.url("/api/comment/new"))
        .json(&serde_json::json!({"email": "n@example.com", "comment": "seed", "content_id": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(seeded.status(), 200);

    // A handful of byte-a-second clients (one byte of a request head every 200 ms).
    let mut slow = Vec::new();
    for _ in 0..5 {
        let addr = server.addr;
        slow.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut stream = TcpStream::connect(addr).await.unwrap();
            for byte in b"GET /health-check HTTP/1.1\r\nHost: slow\r\n"
                .iter()
                .cycle()
                .take(100)
            {
                if stream.write_all(&[*byte]).await.is_err() {
                    return started.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            started.elapsed()
        }));
    }

    // The flood: 300 connections, each writing back to back (a write holds its slot until its
    // batch is fsynced), far beyond the limit of 16.
    let stop = Arc::new(AtomicBool::new(false));
    let shed = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    for n in 0..300 {
        let (stop, shed, url) = (stop.clone(), shed.clone(), server.url("/api/comment/new"));
        flood.push(tokio::spawn(async move {
            let own_connection = reqwest::Client::new();
            let body = serde_json::json!({"email": "f@example.com", "comment": "flood", "content_id": format!("flood-{n}")});
            while !stop.load(Ordering::Relaxed) {
                if let Ok(response) = own_connection.post(&url).json(&body).send().await
                    && response.status() == 503
                {
                    shed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A normal client keeps getting answers: its data, or a quick "retry later".
    let normal = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut served = 0;
    for _ in 0..30 {
        let started = Instant::now();
        let response = normal
            .get(server.url("/api/comment/list/1"))
            .send()
            .await
            .expect("answered");
        assert!(
            matches!(response.status().as_u16(), 200 | 503),
            "{}",
            response.status()
        );
        if response.status() == 200 {
            served += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a normal request waited {:?}",
            started.elapsed()
        );
    }
    let rss_under_load = resident_bytes(server.child.id());
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        task.await.unwrap();
    }
    for task in slow {
        let lasted = task.await.unwrap();
        assert!(
            lasted < Duration::from_secs(4),
            "a slow client held its connection {lasted:?}"
        );
    }

    assert!(shed.load(Ordering::Relaxed) > 0, "the flood was never shed");
    assert!(
        served > 0,
        "the normal client was never served during the flood"
    );
    assert_eq!(
        client
            .get(server.url("/api/comment/list/1"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    println!(
        "RSS under a 300-connection flood: {} MiB",
        rss_under_load / (1024 * 1024)
    );
    assert!(
        rss_under_load < 96 * 1024 * 1024,
        "RSS {} bytes",
        rss_under_load
    );
}

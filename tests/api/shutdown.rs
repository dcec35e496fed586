//! Graceful shutdown of the real binary under load: SIGTERM turns /readyz to 503 at once,
//! requests keep succeeding during the delay, an in-flight request completes after the listener
//! has closed, and the process exits 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Db, Server};
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DELAY: Duration = Duration::from_millis(1500);

async fn sigterm_drains_gracefully(signal: Signal) {
    let db = Db::sqlite().await;
    let mut server = Server::start(&[
        ("COMMENTS_DATABASE_URL", &db.url),
        ("COMMENTS_SHUTDOWN_DELAY", "1500ms"),
        ("COMMENTS_SHUTDOWN_TIMEOUT", "10s"),
    ]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    server.wait_ready(&client).await;

    // Load: readers and writers in a loop until the server goes away.
    let stop = Arc::new(AtomicBool::new(false));
    let terminated_at: Arc<std::sync::Mutex<Option<Instant>>> = Default::default();
    let served_in_delay = Arc::new(AtomicUsize::new(0));
    let failed_in_delay: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let mut load = Vec::new();
    for worker in 0..6 {
        let client = client.clone();
        let (stop, terminated_at) = (stop.clone(), terminated_at.clone());
        let (served, failed) = (served_in_delay.clone(), failed_in_delay.clone());
        let base = server.url("");
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let response = if worker % 2 == 0 {
                    client.get(format!("{base}/api/comment/list/1")).send().await
                } else {
                    let body = serde_json::json!({"email": "s@example.com", "comment": "load", "content_id": 1});
                    client.post(format!("{base}/api/comment/new")).json(&body).send().await
                };
                // Only requests well inside the delay window count: after it the listener closes.
                let in_delay = terminated_at
                    .lock()
                    .unwrap()
                    .is_some_and(|at| at.elapsed() < DELAY - Duration::from_millis(300));
                match response {
                    Ok(r) if r.status().is_success() || r.status() == 404 => {
                        if in_delay {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    other if in_delay => {
                        let what = match other {
                            Ok(r) => format!("status {}", r.status()),
                            Err(err) => format!("error {err:?}"),
                        };
                        failed.lock().unwrap().push(what);
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // An in-flight request: headers and half the body now, the rest after the listener closed.
    let body = r#"{"email":"inflight@example.com","comment":"finished after the listener closed","content_id":"inflight"}"#;
    let mut inflight = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/comment/new HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    inflight.write_all(head.as_bytes()).await.unwrap();
    inflight.write_all(&body.as_bytes()[..20]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    server.signal(signal);
    let signalled = Instant::now();
    *terminated_at.lock().unwrap() = Some(signalled);

    // Readiness fails within 100 ms.
    let mut not_ready_after = None;
    while signalled.elapsed() < Duration::from_millis(500) {
        if let Ok(r) = client.get(server.url("/readyz")).send().await
            && r.status() == 503
        {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["status"], "UNAVAILABLE");
            assert_eq!(body["message"], "shutting down");
            not_ready_after = Some(signalled.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let not_ready_after = not_ready_after.expect("/readyz never turned 503");
    assert!(
        not_ready_after < Duration::from_millis(100),
        "took {not_ready_after:?}"
    );

    // Past the delay the listener is closed: new connections are refused.
    tokio::time::sleep(DELAY + Duration::from_millis(400)).await;
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "still accepting after the delay"
    );

    // The in-flight request completes.
    inflight.write_all(&body.as_bytes()[20..]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), inflight.read_to_end(&mut answer))
        .await
        .expect("in-flight answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(r#"{"status":"SUCCESS","message":"comment created and associated with content_id inflight"}"#), "{answer}");

    stop.store(true, Ordering::Relaxed);
    for worker in load {
        worker.await.unwrap();
    }
    let status = server
        .wait(Duration::from_secs(10))
        .expect("exits after draining");
    assert_eq!(status.code(), Some(0));
    assert!(
        served_in_delay.load(Ordering::Relaxed) > 0,
        "no requests served during the delay"
    );
    let failed_in_delay = failed_in_delay.lock().unwrap().clone();
    assert!(
        failed_in_delay.is_empty(),
        "requests failed during the delay: {failed_in_delay:?}"
    );

    // The drained write is stored.
    let again = Server::start(&[("COMMENTS_DATABASE_URL", &db.url)]);
    again.wait_ready(&client).await;
    let list = client
        .get(again.url("/api/comment/list/inflight"))
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_drains_and_exits_zero() {
    sigterm_drains_gracefully(Signal::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigint_does_the_same() {
    sigterm_drains_gracefully(Signal::SIGINT).await;
}

//! Storage faults, provoked for real: PostgreSQL refusing connections or hanging (through a proxy,
//! so other tests keep their server), start-up while it is away, and SQLite on a disk that fills
//! up or turns read-only (a small tmpfs; needs root, as CI runs). Requests get a quick 503 with
//! Retry-After, liveness holds, the service recovers by itself, and nothing acknowledged is lost.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::proxy::Proxy;
use crate::common::{Db, Server};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

fn postgres_addr() -> std::net::SocketAddr {
    "127.0.0.1:5432".parse().unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Posts one comment; `Some(status)` with how long it took.
async fn post(
    client: &reqwest::Client,
    server: &Server,
    text: &str,
) -> (u16, Duration, Option<String>) {
    let started = Instant::now();
    let response = client
        .post(server.url("/api/comment/new"))
        .json(&json!({"email": "f@example.com", "comment": text, "content_id": "faults"}))
        .send()
        .await
        .expect("the service answers even when storage does not");
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let status = response.status().as_u16();
    if status == 503 {
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "UNAVAILABLE", "{body}");
    }
    (status, started.elapsed(), retry_after)
}

async fn status_of(client: &reqwest::Client, server: &Server, path: &str) -> u16 {
    client
        .get(server.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn stored_texts(client: &reqwest::Client, server: &Server) -> Vec<String> {
    let list: Value = client
        .get(server.url("/api/comment/list/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["comment"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one client of the background traffic saw.
#[derive(Default)]
struct Seen {
    acknowledged: Vec<String>,
    unavailable: usize,
    /// The slowest answer, 200 or 503.
    slowest: Duration,
    /// Anything but 200, 503 with Retry-After, or an answer within a second.
    wrong: Vec<String>,
}

/// One client writing and reading until `stop`, from before the outage until after it.
async fn traffic(
    server_url: String,
    client_id: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Seen {
    let client = client();
    let mut seen = Seen::default();
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let text = format!("traffic-{client_id}-{n}");
        let write = client
            .post(format!("{server_url}/api/comment/new"))
            .json(&json!({"email": "t@example.com", "comment": text, "content_id": "faults"}));
        let read = client.get(format!("{server_url}/api/comment/list/faults"));
        for (request, is_write) in [(write, true), (read, false)] {
            let started = Instant::now();
            let answered = request.send().await;
            let took = started.elapsed();
            seen.slowest = seen.slowest.max(took);
            match answered {
                Ok(r) if r.status() == 200 => {
                    if is_write {
                        seen.acknowledged.push(text.clone());
                    }
                }
                Ok(r) if r.status() == 503 && r.headers().contains_key("retry-after") => {
                    seen.unavailable += 1
                }
                Ok(r) => seen.wrong.push(format!("{} after {took:?}", r.status())),
                Err(err) => seen.wrong.push(format!("no answer after {took:?}: {err}")),
            }
            if took >= Duration::from_secs(1) {
                seen.wrong.push(format!("an answer took {took:?}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen
}

/// The outage, with traffic running through it: every request gets a 200 or a 503 with
/// Retry-After within 1 s, readiness fails, liveness holds; after it, the same process recovers
/// by itself and keeps every comment it acknowledged, each exactly once.
async fn a_postgres_outage_is_survived(hang: bool) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let db = Db::postgres().await;
    let mut proxy = Proxy::start(postgres_addr()).await;
    let server = Server::start(&[("COMMENTS_DATABASE_URL", &proxy.url(&db.url))]);
    let client = client();
    server.wait_ready(&client).await;

    let mut acknowledged = Vec::new();
    for n in 0..10 {
        let text = format!("before-{n}");
        assert_eq!(post(&client, &server, &text).await.0, 200);
        acknowledged.push(text);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|id| tokio::spawn(traffic(server.url(""), id, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    if hang {
        proxy.blackhole()
    } else {
        proxy.refuse()
    }
    for n in 0..5 {
        let (status, took, retry_after) = post(&client, &server, &format!("during-{n}")).await;
        assert_eq!(status, 503, "write during the outage");
        assert!(took < Duration::from_secs(1), "a write waited {took:?}");
        assert_eq!(retry_after.as_deref(), Some("1"));
        let started = Instant::now();
        let read = client
            .get(server.url("/api/comment/list/faults"))
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 503, "read during the outage");
        assert!(read.headers().contains_key("retry-after"));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    assert_eq!(status_of(&client, &server, "/readyz").await, 503);
    assert_eq!(status_of(&client, &server, "/livez").await, 200);

    proxy.restore().await;
    wait_until("writes work again", Duration::from_secs(15), async || {
        post(&client, &server, "probe-after").await.0 == 200
    })
    .await;
    acknowledged.push("probe-after".into());
    assert_eq!(status_of(&client, &server, "/readyz").await, 200);
    for n in 0..10 {
        let text = format!("after-{n}");
        assert_eq!(post(&client, &server, &text).await.0, 200);
        acknowledged.push(text);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut unavailable = 0;
    for handle in clients {
        let seen = handle.await.unwrap();
        assert!(
            seen.wrong.is_empty(),
            "background traffic saw: {:?}",
            seen.wrong
        );
        assert!(
            !seen.acknowledged.is_empty(),
            "a client got nothing through"
        );
        unavailable += seen.unavailable;
        acknowledged.extend(seen.acknowledged);
    }
    assert!(
        unavailable > 0,
        "the background traffic never met the outage"
    );

    // Every acknowledged comment is there, and none twice. ("probe-after" is sent until one is
    // acknowledged; one cut off in the COMMIT round trip may be stored too, so it is left out of
    // the count.)
    let mut stored = stored_texts(&client, &server).await;
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|t| !stored.contains(t))
        .collect();
    assert!(missing.is_empty(), "acknowledged and lost: {missing:?}");
    stored.retain(|text| text != "probe-after");
    let count = stored.len();
    stored.sort();
    stored.dedup();
    assert_eq!(stored.len(), count, "a comment stored twice");
    let mut server = server;
    server.signal(Signal::SIGTERM);
    assert_eq!(
        server.wait(Duration::from_secs(15)).unwrap().code(),
        Some(0),
        "no restart was needed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refusing_connections_gives_quick_503s_and_recovers() {
    a_postgres_outage_is_survived(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hanging_gives_quick_503s_and_recovers() {
    a_postgres_outage_is_survived(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_without_the_database_waits_live_and_not_ready() {
    let db = Db::postgres().await;
    let mut proxy = Proxy::start(postgres_addr()).await;
    proxy.refuse();
    let server = Server::start(&[("COMMENTS_DATABASE_URL", &proxy.url(&db.url))]);
    let client = client();

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status_of(&client, &server, "/livez").await, 200);
    let ready = client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let reason: Value = ready.json().await.unwrap();
    assert!(
        reason["message"]
            .as_str()
            .unwrap()
            .contains("PostgreSQL not ready"),
        "{reason}"
    );
    assert_eq!(post(&client, &server, "too early").await.0, 503);
    let mut logs = Vec::new();
    wait_until(
        "the retries are logged",
        Duration::from_secs(10),
        async || {
            logs.extend(server.drain_logs());
            logs.iter()
                .filter(|l| l.contains("PostgreSQL not ready") && l.contains("retry_in_ms"))
                .count()
                >= 2
        },
    )
    .await;

    proxy.restore().await;
    server.wait_ready(&client).await;
    assert_eq!(post(&client, &server, "once it is there").await.0, 200);
}

/// A small tmpfs of our own, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            mounted.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        SmallDisk { dir }
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn url(&self) -> String {
        format!("sqlite://{}/comments.db", self.dir.path().display())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gives_503_and_a_log_line_and_writes_resume_when_space_returns() {
    let disk = SmallDisk::mount("400k");
    let server = Server::start(&[("COMMENTS_DATABASE_URL", &disk.url())]);
    let client = client();
    server.wait_ready(&client).await;

    let mut acknowledged = Vec::new();
    let filler = "x".repeat(3900);
    let mut full = false;
    for n in 0..400 {
        let text = format!("{n}-{filler}");
        match post(&client, &server, &text).await {
            (200, ..) => acknowledged.push(text),
            (503, _, retry_after) => {
                assert_eq!(retry_after.as_deref(), Some("1"));
                full = true;
                break;
            }
            (other, ..) => panic!("unexpected {other} on a filling disk"),
        }
    }
    assert!(full, "the disk never filled");
    assert_eq!(status_of(&client, &server, "/livez").await, 200);
    assert_eq!(
        status_of(&client, &server, "/api/comment/list/faults").await,
        200,
        "reads still work"
    );
    let logs = server
        .logs_until(Duration::from_secs(5), |lines| {
            lines.iter().any(|l| l.contains("disk is full"))
        })
        .await
        .join("\n");
    assert!(logs.contains("disk is full"), "the cause is logged");
    assert!(!logs.contains("panicked"));

    disk.remount("size=16m");
    wait_until("writes resume", Duration::from_secs(10), async || {
        post(&client, &server, "after space returned").await.0 == 200
    })
    .await;
    acknowledged.push("after space returned".into());
    let stored = stored_texts(&client, &server).await;
    assert_eq!(
        stored, acknowledged,
        "every acknowledged write, in order, nothing else"
    );
}

/// A filesystem cannot be remounted read-only under an open database (the kernel refuses while
/// files are open for writing), so the read-only cases tested are the ones a pod meets at start:
/// after a crash (the WAL is still there) the service serves reads and answers writes with 503
/// and a log line; after a clean stop SQLite cannot open it at all, which is one clear line and
/// exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_serves_reads_and_refuses_writes_clearly() {
    let disk = SmallDisk::mount("16m");
    let client = client();
    let mut crashed = Server::start(&[("COMMENTS_DATABASE_URL", &disk.url())]);
    crashed.wait_ready(&client).await;
    assert_eq!(post(&client, &crashed, "before").await.0, 200);
    crashed.signal(Signal::SIGKILL);
    crashed.wait(Duration::from_secs(5)).expect("killed");

    disk.remount("ro");
    let mut server = Server::start(&[("COMMENTS_DATABASE_URL", &disk.url())]);
    server.wait_ready(&client).await;
    assert_eq!(
        stored_texts(&client, &server).await,
        ["before"],
        "reads work"
    );
    let (status, _, retry_after) = post(&client, &server, "while read-only").await;
    assert_eq!(status, 503);
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(status_of(&client, &server, "/livez").await, 200);
    server.signal(Signal::SIGTERM);
    assert_eq!(
        server.wait(Duration::from_secs(15)).unwrap().code(),
        Some(0)
    );
    let logs = server.logs_after_exit().join("\n");
    assert!(
        logs.contains("SQLite batch rolled back") && logs.contains("readonly"),
        "{logs}"
    );
    assert!(!logs.contains("panicked"));

    // A clean stop leaves no WAL behind; then a read-only file cannot be opened in WAL mode.
    disk.remount("rw");
    let mut clean = Server::start(&[("COMMENTS_DATABASE_URL", &disk.url())]);
    clean.wait_ready(&client).await;
    clean.signal(Signal::SIGTERM);
    assert_eq!(clean.wait(Duration::from_secs(15)).unwrap().code(), Some(0));
    disk.remount("ro");
    let out = Command::new(env!("CARGO_BIN_EXE_comments"))
        .env("COMMENTS_DATABASE_URL", disk.url())
        .env("COMMENTS_LISTEN", "127.0.0.1:0")
        .env("COMMENTS_METRICS_LISTEN", "127.0.0.1:0")
        .env("COMMENTS_SHUTDOWN_DELAY", "0s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("COMMENTS_DATABASE_URL"), "{stderr}");
    disk.remount("rw");
}

/// A write answered 503 was not applied: another process holds the SQLite lock past the storage
/// timeout, every write in the meantime fails, and none of them shows up once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_answered_503_was_not_stored() {
    use sqlx::{Connection, Executor};
    let db = Db::sqlite().await;
    let server = Server::start(&[
        ("COMMENTS_DATABASE_URL", &db.url),
        ("COMMENTS_STORAGE_TIMEOUT", "500ms"),
    ]);
    let client = client();
    server.wait_ready(&client).await;
    assert_eq!(post(&client, &server, "before the lock").await.0, 200);

    let mut locker = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    locker.execute("BEGIN EXCLUSIVE").await.unwrap();
    let mut writes = Vec::new();
    for n in 0..8 {
        let (client, url) = (client.clone(), server.url("/api/comment/new"));
        writes.push(tokio::spawn(async move {
            let body = json!({"email": "f@example.com", "comment": format!("locked-{n}"), "content_id": "faults"});
            client.post(url).json(&body).send().await.unwrap().status().as_u16()
        }));
    }
    for write in writes {
        assert_eq!(write.await.unwrap(), 503);
    }
    locker.execute("ROLLBACK").await.unwrap();
    drop(locker);

    assert_eq!(post(&client, &server, "after the lock").await.0, 200);
    assert_eq!(
        stored_texts(&client, &server).await,
        ["before the lock", "after the lock"]
    );
}

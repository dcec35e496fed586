//! Nothing acknowledged is ever lost: the real binary is SIGKILLed in the middle of concurrent
//! writes and restarted on the same database; and replicas share one PostgreSQL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{Db, Kind, Server};
use nix::sys::signal::Signal;
use serde_json::Value;

const WRITERS: usize = 8;
const ITEMS: [&str; 3] = ["a", "b", "c"];

/// Every comment on `item`, through the v1 pages, as (comment text -> how many times stored).
async fn stored(
    client: &reqwest::Client,
    server: &Server,
    item: &str,
    into: &mut HashMap<String, usize>,
) {
    let mut path = format!("/api/v1/contents/{item}/comments?limit=200");
    loop {
        let page: Value = client
            .get(server.url(&path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for comment in page["items"].as_array().unwrap() {
            *into
                .entry(comment["comment"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        match page["next"].as_str() {
            Some(cursor) => {
                path = format!("/api/v1/contents/{item}/comments?limit=200&after={cursor}")
            }
            None => return,
        }
    }
}

async fn acknowledged_writes_survive_sigkill(kind: Kind) {
    let db = Db::of(kind).await;
    let server = Server::start(&[("COMMENTS_DATABASE_URL", &db.url)]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    server.wait_ready(&client).await;

    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let url = server.url("/api/comment/new");
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (client, url, acknowledged) = (client.clone(), url.clone(), acknowledged.clone());
        writers.push(tokio::spawn(async move {
            for n in 0.. {
                let text = format!("w{writer}-n{n}");
                let body = serde_json::json!({
                    "email": "durable@example.com",
                    "comment": text,
                    "content_id": ITEMS[n % ITEMS.len()],
                });
                match client.post(&url).json(&body).send().await {
                    Ok(r) if r.status() == 200 => acknowledged.lock().unwrap().push(text),
                    Ok(r) => panic!("unexpected {} before the kill", r.status()),
                    // The server was killed: this write's fate is unknown, and that is fine.
                    Err(_) => return,
                }
            }
        }));
    }

    // Kill in the middle of the stream, once plenty of writes are acknowledged.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acknowledged.lock().unwrap().len() < 300 {
        assert!(Instant::now() < deadline, "writes too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut server = server;
    server.signal(Signal::SIGKILL);
    server.wait(Duration::from_secs(5)).expect("killed");
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    drop(server);

    let restarted = Server::start(&[("COMMENTS_DATABASE_URL", &db.url)]);
    restarted.wait_ready(&client).await;
    let mut counts = HashMap::new();
    for item in ITEMS {
        stored(&client, &restarted, item, &mut counts).await;
    }
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|t| !counts.contains_key(*t))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {lost:?}",
        lost.len()
    );
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "stored twice: {doubled:?}");
    assert!(counts.len() >= acknowledged.len());
    println!(
        "{kind:?}: {} acknowledged, {} stored (the rest were in flight at the kill)",
        acknowledged.len(),
        counts.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_acknowledged_writes_survive_sigkill() {
    acknowledged_writes_survive_sigkill(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_acknowledged_writes_survive_sigkill() {
    acknowledged_writes_survive_sigkill(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_started_together_migrate_once_and_share_comments() {
    let db = Db::postgres().await;
    let env = [("COMMENTS_DATABASE_URL", db.url.as_str())];
    // Both start on the empty database at the same moment and race to migrate.
    let (first, second) = std::thread::scope(|s| {
        let a = s.spawn(|| Server::start(&env));
        let b = s.spawn(|| Server::start(&env));
        (a.join().unwrap(), b.join().unwrap())
    });
    let client = reqwest::Client::new();
    first.wait_ready(&client).await;
    second.wait_ready(&client).await;

    let body = serde_json::json!({"email": "one@example.com", "comment": "written to one", "content_id": 5});
    let written = client
        .post(first.url("/api/comment/new"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), 200);
    let read = client
        .get(second.url("/api/comment/list/5"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(
        read.text().await.unwrap(),
        r#"[{"email":"one@example.com","comment":"written to one"}]"#
    );

    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let applied: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let migrations = std::fs::read_dir("migrations/postgres").unwrap().count();
    assert_eq!(
        applied.len(),
        migrations,
        "each migration applied once: {applied:?}"
    );
    assert!(applied.iter().all(|(_, ok)| *ok));
}

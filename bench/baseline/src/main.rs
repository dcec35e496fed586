//! The benchmark's bare baseline: the original API of `comments` over a `HashMap` behind a lock.
//! No metrics, no tracing, no validation, no storage: what axum + tokio give at best on this
//! machine. Response bodies are byte-identical to those of `comments` (bench/run.sh checks).
//!
//!     comments-bench-baseline 127.0.0.1:PORT
//!
//! Besides the three original routes it serves `GET /api/v1/contents/{id}/comments?limit&after`,
//! an equivalent of the v1 paginated list (same JSON shape, cursor = last id), so the pagination
//! scenario has a ceiling too.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

#[derive(Default)]
struct Store {
    next_id: u64,
    by_content: HashMap<String, Vec<Stored>>,
}

struct Stored {
    id: u64,
    email: String,
    comment: String,
    created_at: String,
}

type Shared = Arc<RwLock<Store>>;

/// `content_id` is a JSON integer or a string; both name the same item, as in the contract.
#[derive(Deserialize)]
#[serde(untagged)]
enum ContentId {
    Int(i64),
    Str(String),
}

#[derive(Deserialize)]
struct NewComment {
    email: String,
    comment: String,
    content_id: ContentId,
}

#[derive(Serialize)]
struct Status<'a> {
    status: &'a str,
    message: String,
}

/// The original list shows only these two fields.
#[derive(Serialize)]
struct Original<'a> {
    email: &'a str,
    comment: &'a str,
}

#[derive(Serialize)]
struct Item<'a> {
    id: u64,
    content_id: &'a str,
    email: &'a str,
    comment: &'a str,
    created_at: &'a str,
}

#[derive(Serialize)]
struct Page<'a> {
    items: Vec<Item<'a>>,
    next: Option<String>,
}

#[derive(Deserialize)]
struct PageQuery {
    limit: Option<usize>,
    after: Option<u64>,
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn health_check() -> Response {
    let body = Status {
        status: "SUCCESS",
        message: "its ok!".into(),
    };
    json(StatusCode::OK, serde_json::to_vec(&body).unwrap())
}

async fn create(State(store): State<Shared>, Json(new): Json<NewComment>) -> Response {
    let content_id = match new.content_id {
        ContentId::Int(n) => n.to_string(),
        ContentId::Str(s) => s,
    };
    let message = format!("comment created and associated with content_id {content_id}");
    let created_at = now_rfc3339();
    {
        let mut store = store.write().unwrap();
        store.next_id += 1;
        let id = store.next_id;
        let stored = Stored {
            id,
            email: new.email,
            comment: new.comment,
            created_at,
        };
        store.by_content.entry(content_id).or_default().push(stored);
    }
    let body = Status {
        status: "SUCCESS",
        message,
    };
    json(StatusCode::OK, serde_json::to_vec(&body).unwrap())
}

async fn list(State(store): State<Shared>, Path(content_id): Path<String>) -> Response {
    let store = store.read().unwrap();
    match store.by_content.get(&content_id) {
        Some(comments) => {
            let view: Vec<Original> = comments
                .iter()
                .map(|c| Original {
                    email: &c.email,
                    comment: &c.comment,
                })
                .collect();
            json(StatusCode::OK, serde_json::to_vec(&view).unwrap())
        }
        None => {
            let message = format!("content_id {content_id} not found");
            let body = Status {
                status: "NOT-FOUND",
                message,
            };
            json(StatusCode::NOT_FOUND, serde_json::to_vec(&body).unwrap())
        }
    }
}

/// Oldest first, `limit` (1 to 200, default 50) items with an id above `after`; `next` is the
/// last id shown when more follow. An unknown item is an empty page, as in v1.
async fn list_v1(
    State(store): State<Shared>,
    Path(content_id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(50).clamp(1, 200);
    let store = store.read().unwrap();
    let comments = store
        .by_content
        .get(&content_id)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let start = comments.partition_point(|c| c.id <= query.after.unwrap_or(0));
    let rest = &comments[start..];
    let shown = &rest[..rest.len().min(limit)];
    let next = (rest.len() > limit).then(|| shown[shown.len() - 1].id.to_string());
    let items = shown
        .iter()
        .map(|c| Item {
            id: c.id,
            content_id: &content_id,
            email: &c.email,
            comment: &c.comment,
            created_at: &c.created_at,
        })
        .collect();
    json(
        StatusCode::OK,
        serde_json::to_vec(&Page { items, next }).unwrap(),
    )
}

/// UTC now as `2026-11-23T11:44:17.996537Z`, the shape `comments` uses (days-to-civil from
/// Howard Hinnant's date algorithms, to stay without a time crate).
fn now_rfc3339() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let (days, secs) = ((now.as_secs() / 86_400) as i64, now.as_secs() % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        now.subsec_micros()
    )
}

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let app = Router::new()
        .route("/api/comment/new", post(create))
        .route("/api/comment/list/{content_id}", get(list))
        .route("/api/v1/contents/{content_id}/comments", get(list_v1))
        .route("/health-check", get(health_check))
        .with_state(Shared::default());
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    println!("listening on {}", listener.local_addr().unwrap());
    // Exits cleanly on SIGTERM, so an instrumented build (-Cprofile-generate) writes its profile.
    // bench/run.sh needs none of this: it kills the baseline with SIGKILL.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            term.recv().await;
        })
        .await
        .unwrap();
}

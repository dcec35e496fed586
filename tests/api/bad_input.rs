//! Bad input, table-driven: every case gets its 4xx with the JSON error shape naming what was
//! wrong, and nothing is stored.

use crate::common::{Db, Kind, Reply, TestApp};
use reqwest::Method;

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    status: u16,
    /// A piece of the error message: it names the field or the problem.
    mentions: &'static str,
}

fn post(name: &'static str, body: impl Into<Vec<u8>>, status: u16, mentions: &'static str) -> Case {
    Case {
        name,
        method: Method::POST,
        path: "/api/comment/new".into(),
        content_type: Some("application/json"),
        headers: vec![],
        body: body.into(),
        status,
        mentions,
    }
}

fn get(name: &'static str, path: &str, status: u16, mentions: &'static str) -> Case {
    Case {
        name,
        method: Method::GET,
        path: path.into(),
        content_type: None,
        headers: vec![],
        body: vec![],
        status,
        mentions,
    }
}

fn body_with(field: &str, value: &str) -> String {
    let mut fields = vec![
        ("email", r#""ok@example.com""#.to_owned()),
        ("comment", r#""fine""#.to_owned()),
        ("content_id", "1".to_owned()),
    ];
    for (name, v) in fields.iter_mut() {
        if *name == field {
            *v = value.to_owned();
        }
    }
    let inner: Vec<String> = fields
        .into_iter()
        .filter(|(_, v)| v != "<absent>")
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn cases() -> Vec<Case> {
    let long_email = format!("\"{}@example.com\"", "a".repeat(243));
    let long_comment = format!("\"{}\"", "x".repeat(4001));
    let long_id = format!("\"{}\"", "i".repeat(129));
    let nested = format!(
        r#"{{"email":"a@b.co","content_id":1,"comment":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let huge = format!(
        r#"{{"email":"a@b.co","comment":"{}","content_id":1}}"#,
        "z".repeat(200_000)
    );
    vec![
        Case {
            content_type: None,
            ..post("no content type", body_with("", ""), 415, "Content-Type")
        },
        Case {
            content_type: Some("text/plain"),
            ..post("text/plain", body_with("", ""), 415, "application/json")
        },
        Case {
            content_type: Some("application/x-www-form-urlencoded"),
            ..post("form", "email=a", 415, "application/json")
        },
        post("empty body", "", 400, "empty"),
        post("unterminated object", "{", 400, "malformed JSON"),
        post(
            "trailing garbage",
            format!("{} x", body_with("", "")),
            400,
            "malformed JSON",
        ),
        post(
            "invalid UTF-8",
            b"{\"email\":\"a\xff@b.co\",\"comment\":\"x\",\"content_id\":1}".to_vec(),
            400,
            "malformed JSON",
        ),
        post(
            "invalid UTF-8 in a field the API ignores",
            b"{\"email\":\"a@b.co\",\"comment\":\"x\",\"content_id\":1,\"extra\":\"\xe1b\"}"
                .to_vec(),
            400,
            "not valid UTF-8",
        ),
        post(
            "binary garbage",
            vec![0u8, 159, 146, 150, 255, 0, 1],
            400,
            "malformed JSON",
        ),
        post(
            "lone surrogate",
            r#"{"email":"a@b.co","comment":"\ud800","content_id":1}"#,
            400,
            "malformed JSON",
        ),
        post("deeply nested", nested, 422, "comment"),
        post("array body", "[]", 422, "body"),
        post(
            "nested array body",
            "[".repeat(5000) + &"]".repeat(5000),
            422,
            "JSON object",
        ),
        post("unterminated array body", "[[1,", 400, "malformed JSON"),
        post("string body", r#""hello""#, 422, "body"),
        post(
            "missing email",
            body_with("email", "<absent>"),
            422,
            "email",
        ),
        post(
            "missing comment",
            body_with("comment", "<absent>"),
            422,
            "comment",
        ),
        post(
            "missing content_id",
            body_with("content_id", "<absent>"),
            422,
            "content_id",
        ),
        post("email not a string", body_with("email", "42"), 422, "email"),
        post("email null", body_with("email", "null"), 422, "email"),
        post(
            "email without @",
            body_with("email", r#""plain.example.com""#),
            422,
            "email",
        ),
        post(
            "email with two @",
            body_with("email", r#""a@b@example.com""#),
            422,
            "email",
        ),
        post(
            "email without dotted domain",
            body_with("email", r#""a@localhost""#),
            422,
            "email",
        ),
        post(
            "email too long",
            body_with("email", &long_email),
            422,
            "email",
        ),
        post(
            "comment empty",
            body_with("comment", r#""""#),
            422,
            "comment",
        ),
        post(
            "comment only whitespace",
            body_with("comment", r#"" \n\t ""#),
            422,
            "comment",
        ),
        post(
            "comment too long",
            body_with("comment", &long_comment),
            422,
            "comment",
        ),
        post(
            "comment an object",
            body_with("comment", r#"{"$ne":null}"#),
            422,
            "comment",
        ),
        post(
            "content_id a float",
            body_with("content_id", "1.5"),
            422,
            "content_id",
        ),
        post(
            "content_id a bool",
            body_with("content_id", "true"),
            422,
            "content_id",
        ),
        post(
            "content_id an object",
            body_with("content_id", r#"{"id":1}"#),
            422,
            "content_id",
        ),
        post(
            "content_id with a space",
            body_with("content_id", r#""a b""#),
            422,
            "content_id",
        ),
        post(
            "content_id SQL",
            body_with("content_id", r#""1' OR '1'='1""#),
            422,
            "content_id",
        ),
        post(
            "content_id path traversal",
            body_with("content_id", r#""../../etc/passwd""#),
            422,
            "content_id",
        ),
        post(
            "content_id too long",
            body_with("content_id", &long_id),
            422,
            "content_id",
        ),
        post(
            "content_id empty",
            body_with("content_id", r#""""#),
            422,
            "content_id",
        ),
        post(
            "content_id beyond 2^53",
            body_with("content_id", "9007199254740992"),
            422,
            "content_id",
        ),
        post(
            "content_id beyond 64 bits",
            body_with("content_id", "123456789012345678901234567890"),
            422,
            "content_id",
        ),
        post(
            "duplicate keys",
            r#"{"email":"a@b.co","email":"c@d.co","comment":"x","content_id":1}"#,
            422,
            "duplicate field",
        ),
        post("body over the limit", huge, 413, "larger than"),
        Case {
            headers: vec![("idempotency-key", "has spaces in it")],
            ..post(
                "bad idempotency key",
                body_with("", ""),
                422,
                "Idempotency-Key",
            )
        },
        Case {
            path: "/api/v1/contents/a%20b/comments".into(),
            ..post(
                "v1 invalid content_id",
                r#"{"email":"a@b.co","comment":"x"}"#,
                422,
                "content_id",
            )
        },
        Case {
            path: "/api/v1/contents/1/comments".into(),
            ..post(
                "v1 missing comment",
                r#"{"email":"a@b.co"}"#,
                422,
                "comment",
            )
        },
        get(
            "list invalid content_id",
            "/api/comment/list/a%20b",
            422,
            "content_id",
        ),
        get(
            "list SQL content_id",
            "/api/comment/list/1'%20OR%20'1'='1",
            422,
            "content_id",
        ),
        get(
            "list bad percent-encoding",
            "/api/comment/list/%FF%FE",
            422,
            "content_id",
        ),
        get(
            "list encoded traversal",
            "/api/comment/list/..%2F..%2Fetc",
            422,
            "content_id",
        ),
        get("id not a number", "/api/v1/comments/abc", 422, "id"),
        get("id zero", "/api/v1/comments/0", 422, "id"),
        get(
            "id beyond 64 bits",
            "/api/v1/comments/99999999999999999999",
            422,
            "id",
        ),
        get(
            "limit zero",
            "/api/v1/contents/1/comments?limit=0",
            422,
            "limit",
        ),
        get(
            "limit too large",
            "/api/v1/contents/1/comments?limit=201",
            422,
            "limit",
        ),
        get(
            "limit not a number",
            "/api/v1/contents/1/comments?limit=ten",
            422,
            "limit",
        ),
        get(
            "cursor garbage",
            "/api/v1/contents/1/comments?after=xyz",
            422,
            "after",
        ),
        get("unknown route", "/api/comment/nope", 404, "no such route"),
        get(
            "traversal route",
            "/api/../../etc/passwd",
            404,
            "no such route",
        ),
        Case {
            method: Method::DELETE,
            ..get("wrong method", "/api/comment/new", 405, "DELETE")
        },
        Case {
            method: Method::PUT,
            ..get("wrong method on list", "/api/comment/list/1", 405, "PUT")
        },
    ]
}

async fn send(app: &TestApp, case: &Case) -> Reply {
    let mut request = app
        .client
        .request(case.method.clone(), app.url(&case.path))
        .body(case.body.clone());
    if let Some(content_type) = case.content_type {
        request = request.header("content-type", content_type);
    }
    for (name, value) in &case.headers {
        request = request.header(*name, *value);
    }
    Reply::from(request.send().await.expect(case.name)).await
}

async fn count_comments(db: &Db) -> i64 {
    use sqlx::Connection;
    let query = "SELECT count(*) FROM comments";
    match db.kind {
        Kind::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar(query)
                .fetch_one(&mut conn)
                .await
                .unwrap()
        }
        Kind::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar(query)
                .fetch_one(&mut conn)
                .await
                .unwrap()
        }
    }
}

async fn every_bad_request_gets_its_json_error_and_stores_nothing(db: Db) {
    let app = TestApp::spawn(db).await;
    let table = cases();
    assert!(table.len() >= 25);
    let mut failures = Vec::new();
    for case in &table {
        let reply = send(&app, case).await;
        let message = if reply.header("content-type") == Some("application/json") {
            reply.json()["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        } else {
            format!("<not JSON: {:?}>", String::from_utf8_lossy(&reply.body))
        };
        if reply.status != case.status || !message.contains(case.mentions) {
            failures.push(format!(
                "{}: got {} {message:?}, want {} mentioning {:?}",
                case.name, reply.status, case.status, case.mentions
            ));
            continue;
        }
        reply.error_message();
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert_eq!(
        count_comments(&app.db).await,
        0,
        "a bad request stored something"
    );

    // And the service still works afterwards.
    let ok = app
        .post_json(
            "/api/comment/new",
            r#"{"email":"a@b.co","comment":"after","content_id":1}"#,
        )
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(count_comments(&app.db).await, 1);
    app.stop().await;
}

both_backends!(every_bad_request_gets_its_json_error_and_stores_nothing);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slower_than_the_body_read_timeout_gets_a_json_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with(Db::sqlite().await, |config| {
        config.body_read_timeout = std::time::Duration::from_millis(300)
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = "POST /api/comment/new HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"email\":";
    stream.write_all(head.as_bytes()).await.unwrap();
    // ...and the rest of the body never comes.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "no answer within 5 s");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("content-type: application/json"),
        "{answer}"
    );
    assert!(
        answer.ends_with(
            r#"{"status":"ERROR","message":"the request body did not arrive within the body read timeout"}"#
        ),
        "{answer}"
    );
    app.stop().await;
}

/// The request timeout bounds a request whatever holds it up (here a body that never finishes,
/// with the body read timeout set longer): a JSON 503 with Retry-After, and nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_request_timeout_gets_a_json_503_and_stores_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with(Db::sqlite().await, |config| {
        config.request_timeout = std::time::Duration::from_millis(1200);
        config.body_read_timeout = std::time::Duration::from_secs(30);
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = "POST /api/comment/new HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"email\":";
    let started = std::time::Instant::now();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(
        answer.ends_with(
            r#"{"status":"UNAVAILABLE","message":"the server did not answer within the request timeout"}"#
        ),
        "{answer}"
    );
    assert!(
        took >= std::time::Duration::from_millis(1100),
        "answered after {took:?}"
    );
    let db = app.stop().await;
    assert_eq!(count_comments(&db).await, 0);
}

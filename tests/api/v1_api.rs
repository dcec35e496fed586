//! The versioned API against both backends: create, idempotent retries, pagination, get, admin
//! delete.

use crate::common::{Db, TestApp};
use serde_json::{Value, json};

const TOKEN: &str = "test-admin-token-0123456789";

async fn spawn_with_token(db: Db) -> TestApp {
    TestApp::spawn_with(db, |config| config.admin_token = Some(TOKEN.into())).await
}

async fn create(
    app: &TestApp,
    content_id: &str,
    body: Value,
    key: Option<&str>,
) -> crate::common::Reply {
    let mut request = app
        .client
        .post(app.url(&format!("/api/v1/contents/{content_id}/comments")))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    crate::common::Reply::from(request.send().await.unwrap()).await
}

async fn a_created_comment_has_an_id_a_location_and_reads_back(db: Db) {
    let app = TestApp::spawn(db).await;
    let reply = create(
        &app,
        "article-1",
        json!({"email": "ana@example.com", "comment": "Olá!"}),
        None,
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let created = reply.json();
    let id = created["id"].as_i64().expect("numeric id");
    assert!(id > 0);
    assert_eq!(created["content_id"], "article-1");
    assert_eq!(created["email"], "ana@example.com");
    assert_eq!(created["comment"], "Olá!");
    let created_at = created["created_at"].as_str().unwrap();
    assert!(
        created_at.ends_with('Z') && created_at.contains('T'),
        "{created_at}"
    );
    let location = reply.header("location").unwrap().to_owned();
    assert_eq!(location, format!("/api/v1/comments/{id}"));

    let fetched = app.get(&location).await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.json(), created);

    let missing = app.get("/api/v1/comments/999999").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_message(), "comment 999999 not found");

    // The original API sees v1 comments: it is one store.
    let original = app.get("/api/comment/list/article-1").await;
    assert_eq!(
        original.text(),
        r#"[{"email":"ana@example.com","comment":"Olá!"}]"#
    );
    app.stop().await;
}

async fn a_retry_with_the_same_key_returns_the_first_result_and_stores_nothing(db: Db) {
    let app = TestApp::spawn(db).await;
    let body = json!({"email": "retry@example.com", "comment": "only once"});
    let first = create(&app, "7", body.clone(), Some("key-1")).await;
    assert_eq!(first.status, 201);
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = create(&app, "7", body.clone(), Some("key-1")).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json(), first.json());
    assert_eq!(again.header("location"), first.header("location"));

    let other_body = create(
        &app,
        "7",
        json!({"email": "retry@example.com", "comment": "changed"}),
        Some("key-1"),
    )
    .await;
    assert_eq!(other_body.status, 409);
    assert!(other_body.error_message().contains("Idempotency-Key"));
    let other_item = create(&app, "8", body.clone(), Some("key-1")).await;
    assert_eq!(other_item.status, 409);

    // The original API honours the key too.
    let original = r#"{"email":"retry@example.com","comment":"only once","content_id":7}"#;
    let replay = app
        .client
        .post(app.url("/api/comment/new"))
        .header("content-type", "application/json")
        .header("idempotency-key", "key-1")
        .body(original)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 200);

    let listed = app.get("/api/v1/contents/7/comments").await.json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
    assert!(
        app.get("/api/v1/contents/8/comments").await.json()["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    app.stop().await;
}

async fn concurrent_retries_with_one_key_store_one_comment(db: Db) {
    let app = TestApp::spawn(db).await;
    let body = json!({"email": "race@example.com", "comment": "same"});
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let client = app.client.clone();
        let url = app.url("/api/v1/contents/race/comments");
        let body = body.to_string();
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .header("content-type", "application/json")
                .header("idempotency-key", "race-key")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        let (status, created) = task.await.unwrap();
        assert_eq!(status, 201, "{created}");
        ids.insert(created["id"].as_i64().unwrap());
    }
    assert_eq!(ids.len(), 1, "every retry got the same comment");
    let listed = app.get("/api/v1/contents/race/comments").await.json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    app.stop().await;
}

async fn pages_walk_every_comment_once_in_order(db: Db) {
    let app = TestApp::spawn(db).await;
    for n in 0..23 {
        let reply = create(
            &app,
            "paged",
            json!({"email": "p@example.com", "comment": format!("c{n}")}),
            None,
        )
        .await;
        assert_eq!(reply.status, 201);
    }
    // Another item's comments interleave ids but never show up.
    create(
        &app,
        "other",
        json!({"email": "o@example.com", "comment": "elsewhere"}),
        None,
    )
    .await;

    let mut seen = Vec::new();
    let mut path = "/api/v1/contents/paged/comments?limit=5".to_owned();
    loop {
        let page = app.get(&path).await;
        assert_eq!(page.status, 200, "{}", page.text());
        let page = page.json();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 5);
        seen.extend(
            items
                .iter()
                .map(|c| c["comment"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(cursor) => {
                path = format!("/api/v1/contents/paged/comments?limit=5&after={cursor}")
            }
            None => break,
        }
    }
    let expected: Vec<String> = (0..23).map(|n| format!("c{n}")).collect();
    assert_eq!(seen, expected);

    let default = app.get("/api/v1/contents/paged/comments").await.json();
    assert_eq!(default["items"].as_array().unwrap().len(), 23);
    assert_eq!(default["next"], Value::Null);

    let empty = app.get("/api/v1/contents/nobody-commented/comments").await;
    assert_eq!(empty.status, 200);
    assert_eq!(empty.text(), r#"{"items":[],"next":null}"#);
    app.stop().await;
}

async fn deleting_needs_the_admin_token(db: Db) {
    let app = spawn_with_token(db).await;
    let created = create(
        &app,
        "d",
        json!({"email": "d@example.com", "comment": "bye"}),
        None,
    )
    .await
    .json();
    let path = format!("/api/v1/comments/{}", created["id"]);

    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic dGVzdA=="),
        Some(TOKEN),
    ] {
        let mut request = app.client.delete(app.url(&path));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let reply = crate::common::Reply::from(request.send().await.unwrap()).await;
        assert_eq!(reply.status, 401, "{auth:?}");
        assert_eq!(
            reply.header("www-authenticate"),
            Some(r#"Bearer realm="comments""#)
        );
        assert!(!reply.text().contains(TOKEN));
    }
    assert_eq!(app.get(&path).await.status, 200, "still there");

    let deleted = app
        .client
        .delete(app.url(&path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(app.get(&path).await.status, 404);
    let again = app
        .client
        .delete(app.url(&path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    // The item has no comments left: the original API says so in its own words.
    assert_eq!(
        app.get("/api/comment/list/d").await.text(),
        r#"{"status":"NOT-FOUND","message":"content_id d not found"}"#
    );
    app.stop().await;
}

async fn deleting_is_off_without_a_configured_token(db: Db) {
    let app = TestApp::spawn(db).await;
    let reply = crate::common::Reply::from(
        app.client
            .delete(app.url("/api/v1/comments/1"))
            .bearer_auth("anything")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 403);
    assert!(reply.error_message().contains("no admin token"));
    app.stop().await;
}

both_backends!(
    a_created_comment_has_an_id_a_location_and_reads_back,
    a_retry_with_the_same_key_returns_the_first_result_and_stores_nothing,
    concurrent_retries_with_one_key_store_one_comment,
    pages_walk_every_comment_once_in_order,
    deleting_needs_the_admin_token,
    deleting_is_off_without_a_configured_token,
);

#[tokio::test]
async fn the_admin_token_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let app = TestApp::spawn_with(Db::sqlite().await, |config| {
        config.admin_token_file = Some(file.clone())
    })
    .await;
    let created = create(
        &app,
        "f",
        json!({"email": "f@example.com", "comment": "x"}),
        None,
    )
    .await
    .json();
    let deleted = app
        .client
        .delete(app.url(&format!("/api/v1/comments/{}", created["id"])))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    app.stop().await;
}

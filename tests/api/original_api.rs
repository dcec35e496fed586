//! The original Flask API, byte for byte: the curl sequence from the seed document
//! (`seeds/001_*`, "Execucão Manual de aplicacao") against both backends.

use crate::common::{Db, TestApp};

const QUEUE_1: [&str; 3] = [
    r#"{"email":"guilherme@example.com","comment":"Primeiro Post!","content_id":1}"#,
    r#"{"email":"matheus@example.com","comment":"Parabens pelo novo post!","content_id":1}"#,
    r#"{"email":"guilherme@example.com","comment":"Obrigado, irei postar neste grupo a partir de agora!","content_id":1}"#,
];
const QUEUE_2: [&str; 3] = [
    r#"{"email":"gabriela@example.com","comment":"Quando sera a proxima avaliacao pessoal?","content_id":2}"#,
    r#"{"email":"charlie@example.com","comment":"Acho que esta marcado para segunda Gabi!","content_id":2}"#,
    r#"{"email":"gabriela@example.com","comment":"Ufa, obrigado Charlie!","content_id":2}"#,
];

async fn the_seed_curl_sequence_answers_byte_for_byte(db: Db) {
    let app = TestApp::spawn(db).await;

    for (body, content_id) in QUEUE_1
        .iter()
        .map(|b| (b, 1))
        .chain(QUEUE_2.iter().map(|b| (b, 2)))
    {
        let reply = app.post_json("/api/comment/new", body).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(
            reply.text(),
            format!(
                r#"{{"status":"SUCCESS","message":"comment created and associated with content_id {content_id}"}}"#
            )
        );
    }

    let list_1 = app.get("/api/comment/list/1").await;
    assert_eq!(list_1.status, 200);
    assert_eq!(list_1.header("content-type"), Some("application/json"));
    assert_eq!(
        list_1.text(),
        r#"[{"email":"guilherme@example.com","comment":"Primeiro Post!"},{"email":"matheus@example.com","comment":"Parabens pelo novo post!"},{"email":"guilherme@example.com","comment":"Obrigado, irei postar neste grupo a partir de agora!"}]"#
    );

    let list_2 = app.get("/api/comment/list/2").await;
    assert_eq!(list_2.status, 200);
    assert_eq!(
        list_2.text(),
        r#"[{"email":"gabriela@example.com","comment":"Quando sera a proxima avaliacao pessoal?"},{"email":"charlie@example.com","comment":"Acho que esta marcado para segunda Gabi!"},{"email":"gabriela@example.com","comment":"Ufa, obrigado Charlie!"}]"#
    );

    let missing = app.get("/api/comment/list/7").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("content-type"), Some("application/json"));
    assert_eq!(
        missing.text(),
        r#"{"status":"NOT-FOUND","message":"content_id 7 not found"}"#
    );

    let health = app.get("/health-check").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.header("content-type"), Some("application/json"));
    assert_eq!(health.text(), r#"{"status":"SUCCESS","message":"its ok!"}"#);
    app.stop().await;
}

async fn integer_and_string_content_ids_are_one_item(db: Db) {
    let app = TestApp::spawn(db).await;
    let as_int = r#"{"email":"a@example.com","comment":"int","content_id":42}"#;
    let as_str = r#"{"email":"b@example.com","comment":"str","content_id":"42"}"#;
    assert_eq!(app.post_json("/api/comment/new", as_int).await.status, 200);
    let reply = app.post_json("/api/comment/new", as_str).await;
    assert_eq!(
        reply.text(),
        r#"{"status":"SUCCESS","message":"comment created and associated with content_id 42"}"#
    );
    let list = app.get("/api/comment/list/42").await;
    assert_eq!(
        list.text(),
        r#"[{"email":"a@example.com","comment":"int"},{"email":"b@example.com","comment":"str"}]"#
    );
    // A string id that is not a number is its own item, as in the original.
    let named = r#"{"email":"c@example.com","comment":"named","content_id":"post-42.v2_b"}"#;
    assert_eq!(app.post_json("/api/comment/new", named).await.status, 200);
    assert_eq!(
        app.get("/api/comment/list/post-42.v2_b").await.json()[0]["comment"],
        "named"
    );
    app.stop().await;
}

async fn stored_text_comes_back_exactly_as_sent(db: Db) {
    let app = TestApp::spawn(db).await;
    let texts = [
        "nul \u{0} byte",
        "'; DROP TABLE comments; --",
        "Robert'); DELETE FROM idempotency_keys WHERE ('1'='1",
        "emoji 🦀 and combining e\u{301} and RTL \u{202e}abc",
        "quotes \" and backslashes \\ and </script>",
        "  leading and trailing spaces  ",
        "line\nbreaks\r\nand\ttabs",
        "\u{feff}BOM and \u{200b}zero width",
    ];
    for text in texts {
        let body =
            serde_json::json!({"email": "x@example.com", "comment": text, "content_id": "odd"});
        let reply = app.post_json("/api/comment/new", &body.to_string()).await;
        assert_eq!(reply.status, 200, "{text:?}: {}", reply.text());
    }
    let list = app.get("/api/comment/list/odd").await.json();
    let stored: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["comment"].as_str().unwrap())
        .collect();
    assert_eq!(stored, texts);
    app.stop().await;
}

both_backends!(
    the_seed_curl_sequence_answers_byte_for_byte,
    integer_and_string_content_ids_are_one_item,
    stored_text_comes_back_exactly_as_sent,
);

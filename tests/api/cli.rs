//! The binary's command line: every option documented, bad values refused in one line, and the
//! healthcheck subcommand.

use std::process::Command;

use crate::common::{Db, Server};

fn comments(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_comments"));
    command
        .args(args)
        .env("COMMENTS_LISTEN", "127.0.0.1:0")
        .env("COMMENTS_METRICS_LISTEN", "127.0.0.1:0");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run comments")
}

#[test]
fn help_documents_every_option_and_its_variable() {
    let help = comments(&["--help"], &[]);
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for variable in [
        "COMMENTS_LISTEN",
        "COMMENTS_METRICS_LISTEN",
        "COMMENTS_DATABASE_URL",
        "COMMENTS_LOG_FORMAT",
        "COMMENTS_SHUTDOWN_DELAY",
        "COMMENTS_SHUTDOWN_TIMEOUT",
        "COMMENTS_REQUEST_TIMEOUT",
        "COMMENTS_MAX_BODY_BYTES",
        "COMMENTS_MAX_CONCURRENCY",
        "COMMENTS_ADMIN_TOKEN",
        "COMMENTS_ADMIN_TOKEN_FILE",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_SERVICE_NAME",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_RESOURCE_ATTRIBUTES",
    ] {
        assert!(
            text.contains(&format!("[env: {variable}")),
            "--help does not mention {variable}"
        );
    }
    assert!(text.contains("healthcheck"));
}

#[test]
fn a_bad_value_stops_startup_with_one_line_naming_the_variable() {
    let cases = [
        ("COMMENTS_SHUTDOWN_DELAY", "soon"),
        ("COMMENTS_LISTEN", "not-an-address"),
        ("COMMENTS_MAX_BODY_BYTES", "-5"),
        ("COMMENTS_MAX_CONCURRENCY", "0"),
        ("COMMENTS_LOG_FORMAT", "xml"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ("COMMENTS_SQLITE_SYNCHRONOUS", "sometimes"),
    ];
    for (variable, value) in cases {
        let out = comments(&[], &[(variable, value)]);
        assert_eq!(out.status.code(), Some(2), "{variable}={value}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{variable}={value}: {stderr}");
        assert!(stderr.contains(variable), "{variable}={value}: {stderr}");
    }
}

#[test]
fn start_up_problems_are_one_clear_line_and_a_failure_exit() {
    let dir = tempfile::tempdir().unwrap();
    let missing_token_file = dir.path().join("nope");
    let cases: [(&str, String, &str); 5] = [
        (
            "COMMENTS_DATABASE_URL",
            "mysql://localhost/x".into(),
            "COMMENTS_DATABASE_URL",
        ),
        (
            "COMMENTS_DATABASE_URL_FILE",
            missing_token_file.display().to_string(),
            "COMMENTS_DATABASE_URL_FILE",
        ),
        (
            "COMMENTS_ADMIN_TOKEN_FILE",
            missing_token_file.display().to_string(),
            "COMMENTS_ADMIN_TOKEN_FILE",
        ),
        ("COMMENTS_ADMIN_TOKEN", "   ".into(), "COMMENTS_ADMIN_TOKEN"),
        // Shorter than the storage timeout (800 ms): refused, it could hide a stored write.
        (
            "COMMENTS_REQUEST_TIMEOUT",
            "500ms".into(),
            "COMMENTS_REQUEST_TIMEOUT",
        ),
    ];
    for (variable, value, named) in cases {
        let db = format!("sqlite://{}/c.db", dir.path().display());
        let out = comments(&[], &[("COMMENTS_DATABASE_URL", &db), (variable, &value)]);
        assert_eq!(out.status.code(), Some(1), "{variable}={value}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(named), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_zero_when_ready_and_one_when_not() {
    let db = Db::sqlite().await;
    let server = Server::start(&[("COMMENTS_DATABASE_URL", &db.url)]);
    server.wait_ready(&reqwest::Client::new()).await;
    let addr = server.addr.to_string();
    let ready = comments(&["healthcheck", "--addr", &addr], &[]);
    assert_eq!(ready.status.code(), Some(0));
    drop(server);

    let down = comments(&["healthcheck", "--addr", &addr, "--timeout", "500ms"], &[]);
    assert_eq!(down.status.code(), Some(1));
    let stderr = String::from_utf8(down.stderr).unwrap();
    assert!(stderr.starts_with("comments healthcheck:"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_url_can_come_from_a_file() {
    let db = Db::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("url");
    std::fs::write(&file, format!("{}\n", db.url)).unwrap();
    let server = Server::start(&[
        ("COMMENTS_DATABASE_URL", "sqlite:///nonexistent/ignored.db"),
        ("COMMENTS_DATABASE_URL_FILE", file.to_str().unwrap()),
    ]);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;
    let created = client
        .post(server.url("/api/comment/new"))
        .json(
            &serde_json::json!({"email": "u@example.com", "comment": "via file", "content_id": 1}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM comments")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, 1, "the comment went to the database the file names");
}

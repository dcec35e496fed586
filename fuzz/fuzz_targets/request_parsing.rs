//! Every parser a request's bytes meet before the store, fed arbitrary input: the create bodies
//! of both APIs (JSON, then validation), path ids, the idempotency key. None may panic; every
//! refusal is a 400 or 422; what is accepted keeps the client's text exactly.
//!
//! The first byte picks the parser, the rest is its input.
#![no_main]

use comments::domain::{CommentId, ContentId, IdempotencyKey};
use comments::http::extract::parse_json;
use comments::http::original::OriginalNewComment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => create_body(input),
        1 => {
            if let Ok(text) = std::str::from_utf8(input) {
                if let Ok(id) = ContentId::parse(text) {
                    assert_eq!(id.as_str(), text);
                }
            }
        }
        2 => {
            if let Ok(text) = std::str::from_utf8(input) {
                if let Ok(id) = CommentId::parse(text) {
                    assert!(id.get() > 0);
                    assert_eq!(id.get().to_string(), text.trim_start_matches('0'));
                }
            }
        }
        _ => {
            if let Ok(key) = IdempotencyKey::parse(input) {
                assert_eq!(key.as_str().as_bytes(), input);
            }
        }
    }
});

fn create_body(input: &[u8]) {
    let parsed = match parse_json::<OriginalNewComment>(input) {
        Ok(parsed) => parsed,
        Err(err) => {
            let status = err.status().as_u16();
            assert!(status == 400 || status == 422, "{status} for {input:?}");
            return;
        }
    };
    let Ok(new) = parsed.validate() else { return };
    // What is stored is what the client sent: validation keeps the strings the body holds. (Read
    // back as just these two: the rest of an accepted body may hold what serde_json's `Value`
    // refuses, such as 1e400 in a field the API ignores, which is valid JSON.)
    #[derive(serde::Deserialize)]
    struct Sent {
        email: String,
        comment: String,
    }
    let sent: Sent = serde_json::from_slice(input).expect("accepted, so these are strings");
    assert_eq!(new.comment.as_str(), sent.comment);
    assert_eq!(new.email.as_str(), sent.email);
}

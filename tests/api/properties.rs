//! Property tests over request parsing and validation: arbitrary input never panics, is classified
//! as the right 4xx, and valid text survives the round trip byte for byte.

use comments::domain::{
    CommentId, CommentText, ContentId, Email, IdempotencyKey, MAX_SAFE_INTEGER as MAX_SAFE,
    NewComment,
};
use comments::http::extract::parse_json;
use comments::http::original::OriginalNewComment;
use proptest::prelude::*;

fn content_id_alphabet(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_bytes_are_parsed_or_refused_with_400_or_422(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Err(err) = parse_json::<OriginalNewComment>(&body) {
            prop_assert!(matches!(err.status().as_u16(), 400 | 422), "{} for {:?}", err.status(), body);
        }
    }

    #[test]
    fn any_json_shape_is_parsed_or_refused_with_400_or_422(
        email in prop_oneof![any::<String>().prop_map(|s| serde_json::json!(s)), any::<i64>().prop_map(|n| serde_json::json!(n)), Just(serde_json::Value::Null)],
        comment in prop_oneof![any::<String>().prop_map(|s| serde_json::json!(s)), any::<bool>().prop_map(|b| serde_json::json!(b))],
        content_id in prop_oneof![any::<i64>().prop_map(|n| serde_json::json!(n)), any::<f64>().prop_map(|n| serde_json::json!(n)), any::<String>().prop_map(|s| serde_json::json!(s))],
    ) {
        let body = serde_json::json!({"email": email, "comment": comment, "content_id": content_id}).to_string();
        if let Err(err) = parse_json::<OriginalNewComment>(body.as_bytes()) {
            prop_assert_eq!(err.status().as_u16(), 422, "{}", body);
        }
    }

    #[test]
    fn valid_comment_text_comes_back_exactly(text in "\\PC{1,300}", id in -(MAX_SAFE as i64)..=(MAX_SAFE as i64)) {
        prop_assume!(!text.trim().is_empty());
        let body = serde_json::json!({"email": "p@example.com", "comment": text, "content_id": id}).to_string();
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        prop_assert_eq!(parsed["comment"].as_str().unwrap(), text.as_str());
        prop_assert!(parse_json::<OriginalNewComment>(body.as_bytes()).is_ok());
        let new = NewComment::parse(
            ContentId::parse(&id.to_string()).unwrap(),
            "p@example.com".into(),
            text.clone(),
        ).unwrap();
        prop_assert_eq!(new.comment.as_str(), text.as_str());
    }

    #[test]
    fn comment_text_is_accepted_iff_not_blank_and_at_most_4000_chars(text in "\\PC{0,20}|[ \\t\\n]{0,5}") {
        let accepted = CommentText::parse(text.clone()).is_ok();
        prop_assert_eq!(accepted, !text.trim().is_empty() && text.chars().count() <= 4000);
    }

    #[test]
    fn content_ids_are_accepted_iff_in_the_alphabet(raw in "\\PC{0,130}|[A-Za-z0-9._-]{0,130}") {
        let expected = !raw.is_empty() && raw.chars().count() <= 128 && raw.chars().all(content_id_alphabet);
        prop_assert_eq!(ContentId::parse(&raw).is_ok(), expected, "{:?}", raw);
    }

    #[test]
    fn integer_content_ids_are_their_decimal_string(n in -(MAX_SAFE as i64)..=(MAX_SAFE as i64)) {
        let from_int: ContentId = serde_json::from_str(&n.to_string()).unwrap();
        let from_str: ContentId = serde_json::from_value(serde_json::json!(n.to_string())).unwrap();
        prop_assert_eq!(from_int.as_str(), n.to_string());
        prop_assert_eq!(from_int, from_str);
    }

    #[test]
    fn accepted_emails_have_one_at_and_a_dotted_domain(raw in "\\PC{0,40}|[a-z]{1,8}@[a-z]{1,8}(\\.[a-z]{1,4}){0,2}") {
        if let Ok(email) = Email::parse(raw.clone()) {
            let (local, domain) = email.as_str().split_once('@').unwrap();
            prop_assert!(!local.is_empty());
            prop_assert!(!domain.contains('@') && domain.contains('.'));
            prop_assert!(domain.split('.').all(|label| !label.is_empty()));
        }
    }

    #[test]
    fn comment_ids_are_accepted_iff_positive_decimal(raw in "[+-]?[0-9]{1,21}|\\PC{0,10}") {
        let expected = raw.parse::<i64>().is_ok_and(|n| n > 0) && !raw.starts_with('+');
        prop_assert_eq!(CommentId::parse(&raw).is_ok(), expected, "{:?}", raw);
    }

    #[test]
    fn idempotency_keys_are_accepted_iff_visible_ascii(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
        let expected = !raw.is_empty() && raw.len() <= 255 && raw.iter().all(|b| (0x21..=0x7e).contains(b));
        prop_assert_eq!(IdempotencyKey::parse(&raw).is_ok(), expected);
    }
}

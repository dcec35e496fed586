//! Domain types. Each one can only exist if it is valid, so handlers and stores never re-check.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub const CONTENT_ID_MAX_CHARS: usize = 128;
pub const EMAIL_MAX_CHARS: usize = 254;
pub const COMMENT_MAX_CHARS: usize = 4000;
pub const IDEMPOTENCY_KEY_MAX_CHARS: usize = 255;

/// A rule a field broke. `field` is what the client sent it as, so the message can name it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct Invalid {
    pub field: &'static str,
    pub problem: &'static str,
}

impl Invalid {
    pub const fn new(field: &'static str, problem: &'static str) -> Self {
        Self { field, problem }
    }
}

/// The largest integer `content_id` (2^53 - 1): every JSON client, JavaScript's included, writes
/// integers up to here exactly. Larger ids can be sent as strings.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
const TOO_LARGE: &str = "must be an integer between -(2^53 - 1) and 2^53 - 1, or a string";

/// The item comments hang off: `1` and `"1"` are the same item, as in the original API.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ContentId(String);

impl ContentId {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if raw.is_empty() || raw.len() > CONTENT_ID_MAX_CHARS || !raw.chars().all(allowed) {
            return Err(Invalid::new(
                "content_id",
                "must be an integer or 1 to 128 characters of A-Z a-z 0-9 . _ -",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `content_id` as a JSON body carries it: an integer or a string, both naming one item.
impl<'de> Deserialize<'de> for ContentId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContentIdVisitor;

        impl Visitor<'_> for ContentIdVisitor {
            type Value = ContentId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ContentId, E> {
                if v.unsigned_abs() > MAX_SAFE_INTEGER {
                    return Err(E::custom(TOO_LARGE));
                }
                Ok(ContentId(v.to_string()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ContentId, E> {
                if v > MAX_SAFE_INTEGER {
                    return Err(E::custom(TOO_LARGE));
                }
                Ok(ContentId(v.to_string()))
            }

            /// `2179.0` is the integer 2179 to JSON Schema (and to JavaScript clients).
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ContentId, E> {
                if v.fract() != 0.0 {
                    return Err(E::invalid_type(de::Unexpected::Float(v), &self));
                }
                if v.abs() > MAX_SAFE_INTEGER as f64 {
                    return Err(E::custom(TOO_LARGE));
                }
                Ok(ContentId((v as i64).to_string()))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ContentId, E> {
                ContentId::parse(v).map_err(|e| E::custom(e.problem))
            }
        }

        deserializer.deserialize_any(ContentIdVisitor)
    }
}

/// An address with one `@`, a non-empty local part and a dotted domain. Deliberately loose past
/// that: the service stores addresses, it does not deliver mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: String) -> Result<Self, Invalid> {
        const SHAPE: Invalid = Invalid::new(
            "email",
            "must be one local part, one @ and a dotted domain, without spaces",
        );
        if raw.chars().count() > EMAIL_MAX_CHARS {
            return Err(Invalid::new("email", "must be at most 254 characters"));
        }
        let (local, domain) = raw.split_once('@').ok_or(SHAPE)?;
        let domain_ok = domain.contains('.')
            && domain.split('.').all(|label| !label.is_empty())
            && !domain.contains('@');
        let no_space = !raw.chars().any(|c| c.is_whitespace() || c.is_control());
        if local.is_empty() || !domain_ok || !no_space {
            return Err(SHAPE);
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The comment text, stored and returned exactly as sent (NUL and odd Unicode included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommentText(String);

impl CommentText {
    pub fn parse(raw: String) -> Result<Self, Invalid> {
        if raw.trim().is_empty() {
            return Err(Invalid::new(
                "comment",
                "must not be empty or only whitespace",
            ));
        }
        if raw.chars().count() > COMMENT_MAX_CHARS {
            return Err(Invalid::new("comment", "must be at most 4000 characters"));
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A client-chosen key that makes a create safe to retry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &[u8]) -> Result<Self, Invalid> {
        let visible = |b: &u8| (0x21..=0x7e).contains(b);
        if raw.is_empty() || raw.len() > IDEMPOTENCY_KEY_MAX_CHARS || !raw.iter().all(visible) {
            return Err(Invalid::new(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            ));
        }
        // Every byte is visible ASCII, so this cannot fail.
        Ok(Self(String::from_utf8_lossy(raw).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A comment as a client asks to create it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewComment {
    pub content_id: ContentId,
    pub email: Email,
    pub comment: CommentText,
}

impl NewComment {
    /// Validates the fields a client sent, naming the first one that is wrong.
    pub fn parse(content_id: ContentId, email: String, comment: String) -> Result<Self, Invalid> {
        Ok(NewComment {
            content_id,
            email: Email::parse(email)?,
            comment: CommentText::parse(comment)?,
        })
    }
}

/// A stored comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    pub id: CommentId,
    pub content_id: ContentId,
    pub email: String,
    pub comment: String,
    pub created_at: OffsetDateTime,
}

impl Comment {
    /// Whether `new` asks for exactly this comment (an idempotent retry).
    pub fn matches(&self, new: &NewComment) -> bool {
        self.content_id == new.content_id
            && self.email == new.email.as_str()
            && self.comment == new.comment.as_str()
    }

    pub fn created_at_rfc3339(&self) -> String {
        self.created_at
            .format(&Rfc3339)
            .unwrap_or_else(|_| self.created_at.unix_timestamp().to_string())
    }
}

/// A comment's id: positive, assigned by the store, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CommentId(i64);

impl CommentId {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        match raw.parse::<i64>() {
            Ok(id) if id > 0 && !raw.starts_with('+') => Ok(Self(id)),
            _ => Err(Invalid::new("id", "must be a positive integer below 2^63")),
        }
    }

    /// For ids that come from the store itself.
    pub const fn from_stored(id: i64) -> Self {
        Self(id)
    }

    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for CommentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a page of a list starts and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Only comments after this one (the cursor of the previous page).
    pub after: Option<CommentId>,
    /// At most this many; `None` means all of them (the original API has no paging).
    pub limit: Option<u32>,
}

impl Page {
    pub const ALL: Page = Page {
        after: None,
        limit: None,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_and_string_content_ids_name_one_item() {
        let from_int: ContentId = serde_json::from_str("1").unwrap();
        let from_str: ContentId = serde_json::from_str("\"1\"").unwrap();
        assert_eq!(from_int, from_str);
        let negative: ContentId = serde_json::from_str("-7").unwrap();
        assert_eq!(negative.as_str(), "-7");
        assert!(serde_json::from_str::<ContentId>("9007199254740991").is_ok());
        assert!(serde_json::from_str::<ContentId>("9007199254740992").is_err());
        assert!(serde_json::from_str::<ContentId>("-9007199254740992").is_err());
    }

    #[test]
    fn content_ids_outside_the_alphabet_or_length_are_refused() {
        for bad in ["", "a b", "../etc", "é", "a/b", "1;DROP", &"x".repeat(129)] {
            assert!(ContentId::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(ContentId::parse(&"x".repeat(128)).is_ok());
        assert!(serde_json::from_str::<ContentId>("1.5").is_err());
        let whole: ContentId = serde_json::from_str("2179.0").unwrap();
        assert_eq!(whole.as_str(), "2179");
        assert!(serde_json::from_str::<ContentId>("null").is_err());
        assert!(serde_json::from_str::<ContentId>("true").is_err());
    }

    #[test]
    fn emails_need_one_at_and_a_dotted_domain() {
        for good in ["a@b.co", "guilherme@example.com", "x+tag@sub.example.org"] {
            assert!(Email::parse(good.into()).is_ok(), "{good} refused");
        }
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@b",
            "a@@b.com",
            "a@b@c.com",
            "a@.com",
            "a@b.",
            "a b@c.com",
            "a@b..com",
        ] {
            assert!(Email::parse(bad.into()).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(243));
        assert_eq!(long.len(), 255);
        assert!(Email::parse(long).is_err());
    }

    #[test]
    fn comments_keep_their_bytes_and_refuse_blank_or_long_text() {
        let odd = "nul\0 é 🦀 \u{202e} '; DROP TABLE comments; --".to_string();
        assert_eq!(CommentText::parse(odd.clone()).unwrap().as_str(), odd);
        assert!(CommentText::parse(" \n\t\u{3000}".into()).is_err());
        assert!(CommentText::parse("é".repeat(4000)).is_ok());
        assert!(CommentText::parse("é".repeat(4001)).is_err());
    }

    #[test]
    fn comment_ids_are_positive_integers() {
        assert_eq!(CommentId::parse("42").unwrap().get(), 42);
        for bad in ["0", "-1", "+1", "abc", "99999999999999999999", "1.0", ""] {
            assert!(CommentId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(IdempotencyKey::parse(b"retry-1").is_ok());
        assert!(IdempotencyKey::parse(b"").is_err());
        assert!(IdempotencyKey::parse(b"has space").is_err());
        assert!(IdempotencyKey::parse("é".as_bytes()).is_err());
        assert!(IdempotencyKey::parse(&[b'k'; 256]).is_err());
    }
}

//! The admin bearer token. Only its SHA-256 digest is kept, and candidates are compared digest
//! to digest in constant time, so neither the token's bytes nor its length leak through timing.

use std::fmt;
use std::sync::Arc;

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Clone)]
pub struct AdminToken {
    digest: Arc<[u8; 32]>,
}

impl AdminToken {
    pub fn new(token: &str) -> Self {
        Self {
            digest: Arc::new(Sha256::digest(token.as_bytes()).into()),
        }
    }

    /// Whether the request carries `Authorization: Bearer <this token>`.
    pub fn authorizes(&self, headers: &HeaderMap) -> bool {
        let Some(candidate) = bearer(headers) else {
            return false;
        };
        let candidate: [u8; 32] = Sha256::digest(candidate).into();
        candidate.ct_eq(&*self.digest).into()
    }
}

/// Never prints the token, not even its digest.
impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn only_the_exact_bearer_token_authorizes() {
        let token = AdminToken::new("s3cret");
        assert!(token.authorizes(&with_auth("Bearer s3cret")));
        assert!(token.authorizes(&with_auth("bearer s3cret")));
        for wrong in [
            "Bearer s3cre",
            "Bearer s3cret ",
            "Basic s3cret",
            "s3cret",
            "Bearer ",
        ] {
            assert!(!token.authorizes(&with_auth(wrong)), "{wrong:?} authorized");
        }
        assert!(!token.authorizes(&HeaderMap::new()));
    }

    #[test]
    fn debug_output_hides_the_token() {
        assert!(!format!("{:?}", AdminToken::new("s3cret")).contains("s3cret"));
    }
}

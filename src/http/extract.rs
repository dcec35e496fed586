//! Extractors whose rejections are our own JSON errors, naming what was wrong.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::{HeaderMap, header, request::Parts};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::AppState;
use crate::domain::{CommentId, ContentId, IdempotencyKey, Invalid, Page};
use crate::error::ApiError;

/// A JSON body: `Content-Type: application/json` (415 otherwise), within the body limit (413),
/// well-formed (400), and of the right shape (422 naming the field).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| match rejection {
                BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
                    ApiError::PayloadTooLarge(state.max_body_bytes)
                }
                other if caused_by_timeout(&other) => ApiError::Timeout,
                _ => ApiError::MalformedJson("the request body could not be read".into()),
            })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Whether a body read failed because the client was too slow (the body deadline layer).
fn caused_by_timeout(rejection: &BytesRejection) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(err) = cause {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = err.source();
    }
    false
}

/// `application/json`, with or without parameters such as `charset`, or any `+json` type.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses JSON, telling syntax errors (400) from well-formed JSON of the wrong shape (422, with
/// the path of the offending field).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // JSON is UTF-8 (RFC 8259). serde_json checks the strings it keeps, but not those it skips
    // (unknown fields): checked here, so no body with invalid UTF-8 anywhere is accepted (found by
    // `cargo fuzz`, fuzz/).
    if let Err(err) = std::str::from_utf8(bytes) {
        return Err(ApiError::MalformedJson(format!(
            "malformed JSON: the body is not valid UTF-8 (at byte {})",
            err.valid_up_to()
        )));
    }
    // serde would read a struct from an array too; every body of this API is an object.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => ApiError::Invalid("body: must be a JSON object".into()),
                Err(err) => ApiError::MalformedJson(format!("malformed JSON: {err}")),
            },
        );
    }
    // A valid body, the common case, is read once without tracking the path: serde_path_to_error
    // wraps every key and value, 39% of parsing a POST body (callgrind: 4.19k -> 2.55k instr.).
    // Only a body that fails is read a second time, the same way plus the path, to name the field.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = without_position(&inner);
        if inner.is_data() {
            if path == "." {
                ApiError::Invalid(format!("body: {message}"))
            } else {
                ApiError::Invalid(format!("{path}: {message}"))
            }
        } else if inner.is_eof() && bytes.iter().all(u8::is_ascii_whitespace) {
            ApiError::MalformedJson("the request body is empty; expected a JSON object".into())
        } else {
            ApiError::MalformedJson(format!("malformed JSON: {}", inner))
        }
    })?;
    deserializer
        .end()
        .map_err(|err| ApiError::MalformedJson(format!("malformed JSON: {err}")))?;
    Ok(value)
}

/// serde_json appends " at line L column C" to data errors; the field path says more.
fn without_position(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
}

/// One path parameter, decoded as a string (bad percent-encoding is a 422, not a plain-text 400).
async fn path_param(
    parts: &mut Parts,
    state: &AppState,
    field: &'static str,
) -> Result<String, ApiError> {
    Path::<String>::from_request_parts(parts, state)
        .await
        .map(|Path(raw)| raw)
        .map_err(|_| Invalid::new(field, "is not valid percent-encoded UTF-8").into())
}

/// `{content_id}` in a path.
pub struct ContentIdPath(pub ContentId);

impl FromRequestParts<AppState> for ContentIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let raw = path_param(parts, state, "content_id").await?;
        Ok(Self(ContentId::parse(&raw)?))
    }
}

/// `{id}` in a path.
pub struct CommentIdPath(pub CommentId);

impl FromRequestParts<AppState> for CommentIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let raw = path_param(parts, state, "id").await?;
        Ok(Self(CommentId::parse(&raw)?))
    }
}

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 200;

/// `?limit=&after=` of a paginated list.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1 to 200 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// The `next` cursor of the previous page.
    #[param(value_type = Option<String>, pattern = r"^0*[1-9][0-9]{0,17}$")]
    after: Option<String>,
}

pub struct PageQuery(pub Page);

impl FromRequestParts<AppState> for PageQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Query(params) = Query::<ListParams>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| {
                ApiError::Invalid(format!("query string: {}", rejection.body_text()))
            })?;
        let limit = match params.limit.as_deref() {
            None => DEFAULT_PAGE_SIZE,
            Some(raw) => match raw.parse::<u32>() {
                Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
                _ => return Err(Invalid::new("limit", "must be an integer from 1 to 200").into()),
            },
        };
        let after = match params.after.as_deref() {
            None => None,
            Some(raw) => Some(CommentId::parse(raw).map_err(|_| {
                Invalid::new("after", "must be the next cursor of a previous page")
            })?),
        };
        Ok(Self(Page {
            after,
            limit: Some(limit),
        }))
    }
}

/// The optional `Idempotency-Key` header.
pub struct IdempotencyKeyHeader(pub Option<IdempotencyKey>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKeyHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all("idempotency-key").iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return match parts.headers.contains_key("idempotency-key") {
                true => Err(Invalid::new("Idempotency-Key", "must be sent at most once").into()),
                false => Ok(Self(None)),
            };
        };
        Ok(Self(Some(IdempotencyKey::parse(value.as_bytes())?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn content_type(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn json_content_types_are_recognised() {
        for good in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(is_json(&content_type(good)), "{good}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "json",
            "+json",
            "",
        ] {
            assert!(!is_json(&content_type(bad)), "{bad}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }

    #[derive(Debug, Deserialize)]
    struct Body {
        email: String,
    }

    #[test]
    fn a_valid_body_is_read_whole() {
        let body = parse_json::<Body>(b" {\"email\":\"a\\u00e9\",\"other\":[1]} ").unwrap();
        assert_eq!(body.email, "a\u{e9}");
    }

    #[test]
    fn syntax_errors_are_400_and_shape_errors_422_naming_the_field() {
        let status = |raw: &str| {
            parse_json::<Body>(raw.as_bytes())
                .unwrap_err()
                .status()
                .as_u16()
        };
        assert_eq!(status("{"), 400);
        assert_eq!(status(""), 400);
        assert_eq!(status("{\"email\":\"a\"} trailing"), 400);
        assert_eq!(status("{\"email\":5}"), 422);
        assert_eq!(status("{}"), 422);
        assert_eq!(status("[]"), 422);
        assert_eq!(status("[1,"), 400);
        assert_eq!(status("\"text\""), 422);
        let message = parse_json::<Body>(b"{\"email\":5}")
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "email: invalid type: integer `5`, expected a string"
        );
    }
}

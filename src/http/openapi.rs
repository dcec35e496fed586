//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations when the
//! router is built, so it cannot drift from the routes.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, OneOfBuilder, RefOr, Schema, Type};
use utoipa::{Modify, OpenApi, ToSchema};

use super::AppState;
use crate::domain::MAX_SAFE_INTEGER;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "comments",
        description = "Comments on content items. The original API (/api/comment/...) is kept \
                       byte for byte; /api/v1 adds ids, pagination, idempotent creates and \
                       admin deletes.",
        license(name = "MIT"),
    ),
    tags(
        (name = "original", description = "The original Flask API, unchanged"),
        (name = "v1", description = "The versioned API"),
        (name = "health", description = "Probes, version and this document"),
    ),
    modifiers(&AdminBearer),
)]
struct ApiDoc;

/// Registers the admin bearer token scheme the DELETE operation refers to.
struct AdminBearer;

impl Modify for AdminBearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("COMMENTS_ADMIN_TOKEN"))
                    .build(),
            ),
        );
    }
}

pub fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub fn render(document: utoipa::openapi::OpenApi) -> Bytes {
    document
        .to_pretty_json()
        .expect("the OpenAPI document always serializes")
        .into()
}

/// Every error: `{"status":"ERROR","message":"..."}` (`NOT-FOUND` for the original list,
/// `UNAVAILABLE` with `Retry-After` for 503).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ERROR", "message": "email must be one local part, one @ and a dotted domain, without spaces"}))]
pub struct ErrorBody {
    pub status: String,
    pub message: String,
}

// What `domain::Email::parse` and `domain::CommentText::parse` accept, for clients and API
// fuzzers. Whitespace and control characters are spelled out (U+0000-0020, U+007F-00A0 and the
// other Unicode White_Space) so every regex engine agrees with Rust's `char::is_whitespace` and
// `char::is_control`.

/// One `@`, a non-empty local part, a dotted domain with no empty label; no spaces or controls.
pub const EMAIL_PATTERN: &str = r"^[^@\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]+@[^@.\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]+(\.[^@.\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]+)+$";

/// At least one character that is not whitespace.
pub const COMMENT_PATTERN: &str =
    r"[^\x09-\x0D\x20\x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]";

/// What a create can answer besides success (both APIs share them).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only its shape matters: it documents responses, nothing builds one.
pub enum CreateErrors {
    /// Malformed JSON
    #[response(status = 400)]
    MalformedJson(ErrorBody),
    /// The body did not arrive within the body read timeout
    #[response(status = 408)]
    BodyTimeout(ErrorBody),
    /// Idempotency-Key reused for another comment
    #[response(status = 409)]
    KeyReused(ErrorBody),
    /// Body over the limit
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Not application/json
    #[response(status = 415)]
    NotJson(ErrorBody),
    /// A field is invalid
    #[response(status = 422)]
    Invalid(ErrorBody),
    /// Write rate limit (when configured); see Retry-After
    #[response(status = 429)]
    RateLimited(ErrorBody),
    /// Storage unavailable or server overloaded; see Retry-After
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// `email` in a body.
pub fn email_schema() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("Up to 254 characters, one `@`, a dotted domain"))
        .max_length(Some(254))
        .pattern(Some(EMAIL_PATTERN))
}

/// `comment` in a body.
pub fn comment_schema() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(
            "1 to 4000 characters, not only whitespace; stored exactly as sent",
        ))
        .min_length(Some(1))
        .max_length(Some(4000))
        .pattern(Some(COMMENT_PATTERN))
}

/// `content_id` in a body: an integer or a string of 1 to 128 characters of `A-Z a-z 0-9 . _ -`;
/// `1` and `"1"` name the same item.
pub fn content_id_schema() -> impl Into<RefOr<Schema>> {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(-(MAX_SAFE_INTEGER as f64)))
                .maximum(Some(MAX_SAFE_INTEGER as f64)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(128))
                .pattern(Some("^[A-Za-z0-9._-]+$")),
        )
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    responses((status = 200, description = "This document", content_type = "application/json")),
)]
pub async fn serve(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi_json.clone(),
    )
}

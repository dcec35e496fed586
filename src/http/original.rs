//! The original Flask API, kept byte for byte: existing clients and the curl lines in the seed
//! documents keep working.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::{ContentIdPath, IdempotencyKeyHeader, JsonBody};
use super::openapi::{CreateErrors, ErrorBody, comment_schema, content_id_schema, email_schema};
use crate::domain::{ContentId, NewComment, Page};
use crate::error::{ApiError, json_response};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_comment))
        .routes(routes!(list_comments))
}

/// The original create body. Unknown fields are ignored, as Flask did.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"email": "guilherme@example.com", "comment": "Primeiro Post!", "content_id": 1}))]
pub struct OriginalNewComment {
    /// Up to 254 characters, one `@`, a dotted domain.
    #[schema(schema_with = email_schema)]
    email: String,
    /// 1 to 4000 characters, not only whitespace; stored exactly as sent.
    #[schema(schema_with = comment_schema)]
    comment: String,
    #[schema(schema_with = content_id_schema)]
    content_id: ContentId,
}

impl OriginalNewComment {
    /// The comment this body asks for, or the first field that is wrong.
    pub fn validate(self) -> Result<NewComment, crate::domain::Invalid> {
        NewComment::parse(self.content_id, self.email, self.comment)
    }
}

/// `{"status":"SUCCESS","message":"..."}`
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "SUCCESS", "message": "comment created and associated with content_id 1"}))]
pub struct SuccessBody {
    status: String,
    message: String,
}

/// One comment as the original list shows it.
#[derive(Serialize, ToSchema)]
pub struct OriginalComment<'a> {
    email: &'a str,
    comment: &'a str,
}

/// Create a comment (original API).
#[utoipa::path(
    post,
    path = "/api/comment/new",
    operation_id = "original_create_comment",
    tag = "original",
    request_body = OriginalNewComment,
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, pattern = r"^[!-~]+$", description = "Makes retries safe")),
    responses(
        (status = 200, description = "Committed", body = SuccessBody),
        CreateErrors,
    ),
)]
async fn create_comment(
    State(state): State<AppState>,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    JsonBody(body): JsonBody<OriginalNewComment>,
) -> Result<Response, ApiError> {
    let new = body.validate()?;
    let created = state.store.create(new, key).await?;
    let message = format!(
        "comment created and associated with content_id {}",
        created.comment().content_id
    );
    Ok(json_response(StatusCode::OK, "SUCCESS", &message))
}

/// List the comments on an item, oldest first (original API).
#[utoipa::path(
    get,
    path = "/api/comment/list/{content_id}",
    operation_id = "original_list_comments",
    tag = "original",
    params(("content_id" = String, Path, description = "1 to 128 characters of A-Z a-z 0-9 . _ -", pattern = r"^[A-Za-z0-9._-]{1,128}$")),
    responses(
        (status = 200, description = "Every comment on the item", body = Vec<OriginalComment>),
        (status = 404, description = "No comments on this item", body = ErrorBody,
         example = json!({"status": "NOT-FOUND", "message": "content_id 7 not found"})),
        (status = 422, description = "content_id is invalid", body = ErrorBody),
        (status = 503, description = "Storage unavailable or server overloaded", body = ErrorBody),
    ),
)]
async fn list_comments(
    State(state): State<AppState>,
    ContentIdPath(content_id): ContentIdPath,
) -> Result<Response, ApiError> {
    let comments = state.store.list(&content_id, Page::ALL).await?;
    if comments.is_empty() {
        return Err(ApiError::ContentNotFound(content_id));
    }
    // Rendered once per version of a cached list, not once per request.
    let body = comments.render_whole(|comments| {
        let shown: Vec<OriginalComment> = comments
            .iter()
            .map(|c| OriginalComment {
                email: &c.email,
                comment: &c.comment,
            })
            .collect();
        serde_json::to_vec(&shown)
            .expect("strings always serialize")
            .into()
    });
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

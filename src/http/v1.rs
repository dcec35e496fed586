//! The versioned API: ids, cursor pagination, idempotent creates, admin deletes.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::{CommentIdPath, ContentIdPath, IdempotencyKeyHeader, JsonBody, PageQuery};
use super::openapi::{CreateErrors, ErrorBody, comment_schema, email_schema};
use crate::domain::{Comment, NewComment};
use crate::error::ApiError;
use crate::store::Created;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_comment, list_comments))
        .routes(routes!(get_comment, delete_comment))
}

/// A v1 create body; the item comes from the path.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"email": "gabriela@example.com", "comment": "Quando sera a proxima avaliacao?"}))]
pub struct NewCommentBody {
    /// Up to 254 characters, one `@`, a dotted domain.
    #[schema(schema_with = email_schema)]
    email: String,
    /// 1 to 4000 characters, not only whitespace; stored exactly as sent.
    #[schema(schema_with = comment_schema)]
    comment: String,
}

/// A stored comment.
#[derive(Serialize, ToSchema)]
pub struct CommentView<'a> {
    #[schema(example = 1)]
    id: i64,
    /// The item, always as a string (`1` and `"1"` are one item).
    #[schema(example = "1")]
    content_id: &'a str,
    email: &'a str,
    comment: &'a str,
    /// RFC 3339, UTC.
    #[schema(example = "2026-11-23T10:30:14.123456Z")]
    created_at: String,
}

impl<'a> From<&'a Comment> for CommentView<'a> {
    fn from(c: &'a Comment) -> Self {
        CommentView {
            id: c.id.get(),
            content_id: c.content_id.as_str(),
            email: &c.email,
            comment: &c.comment,
            created_at: c.created_at_rfc3339(),
        }
    }
}

/// One page of comments, oldest first.
#[derive(Serialize, ToSchema)]
pub struct CommentPage<'a> {
    items: Vec<CommentView<'a>>,
    /// Pass as `after` for the next page; `null` on the last page.
    next: Option<String>,
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let body = serde_json::to_vec(body).expect("views always serialize");
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Create a comment on an item.
#[utoipa::path(
    post,
    path = "/api/v1/contents/{content_id}/comments",
    operation_id = "v1_create_comment",
    tag = "v1",
    params(
        ("content_id" = String, Path, description = "1 to 128 characters of A-Z a-z 0-9 . _ -", pattern = r"^[A-Za-z0-9._-]{1,128}$"),
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1,
         max_length = 255, pattern = r"^[!-~]+$",
         description = "1 to 255 visible ASCII characters. A retry with the same key and body \
                        returns the first result and stores nothing; another body gets 409."),
    ),
    request_body = NewCommentBody,
    responses(
        (status = 201, description = "Committed (or replayed: header Idempotent-Replayed)",
         body = CommentView, headers(("Location" = String, description = "The comment's URL"))),
        CreateErrors,
    ),
)]
async fn create_comment(
    State(state): State<AppState>,
    ContentIdPath(content_id): ContentIdPath,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    JsonBody(body): JsonBody<NewCommentBody>,
) -> Result<Response, ApiError> {
    let new = NewComment::parse(content_id, body.email, body.comment)?;
    let created = state.store.create(new, key).await?;
    let comment = created.comment();
    let mut response = json(StatusCode::CREATED, &CommentView::from(comment));
    let headers = response.headers_mut();
    let location = format!("/api/v1/comments/{}", comment.id);
    headers.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("an integer path is a valid header"),
    );
    if let Created::Replayed(_) = created {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// List comments on an item, oldest first, a page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/contents/{content_id}/comments",
    operation_id = "v1_list_comments",
    tag = "v1",
    params(
        ("content_id" = String, Path, description = "1 to 128 characters of A-Z a-z 0-9 . _ -", pattern = r"^[A-Za-z0-9._-]{1,128}$"),
        super::extract::ListParams,
    ),
    responses(
        (status = 200, description = "A page (empty when the item has no comments)", body = CommentPage),
        (status = 422, description = "A parameter is invalid", body = ErrorBody),
        (status = 503, description = "Storage unavailable or server overloaded", body = ErrorBody),
    ),
)]
async fn list_comments(
    State(state): State<AppState>,
    ContentIdPath(content_id): ContentIdPath,
    PageQuery(page): PageQuery,
) -> Result<Response, ApiError> {
    let limit = page.limit.unwrap_or(super::extract::DEFAULT_PAGE_SIZE);
    // One extra row tells whether another page follows, without a second query.
    let mut comments = state
        .store
        .list(
            &content_id,
            crate::domain::Page {
                limit: Some(limit + 1),
                ..page
            },
        )
        .await?;
    let more = comments.len() > limit as usize;
    comments.truncate(limit as usize);
    let next = more
        .then(|| comments.last().map(|c| c.id.to_string()))
        .flatten();
    let items = comments.iter().map(CommentView::from).collect();
    Ok(json(StatusCode::OK, &CommentPage { items, next }))
}

/// Get one comment by id.
#[utoipa::path(
    get,
    path = "/api/v1/comments/{id}",
    operation_id = "v1_get_comment",
    tag = "v1",
    params(("id" = i64, Path, description = "The comment's id", minimum = 1)),
    responses(
        (status = 200, description = "The comment", body = CommentView),
        (status = 404, description = "No comment with this id", body = ErrorBody),
        (status = 422, description = "id is not a positive integer", body = ErrorBody),
        (status = 503, description = "Storage unavailable or server overloaded", body = ErrorBody),
    ),
)]
async fn get_comment(
    State(state): State<AppState>,
    CommentIdPath(id): CommentIdPath,
) -> Result<Response, ApiError> {
    match state.store.get(id).await? {
        Some(comment) => Ok(json(StatusCode::OK, &CommentView::from(&comment))),
        None => Err(ApiError::NotFound(format!("comment {id} not found"))),
    }
}

/// Delete a comment (admin).
#[utoipa::path(
    delete,
    path = "/api/v1/comments/{id}",
    operation_id = "v1_delete_comment",
    tag = "v1",
    params(("id" = i64, Path, description = "The comment's id", minimum = 1)),
    security(("admin_token" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 403, description = "Deleting is off: no admin token is configured", body = ErrorBody),
        (status = 404, description = "No comment with this id", body = ErrorBody),
        (status = 422, description = "id is not a positive integer", body = ErrorBody),
        (status = 429, description = "Write rate limit (when configured); see Retry-After", body = ErrorBody),
        (status = 503, description = "Storage unavailable or server overloaded", body = ErrorBody),
    ),
)]
async fn delete_comment(
    State(state): State<AppState>,
    _admin: Admin,
    CommentIdPath(id): CommentIdPath,
) -> Result<StatusCode, ApiError> {
    match state.store.delete(id).await? {
        true => {
            tracing::info!(comment_id = id.get(), "comment deleted by admin");
            Ok(StatusCode::NO_CONTENT)
        }
        false => Err(ApiError::NotFound(format!("comment {id} not found"))),
    }
}

/// Proof that the request carries the admin token; checked before anything else is parsed.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(token) = &state.admin_token else {
            return Err(ApiError::Forbidden(
                "deleting is off: the server has no admin token configured",
            ));
        };
        if token.authorizes(&parts.headers) {
            Ok(Admin)
        } else {
            state.metrics.admin_auth_failures.inc();
            tracing::warn!("admin request refused: missing or wrong bearer token");
            Err(ApiError::Unauthorized)
        }
    }
}

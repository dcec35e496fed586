//! One error type for every handler, mapped to status codes and the JSON error shape in one
//! place: `{"status":"ERROR","message":"..."}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::{ContentId, Invalid};
use crate::store::StoreError;

/// Seconds a client should wait before retrying a 503.
pub const RETRY_AFTER_SECONDS: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    MalformedJson(String),
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    Invalid(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(u64),
    #[error("{0}")]
    NotFound(String),
    /// The original API's own 404 shape: `{"status":"NOT-FOUND",...}`.
    #[error("content_id {0} not found")]
    ContentNotFound(ContentId),
    #[error("a valid admin bearer token is required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("the request body did not arrive within the body read timeout")]
    Timeout,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) | ApiError::ContentNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        ApiError::Invalid(invalid.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::KeyReused => ApiError::Conflict(err.to_string()),
            // The cause goes to the log (by the caller's span); the client gets no internals.
            StoreError::Unavailable(cause) | StoreError::TimedOut(cause) => {
                tracing::warn!(%cause, "storage unavailable");
                ApiError::Unavailable("storage is unavailable, retry later".into())
            }
        }
    }
}

/// The body every error and the original API's messages share.
#[derive(Serialize)]
pub struct StatusMessage<'a> {
    pub status: &'a str,
    pub message: &'a str,
}

pub fn json_response(status: StatusCode, label: &str, message: &str) -> Response {
    let body = serde_json::to_vec(&StatusMessage {
        status: label,
        message,
    })
    .expect("two strings always serialize");
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.to_string();
        let mut response = match &self {
            ApiError::ContentNotFound(_) => json_response(status, "NOT-FOUND", &message),
            ApiError::Unavailable(_) => json_response(status, "UNAVAILABLE", &message),
            _ => json_response(status, "ERROR", &message),
        };
        let headers = response.headers_mut();
        match self {
            ApiError::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="comments""#),
                );
            }
            ApiError::Unavailable(_) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECONDS),
                );
            }
            _ => {}
        }
        response
    }
}

//! Probes and build information. Cheap: liveness reads nothing; readiness asks the store once.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::openapi::ErrorBody;
use super::original::SuccessBody;
use crate::error::{ApiError, json_response};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health_check))
        .routes(routes!(livez))
        .routes(routes!(readyz))
        .routes(routes!(version))
        .routes(routes!(super::openapi::serve))
}

/// The original API's health check.
#[utoipa::path(
    get,
    path = "/health-check",
    tag = "original",
    responses((status = 200, description = "Always, while the process serves", body = SuccessBody,
               example = json!({"status": "SUCCESS", "message": "its ok!"}))),
)]
async fn health_check() -> Response {
    json_response(StatusCode::OK, "SUCCESS", "its ok!")
}

/// Liveness: the process can serve. A database outage does not fail it (a restart would not fix
/// the database).
#[utoipa::path(
    get,
    path = "/livez",
    tag = "health",
    responses((status = 200, description = "Alive", body = SuccessBody)),
)]
async fn livez() -> Response {
    json_response(StatusCode::OK, "SUCCESS", "alive")
}

/// Readiness: storage answers and the server is not shutting down.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready for traffic", body = SuccessBody),
        (status = 503, description = "Not ready; the message says why", body = ErrorBody),
    ),
)]
async fn readyz(State(state): State<AppState>) -> Response {
    if state.lifecycle.is_draining() {
        return ApiError::Unavailable("shutting down".into()).into_response();
    }
    match state.store.ping().await {
        Ok(()) => json_response(StatusCode::OK, "SUCCESS", "ready"),
        Err(err) => ApiError::Unavailable(err.to_string()).into_response(),
    }
}

#[derive(Serialize, ToSchema)]
pub struct VersionBody {
    #[schema(example = "0.1.0")]
    version: &'static str,
    #[schema(example = "3f2a9c1")]
    commit: &'static str,
}

/// The running build.
#[utoipa::path(
    get,
    path = "/version",
    tag = "health",
    responses((status = 200, description = "Crate version and git commit", body = VersionBody)),
)]
async fn version(State(state): State<AppState>) -> impl IntoResponse {
    axum::Json(VersionBody {
        version: state.build.version,
        commit: state.build.commit,
    })
}

//! The optional per-client rate limit on writes (off unless `COMMENTS_WRITE_RATE_LIMIT` is set):
//! a token bucket per client address (tower_governor), answered with its own 429 JSON and
//! `Retry-After`. Reads are never limited here; overload is the concurrency limit's job.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use governor::middleware::NoOpMiddleware;
use tower_governor::GovernorError;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::KeyExtractor;

use crate::error::json_response;

#[derive(Debug, Clone, Copy)]
pub struct WriteRateLimit {
    /// Sustained writes per second per client.
    pub per_second: f64,
    /// Writes a client may make at once before the rate applies.
    pub burst: u32,
    /// Take the client from the last `X-Forwarded-For` entry (the address the nearest proxy
    /// saw) instead of the peer. Only behind a proxy that sets it: otherwise clients choose
    /// their own key.
    pub trust_forwarded_for: bool,
}

/// Which client a request comes from.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress {
    trust_forwarded_for: bool,
}

impl KeyExtractor for ClientAddress {
    type Key = IpAddr;

    fn extract<T>(&self, request: &Request<T>) -> Result<IpAddr, GovernorError> {
        let forwarded = || {
            let value = request.headers().get("x-forwarded-for")?.to_str().ok()?;
            value.rsplit(',').next()?.trim().parse().ok()
        };
        let peer = || {
            request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip())
        };
        self.trust_forwarded_for
            .then(forwarded)
            .flatten()
            .or_else(peer)
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

pub type Config = GovernorConfig<ClientAddress, NoOpMiddleware>;

pub fn config(limit: WriteRateLimit) -> Arc<Config> {
    let period = Duration::from_secs_f64(1.0 / limit.per_second.max(1e-3));
    Arc::new(
        GovernorConfigBuilder::default()
            .key_extractor(ClientAddress {
                trust_forwarded_for: limit.trust_forwarded_for,
            })
            .period(period)
            .burst_size(limit.burst.max(1))
            .methods(vec![
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .finish()
            .expect("a positive period and burst"),
    )
}

/// The layer, with our JSON answer.
pub fn layer(
    config: Arc<Config>,
) -> tower_governor::GovernorLayer<ClientAddress, NoOpMiddleware, Body> {
    tower_governor::GovernorLayer::new(config).error_handler(too_many)
}

fn too_many(error: GovernorError) -> Response<Body> {
    match error {
        GovernorError::TooManyRequests { wait_time, .. } => {
            let wait = wait_time.max(1);
            let message = format!("too many writes from this client; retry in {wait} s");
            let mut response = json_response(StatusCode::TOO_MANY_REQUESTS, "ERROR", &message);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            response
        }
        other => {
            tracing::error!(error = %other, "rate limiter could not tell the client");
            json_response(StatusCode::INTERNAL_SERVER_ERROR, "ERROR", "internal error")
        }
    }
}

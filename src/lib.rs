//! comments: a comment API for content items, built for Kubernetes.
//!
//! Where a request goes: [`http`] (router and handlers, one file per area) -> [`domain`] (types
//! that can only hold valid values) -> [`store`] (the storage trait and its SQLite and PostgreSQL
//! backends). Around it: [`config`], [`telemetry`], [`error`], [`shutdown`], and [`app`], which
//! builds and runs the whole thing so tests can start it on port 0.

pub mod app;
pub mod auth;
pub mod config;
pub mod domain;
pub mod error;
pub mod healthcheck;
pub mod http;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod telemetry;

pub use app::App;

/// Which build is running: the crate version and the git commit baked in at compile time
/// (`COMMENTS_GIT_COMMIT`, set by the Dockerfile and CI; `unknown` otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildInfo {
    pub version: &'static str,
    pub commit: &'static str,
}

impl BuildInfo {
    pub const CURRENT: BuildInfo = BuildInfo {
        version: env!("CARGO_PKG_VERSION"),
        commit: match option_env!("COMMENTS_GIT_COMMIT") {
            Some(commit) if !commit.is_empty() => commit,
            _ => "unknown",
        },
    };
}

//! Start-up and the serving lifecycle: build everything from the configuration, bind both
//! listeners, serve until shutdown, drain, close the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

use crate::BuildInfo;
use crate::auth::AdminToken;
use crate::config::Config;
use crate::http::rate_limit::{self, WriteRateLimit};
use crate::http::{self, Limits, Shared};
use crate::server::{self, ConnectionLimits};
use crate::shutdown::{self, Lifecycle};
use crate::store::instrumented::Instrumented;
use crate::store::{self, Backend, SharedStore, StoreOptions};
use crate::telemetry::metrics::Metrics;

/// How often housekeeping runs (see [`maintain`]).
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);

/// A fatal start-up problem, printed as one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartupError(String);

/// The built service: storage open, both listeners bound, not yet serving.
pub struct App {
    api_listener: TcpListener,
    metrics_listener: TcpListener,
    router: http::ApiService,
    metrics_router: Router,
    store: SharedStore,
    lifecycle: Lifecycle,
    connection_limits: ConnectionLimits,
    rate_limits: Option<Arc<rate_limit::Config>>,
    shutdown_delay: Duration,
    shutdown_timeout: Duration,
}

impl App {
    pub async fn build(config: &Config) -> Result<Self, StartupError> {
        config.validate().map_err(StartupError)?;
        let build = BuildInfo::CURRENT;
        let metrics = Metrics::new(&build);
        let admin_token = config
            .admin_token()
            .map_err(StartupError)?
            .map(|token| AdminToken::new(&token));

        let database_url = config.database_url().map_err(StartupError)?;
        let backend = Backend::of(&database_url).ok_or_else(|| {
            StartupError("COMMENTS_DATABASE_URL: must start with sqlite: or postgres://".into())
        })?;
        let options = StoreOptions {
            url: database_url,
            max_connections: config.database_max_connections,
            timeout: config.storage_timeout,
            sqlite_synchronous: config.sqlite_synchronous,
        };
        let opened = store::open(&options)
            .await
            .map_err(|err| StartupError(format!("COMMENTS_DATABASE_URL: {err}")))?;
        let store: SharedStore = Arc::new(Instrumented::new(opened, backend, metrics.clone()));

        let bind = |addr: SocketAddr, var: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|err| StartupError(format!("{var}: cannot listen on {addr}: {err}")))
        };
        let api_listener = bind(config.listen, "COMMENTS_LISTEN").await?;
        let metrics_listener = bind(config.metrics_listen, "COMMENTS_METRICS_LISTEN").await?;

        let lifecycle = Lifecycle::default();
        let shared = Shared {
            store: store.clone(),
            admin_token,
            lifecycle: lifecycle.clone(),
            metrics: metrics.clone(),
            build,
            max_body_bytes: config.max_body_bytes,
            openapi_json: Default::default(),
        };
        let limits = Limits {
            request_timeout: config.request_timeout,
            body_read_timeout: config.body_read_timeout,
            max_body_bytes: config.max_body_bytes,
            max_concurrency: usize::try_from(config.max_concurrency).unwrap_or(usize::MAX),
            write_rate_limit: (config.write_rate_limit > 0.0).then(|| {
                rate_limit::config(WriteRateLimit {
                    per_second: config.write_rate_limit,
                    burst: config.write_rate_burst,
                    trust_forwarded_for: config.trust_forwarded_for,
                })
            }),
        };
        let rate_limits = limits.write_rate_limit.clone();
        let peer_address = rate_limits.is_some();
        Ok(Self {
            api_listener,
            metrics_listener,
            router: http::router(shared, limits),
            rate_limits,
            metrics_router: http::metrics_router(metrics),
            store,
            lifecycle,
            connection_limits: ConnectionLimits {
                max_connections: usize::try_from(config.max_connections).unwrap_or(usize::MAX),
                header_read_timeout: config.header_read_timeout,
                max_connection_age: config.max_connection_age,
                peer_address,
            },
            shutdown_delay: config.shutdown_delay,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// For tests and embedders: start shutdown as SIGTERM would, or watch it.
    pub fn lifecycle(&self) -> Lifecycle {
        self.lifecycle.clone()
    }

    /// Serves until SIGTERM/SIGINT (or [`Lifecycle::begin_shutdown`]), then: readiness fails at
    /// once, serving goes on for the shutdown delay, the listeners close, in-flight requests get
    /// the shutdown timeout to finish, the store closes. Returns when all of that is done.
    pub async fn run(self) -> Result<(), StartupError> {
        let lifecycle = self.lifecycle.clone();
        tracing::info!(
            api = %self.api_addr(),
            metrics = %self.metrics_addr(),
            version = BuildInfo::CURRENT.version,
            commit = BuildInfo::CURRENT.commit,
            "serving"
        );

        let signals = tokio::spawn({
            let lifecycle = lifecycle.clone();
            async move {
                shutdown::signal().await;
                lifecycle.begin_shutdown();
            }
        });
        let delay = tokio::spawn({
            let lifecycle = lifecycle.clone();
            let wait = self.shutdown_delay;
            async move {
                lifecycle.shutdown_requested().await;
                tracing::info!(
                    delay_ms = wait.as_millis() as u64,
                    "draining: /readyz fails, still serving"
                );
                tokio::time::sleep(wait).await;
                lifecycle.stop_accepting();
            }
        });
        let purge = tokio::spawn(maintain(self.store.clone(), self.rate_limits.clone()));

        let limits = self.connection_limits;
        let mut api = tokio::spawn({
            let lifecycle = lifecycle.clone();
            let stop = async move { lifecycle.accepting_stopped().await };
            let drained = server::serve(self.api_listener, self.router, limits, stop);
            async move { drained.await.await }
        });
        // Metrics stay up through the drain so the last scrape sees it.
        let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics = tokio::spawn({
            let stop = async move {
                let _ = metrics_stopped.await;
            };
            let drained = server::serve(self.metrics_listener, self.metrics_router, limits, stop);
            async move { drained.await.await }
        });

        let outcome = tokio::select! {
            // Checked first: after a shutdown the server task ends too, and that is no error.
            biased;
            () = lifecycle.accepting_stopped() => {
                tracing::info!(timeout_ms = self.shutdown_timeout.as_millis() as u64, "listener closed; finishing in-flight requests");
                match tokio::time::timeout(self.shutdown_timeout, &mut api).await {
                    Ok(_) => tracing::info!("in-flight requests finished"),
                    Err(_) => {
                        api.abort();
                        tracing::warn!("in-flight requests still running at the shutdown timeout; stopping anyway");
                    }
                }
                Ok(())
            }
            finished = &mut api => Err(StartupError(format!("API server stopped: {finished:?}"))),
        };

        let _ = metrics_stop.send(());
        let _ = metrics.await;
        for task in [signals, delay, purge] {
            task.abort();
        }
        self.store.close().await;
        tracing::info!("stopped");
        outcome
    }
}

/// Housekeeping: forget expired idempotency keys and rate-limit buckets of clients gone quiet,
/// so neither grows without bound.
async fn maintain(store: SharedStore, rate_limits: Option<Arc<rate_limit::Config>>) {
    let mut every = tokio::time::interval(MAINTENANCE_INTERVAL);
    every.tick().await;
    loop {
        every.tick().await;
        if let Some(config) = &rate_limits {
            config.limiter().retain_recent();
        }
        match store.purge_expired_keys().await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "expired idempotency keys purged"),
            Err(err) => tracing::warn!(error = %err, "could not purge expired idempotency keys"),
        }
    }
}

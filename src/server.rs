//! The HTTP/1.1 accept loop, written out (rather than `axum::serve`) for the limits a public pod
//! needs and axum does not expose: a cap on open connections, a deadline for a request's head
//! (slow clients, idle keep-alive), a maximum connection age, and a graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

/// Connection limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections beyond this are closed as soon as they are accepted.
    pub max_connections: usize,
    /// How long a connection may take to send a request head, counted from when the server
    /// starts waiting for one: it bounds slow clients and idle keep-alive connections alike.
    pub header_read_timeout: Duration,
    /// After this long a connection is closed once its current request is answered, so
    /// long-lived keep-alive clients spread over new replicas.
    pub max_connection_age: Duration,
    /// Whether each request carries the peer's address (`ConnectInfo`), which only the write
    /// rate limiter reads. Off otherwise: it was one of eight extension inserts per request, and
    /// the inserts with their drops cost 3.8k of a cached GET's 35k instructions (callgrind).
    pub peer_address: bool,
}

/// A request head larger than this is refused (431) before any handler runs.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Serves `service` (the API, or the metrics router) on `listener` until `stop` resolves, then
/// stops accepting and returns a future that resolves when every open connection has finished
/// its in-flight request.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()>,
) -> impl Future<Output = ()>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let connections = TaskTracker::new();
    let draining = CancellationToken::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES.max(8 * 1024))
        .keep_alive(true);

    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(err) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                limit = limits.max_connections,
                "connection limit reached; closing a new connection"
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let peer = limits.peer_address.then_some(ConnectInfo(peer));
        let service = TowerToHyperService::new(service.clone().map_request(
            move |request: hyper::Request<Incoming>| {
                let mut request = request.map(Body::new);
                if let Some(peer) = peer {
                    request.extensions_mut().insert(peer);
                }
                request
            },
        ));
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let draining = draining.clone();
        connections.spawn(async move {
            let _slot = slot;
            tokio::pin!(connection);
            let age = tokio::time::sleep(limits.max_connection_age);
            tokio::pin!(age);
            let mut closing = false;
            loop {
                tokio::select! {
                    _ = connection.as_mut() => break,
                    () = draining.cancelled(), if !closing => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    () = &mut age, if !closing => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        });
    }
    drop(listener);
    draining.cancel();
    connections.close();
    async move { connections.wait().await }
}

//! The HTTP/1.1 accept loop, written out (rather than `axum::serve`) for the limits a public pod
//! needs and axum does not expose: a cap on open connections, a deadline for a request's head
//! (slow clients, idle keep-alive), a maximum connection age, and a graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use pin_project_lite::pin_project;
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
    // No hyper timer, so no hyper header timeout: `HeadDeadline` keeps that deadline instead.
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(MAX_HEADER_BYTES.max(8 * 1024))
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
        let head_deadline = Arc::new(HeadDeadline::new(limits.header_read_timeout));
        let service = Answering {
            inner: service
                .clone()
                .map_request(move |request: hyper::Request<Incoming>| {
                    let mut request = request.map(Body::new);
                    if let Some(peer) = peer {
                        request.extensions_mut().insert(peer);
                    }
                    request
                }),
            head_deadline: head_deadline.clone(),
        };
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let draining = draining.clone();
        connections.spawn(async move {
            let _slot = slot;
            tokio::pin!(connection);
            let age = tokio::time::sleep(limits.max_connection_age);
            tokio::pin!(age);
            let head_timer = tokio::time::sleep(limits.header_read_timeout);
            tokio::pin!(head_timer);
            let mut closing = false;
            loop {
                tokio::select! {
                    _ = connection.as_mut() => break,
                    // Closing the socket without an answer, as hyper's own header timeout did.
                    () = &mut head_timer => match head_deadline.next_check() {
                        Some(at) => head_timer.as_mut().reset(at.into()),
                        None => break,
                    },
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

/// How long a connection may wait between answers for its next request head (hyper's
/// `header_read_timeout`, kept here). hyper boxes a new timer for every request head and
/// registers it in tokio's timer wheel while it waits: a cached GET took 30.2k instructions with
/// it, 29.2k with this (callgrind, bench/README.md). Here a request costs a clock read, two
/// stores and a reference count, and the connection's one timer is re-armed only when it fires:
/// once per timeout, not per request.
struct HeadDeadline {
    opened: Instant,
    timeout: Duration,
    /// When the connection last finished an answer, in microseconds since `opened`, or
    /// [`ANSWERING`] while a request is handled (its body and handler have deadlines of their
    /// own). Requests on an HTTP/1.1 connection come one at a time.
    idle_since_micros: AtomicU64,
}

const ANSWERING: u64 = u64::MAX;

impl HeadDeadline {
    fn new(timeout: Duration) -> Self {
        Self {
            opened: Instant::now(),
            timeout,
            idle_since_micros: AtomicU64::new(0),
        }
    }

    fn answering(&self) {
        self.idle_since_micros.store(ANSWERING, Ordering::Relaxed);
    }

    fn answered(&self) {
        let micros = u64::try_from(self.opened.elapsed().as_micros()).unwrap_or(ANSWERING - 1);
        self.idle_since_micros.store(micros, Ordering::Relaxed);
    }

    /// When to look again, or `None` if the connection has waited past its deadline.
    fn next_check(&self) -> Option<Instant> {
        let now = Instant::now();
        let deadline = match self.idle_since_micros.load(Ordering::Relaxed) {
            ANSWERING => return Some(now + self.timeout),
            micros => self.opened + Duration::from_micros(micros) + self.timeout,
        };
        (deadline > now).then_some(deadline)
    }
}

/// The connection's service, telling its [`HeadDeadline`] when a request head has arrived and
/// when its answer is ready.
#[derive(Clone)]
struct Answering<S> {
    inner: S,
    head_deadline: Arc<HeadDeadline>,
}

impl<S, R> Service<R> for Answering<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = AnsweringFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.head_deadline.answering();
        AnsweringFuture {
            inner: self.inner.call(request),
            answered: Answered(self.head_deadline.clone()),
        }
    }
}

/// Restarts the wait for the next head when the answer is ready, or when the request is dropped
/// unanswered (the client went away).
struct Answered(Arc<HeadDeadline>);

impl Drop for Answered {
    fn drop(&mut self) {
        self.0.answered();
    }
}

pin_project! {
    struct AnsweringFuture<F> {
        #[pin]
        inner: F,
        answered: Answered,
    }
}

impl<F: Future> Future for AnsweringFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_deadline_runs_from_the_last_answer_and_stops_while_a_request_is_handled() {
        let timeout = Duration::from_secs(10);
        let mut deadline = HeadDeadline::new(timeout);
        let soon = |at: Option<Instant>| at.map(|at| at.saturating_duration_since(Instant::now()));

        // A fresh connection waits from when it opened.
        let left = soon(deadline.next_check()).expect("a fresh connection has time");
        assert!(left > Duration::from_secs(9) && left <= timeout, "{left:?}");

        // Opened 30 s ago and nothing came: past its deadline.
        deadline.opened -= Duration::from_secs(30);
        assert_eq!(deadline.next_check(), None);

        // A head arrived: no deadline while it is handled, only a look again later.
        deadline.answering();
        let left = soon(deadline.next_check()).expect("a request in hand is never cut off");
        assert!(left > Duration::from_secs(9), "{left:?}");

        // Answered: the wait for the next head starts again, from now.
        deadline.answered();
        let left = soon(deadline.next_check()).expect("just answered");
        assert!(left > Duration::from_secs(9) && left <= timeout, "{left:?}");
    }
}

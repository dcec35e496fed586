//! Prometheus metrics, served on their own listener. The names and labels are a contract the
//! dashboard and alert rules rely on (see DESIGN.md, Metrics).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::BuildInfo;

/// Latency buckets in seconds; the first is sub-millisecond because most answers are.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Per thread: (registry, method, status) -> route -> series.
/// Hashed with foldhash: the keys are our own label values, not a client's, and SipHash's
/// flood resistance cost 500 instructions a request here (callgrind).
type HandleCache =
    HashMap<(usize, &'static str, u16), HashMap<Box<str>, RequestSeries, Fold>, Fold>;
type Fold = foldhash::fast::FixedState;

/// The two series one request lands in.
struct RequestSeries {
    count: IntCounter,
    duration: Histogram,
}

/// The `route` label of requests that matched no route, so junk paths share one series.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Every metric of one service instance. Cloned into each request's state, so it is one `Arc`:
/// a struct of handles cloned field by field cost ~8% of a cached GET's CPU (perf, bench/README).
#[derive(Clone)]
pub struct Metrics(Arc<Handles>);

pub struct Handles {
    /// Tells registries apart in the per-thread handle cache (tests run several at once).
    id: usize,
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub http_in_flight: IntGauge,
    pub comments_created: IntCounter,
    pub store_duration: HistogramVec,
    pub http_panics: IntCounter,
    pub admin_auth_failures: IntCounter,
}

impl std::ops::Deref for Metrics {
    type Target = Handles;

    fn deref(&self) -> &Handles {
        &self.0
    }
}

impl Metrics {
    pub fn new(build: &BuildInfo) -> Self {
        let registry = Registry::new();
        let http_labels = &["method", "route", "status"];
        let http_requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests answered"),
            http_labels,
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time from request received to response headers sent",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            http_labels,
        )
        .expect("valid metric");
        let http_in_flight = IntGauge::new(
            "http_requests_in_flight",
            "HTTP requests being handled right now",
        )
        .expect("valid metric");
        let comments_created =
            IntCounter::new("comments_created_total", "Comments committed to storage")
                .expect("valid metric");
        let store_duration = HistogramVec::new(
            HistogramOpts::new(
                "comments_store_operation_duration_seconds",
                "Storage operation latency by operation and outcome (ok, conflict, error, timeout)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["operation", "outcome"],
        )
        .expect("valid metric");
        let http_panics = IntCounter::new(
            "comments_http_panics_total",
            "Handler panics caught and answered with a 500 (each one is a bug)",
        )
        .expect("valid metric");
        let admin_auth_failures = IntCounter::new(
            "comments_admin_auth_failures_total",
            "Admin requests refused for a missing or wrong bearer token",
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "comments_build_info",
                "Always 1; the labels say which build is running",
            ),
            &["version", "commit"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[build.version, build.commit])
            .set(1);

        for collector in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(http_in_flight.clone()),
            Box::new(comments_created.clone()),
            Box::new(store_duration.clone()),
            Box::new(http_panics.clone()),
            Box::new(admin_auth_failures.clone()),
            Box::new(build_info),
            Box::new(super::traces::SPANS_DROPPED.clone()),
            Box::new(super::traces::SPANS_EXPORT_FAILED.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }

        static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
        Self(Arc::new(Handles {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            registry,
            http_requests,
            http_duration,
            http_in_flight,
            comments_created,
            store_duration,
            http_panics,
            admin_auth_failures,
        }))
    }

    /// Counts one answered request and its duration. The labelled series' handles are looked up
    /// once per thread and label set, then reused: no hashing of label strings and no lock on
    /// the registry per request.
    pub fn observe_request(&self, method: &'static str, route: &str, status: u16, seconds: f64) {
        thread_local! {
            static HANDLES: RefCell<HandleCache> = RefCell::default();
        }
        HANDLES.with_borrow_mut(|handles| {
            let by_route = handles.entry((self.id, method, status)).or_default();
            let series = match by_route.get(route) {
                Some(series) => series,
                None => {
                    let status_text = status.to_string();
                    let labels = [method, route, status_text.as_str()];
                    let series = RequestSeries {
                        count: self.http_requests.with_label_values(&labels),
                        duration: self.http_duration.with_label_values(&labels),
                    };
                    by_route.entry(route.into()).or_insert(series)
                }
            };
            series.count.inc();
            series.duration.observe(seconds);
        });
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

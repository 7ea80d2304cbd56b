//! Web's Prometheus metrics (`GET /metrics`), one registry per running app. Jobs by state are
//! read from the database at scrape time, so every replica reports the same, true, figure.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub jobs_created: IntCounter,
    /// Jobs by state (set from the database on each scrape).
    pub jobs: IntGaugeVec,
    /// Failed attempts to create a job's Cloud Tasks task (the outbox retries them).
    pub enqueue_errors: IntCounter,
    /// Open SSE streams on this replica.
    pub sse_connections: IntGauge,
    /// Jobs deleted, by why: api, grace (last watcher left), sweep (TTL).
    pub deletions: IntCounterVec,
    /// Every database query web makes, by kind (the `Db` method).
    pub db_queries: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let jobs_created =
            IntCounter::new("backless_web_jobs_created_total", "Jobs accepted by upload")
                .expect("valid metric");
        let jobs = IntGaugeVec::new(
            Opts::new("backless_jobs", "Jobs in the database by state"),
            &["state"],
        )
        .expect("valid metric");
        let enqueue_errors = IntCounter::new(
            "backless_web_enqueue_errors_total",
            "Failed Cloud Tasks enqueues (retried by the outbox)",
        )
        .expect("valid metric");
        let sse_connections =
            IntGauge::new("backless_web_sse_connections", "Open progress streams")
                .expect("valid metric");
        let deletions = IntCounterVec::new(
            Opts::new("backless_web_deletions_total", "Jobs deleted, by reason"),
            &["reason"],
        )
        .expect("valid metric");
        let db_queries = IntCounterVec::new(
            Opts::new(
                "backless_web_db_queries_total",
                "Database queries made by this replica, by kind",
            ),
            &["kind"],
        )
        .expect("valid metric");
        for c in [
            Box::new(jobs_created.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(jobs.clone()),
            Box::new(enqueue_errors.clone()),
            Box::new(sse_connections.clone()),
            Box::new(deletions.clone()),
            Box::new(db_queries.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Self {
            registry,
            jobs_created,
            jobs,
            enqueue_errors,
            sse_connections,
            deletions,
            db_queries,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        backless_common::metrics::render(&self.registry)
    }

    /// `GET /metrics`'s answer.
    pub fn response(&self) -> poem::Response {
        backless_common::metrics::response(&self.registry)
    }
}

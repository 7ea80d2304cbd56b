//! The worker's Prometheus metrics (`GET /metrics`), one registry per running worker.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Counters and histograms the push handler updates.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Pushes by how they ended: done, failed, retry, unauthenticated, ignored, gone, …
    pub pushes: IntCounterVec,
    /// Seconds per pipeline stage (decoded, segmented, composited, encoded).
    pub stage_seconds: HistogramVec,
    /// Seconds from decoded image to mask, per model.
    pub inference_seconds: HistogramVec,
    pub model_runs: IntCounter,
    /// Times the idle worker handed its free memory back (`server::trim_when_idle`).
    pub memory_trims: IntCounter,
    /// The memory budget images reserve from ([`crate::budget`]), and what they hold now.
    pub memory_budget_bytes: IntGauge,
    pub memory_reserved_bytes: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let pushes = IntCounterVec::new(
            Opts::new("backless_worker_pushes_total", "Task pushes by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new(
                "backless_worker_stage_seconds",
                "Time spent in each pipeline stage",
            )
            .buckets(buckets.clone()),
            &["stage"],
        )
        .expect("valid metric");
        let inference_seconds = HistogramVec::new(
            HistogramOpts::new(
                "backless_worker_inference_seconds",
                "Segmentation time (resize, network, mask) per model",
            )
            .buckets(buckets),
            &["model"],
        )
        .expect("valid metric");
        let model_runs = IntCounter::new("backless_worker_model_runs_total", "Model runs started")
            .expect("valid metric");
        let memory_trims = IntCounter::new(
            "backless_worker_memory_trims_total",
            "Times the idle worker handed free memory back to the system",
        )
        .expect("valid metric");
        let memory_budget_bytes = IntGauge::new(
            "backless_worker_memory_budget_bytes",
            "Memory the images in flight may reserve together",
        )
        .expect("valid metric");
        let memory_reserved_bytes = IntGauge::new(
            "backless_worker_memory_reserved_bytes",
            "Memory reserved by the images in flight (their plans' estimates)",
        )
        .expect("valid metric");
        for c in [
            Box::new(pushes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(stage_seconds.clone()),
            Box::new(inference_seconds.clone()),
            Box::new(model_runs.clone()),
            Box::new(memory_trims.clone()),
            Box::new(memory_budget_bytes.clone()),
            Box::new(memory_reserved_bytes.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Self {
            registry,
            pushes,
            stage_seconds,
            inference_seconds,
            model_runs,
            memory_trims,
            memory_budget_bytes,
            memory_reserved_bytes,
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

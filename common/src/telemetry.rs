//! One tracing initialisation per binary.
//!
//! `BACKLESS_LOG_FORMAT=json` (the container images set it) writes one JSON object per line with
//! the fields of every enclosing span, so each line of a push carries its `job_id`; anything else
//! writes human-readable lines. `RUST_LOG` filters either (default `info`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// From `BACKLESS_LOG_FORMAT`.
    pub fn from_env() -> Self {
        match std::env::var("BACKLESS_LOG_FORMAT").as_deref() {
            Ok("json") => Self::Json,
            _ => Self::Text,
        }
    }
}

/// Log to stderr, filtered by `RUST_LOG` (default `default_filter`), in the format from the
/// environment. Safe to call more than once.
pub fn init(default_filter: &str) {
    init_with(default_filter, LogFormat::from_env());
}

pub fn init_with(default_filter: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_span_events(FmtSpan::NONE)
            .try_init(),
    };
}

//! The worker service's configuration: the shared pieces plus what only the worker needs.

use std::net::SocketAddr;
use std::path::PathBuf;

use backless_common::config::{CommonConfig, ConfigError, FromSettings, Settings};

/// Everything the worker service reads at start-up.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub common: CommonConfig,
    /// Where to listen (`BACKLESS_WORKER_ADDR`; tests use port 0).
    pub listen: SocketAddr,
    /// Folder with `<model>.safetensors` + `<model>.json` (`BACKLESS_MODELS_DIR`).
    pub models_dir: PathBuf,
    /// Models loaded at start-up (`BACKLESS_MODELS`, comma-separated); jobs asking for another
    /// model fail with `model_unavailable`.
    pub models: Vec<String>,
    /// Images processed at once at most (`BACKLESS_WORKER_CONCURRENCY`; default: one per core,
    /// at least two, so one image decodes, composites or encodes while another is in the
    /// network, which uses every core). Fewer run where their plans do not fit `memory_budget`.
    pub concurrency: usize,
    /// Bytes the images in flight may hold together, by their plans' estimates and the
    /// network's activations (`BACKLESS_WORKER_MEMORY_MB`; default: half of the container's or
    /// machine's memory); see [`crate::budget`].
    pub memory_budget: u64,
    /// Pushes handled at once, waiting for a model slot included (`BACKLESS_WORKER_MAX_IN_FLIGHT`;
    /// default: 8 per model slot). Beyond it a push gets 503 with `Retry-After`, so the queue
    /// holds the backlog rather than this process (each waiting push holds its original in
    /// memory). The queue's `max_concurrent_dispatches` is the first throttle; this is the backstop.
    pub max_in_flight: usize,
    /// Who may push (OIDC and/or shared secret); see [`crate::auth`].
    pub push_auth: crate::auth::PushAuthConfig,
}

impl FromSettings for WorkerConfig {
    fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let models: Vec<String> = s
            .string("BACKLESS_MODELS", "u2netp")
            .split(',')
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty())
            .collect();
        for m in &models {
            if m.parse::<crate::model::Arch>().is_err() {
                return Err(ConfigError::Invalid {
                    key: "BACKLESS_MODELS",
                    message: format!("unknown model {m:?}; known: u2netp, u2net, isnet"),
                });
            }
        }
        if models.is_empty() {
            return Err(ConfigError::Invalid {
                key: "BACKLESS_MODELS",
                message: "name at least one model".into(),
            });
        }
        let concurrency = s.parse("BACKLESS_WORKER_CONCURRENCY", cores.max(2))?;
        let memory_budget = match s.get("BACKLESS_WORKER_MEMORY_MB") {
            None => crate::budget::default_budget_bytes(),
            Some(_) => match s.parse::<u64>("BACKLESS_WORKER_MEMORY_MB", 0)? {
                0 => {
                    return Err(ConfigError::Invalid {
                        key: "BACKLESS_WORKER_MEMORY_MB",
                        message: "give at least 1 MiB".into(),
                    });
                }
                mb => mb.saturating_mul(1 << 20),
            },
        };
        Ok(Self {
            common: CommonConfig::from_settings(s)?,
            listen: s.parse(
                "BACKLESS_WORKER_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 8081)),
            )?,
            models_dir: PathBuf::from(s.string("BACKLESS_MODELS_DIR", "models")),
            models,
            concurrency,
            memory_budget,
            max_in_flight: s.parse("BACKLESS_WORKER_MAX_IN_FLIGHT", concurrency.max(1) * 8)?,
            push_auth: crate::auth::PushAuthConfig::from_settings(s)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = WorkerConfig::from_pairs([("BACKLESS_MODELS", "u2netp, u2net")]).unwrap();
        assert_eq!(c.models, ["u2netp", "u2net"]);
        assert_eq!(c.listen.port(), 8081);
        assert!(c.concurrency >= 1);
        assert_eq!(c.max_in_flight, c.concurrency * 8);
        let c = WorkerConfig::from_pairs([("BACKLESS_WORKER_MAX_IN_FLIGHT", "1")]).unwrap();
        assert_eq!(c.max_in_flight, 1);
        assert!(WorkerConfig::from_pairs([("BACKLESS_MODELS", "yolo")]).is_err());
        let c = WorkerConfig::from_pairs([("BACKLESS_WORKER_MEMORY_MB", "512")]).unwrap();
        assert_eq!(c.memory_budget, 512 << 20);
        assert!(WorkerConfig::from_pairs([("BACKLESS_WORKER_MEMORY_MB", "0")]).is_err());
        assert!(WorkerConfig::from_pairs([("BACKLESS_WORKER_MEMORY_MB", "lots")]).is_err());
    }
}

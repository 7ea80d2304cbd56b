//! Worker integration tests: model parity with onnxruntime, weight names, bad input, the CLI.

mod bad_input;
mod cli;
#[cfg(feature = "dev")]
mod e2e;
#[cfg(feature = "dev")]
mod faults;
mod golden;
mod logs;
mod metadata;
mod network;
#[cfg(feature = "dev")]
mod pg_restart;
#[cfg(feature = "dev")]
mod pipelines;
#[cfg(feature = "dev")]
mod push_auth;
#[cfg(feature = "dev")]
mod recovery;
#[cfg(feature = "dev")]
mod replicas;
#[cfg(feature = "dev")]
mod retry;
mod startup;

use std::path::PathBuf;

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn models_dir() -> PathBuf {
    workspace().join("models")
}

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(rel)
}

/// Whether imported weights for `name` are present. U²-NetP must be (CI fetches it); the larger
/// models are opt-in, and their tests say so and return when absent.
pub fn weights_present(name: &str) -> bool {
    let present = models_dir().join(format!("{name}.safetensors")).is_file();
    if !present {
        assert_ne!(
            name, "u2netp",
            "models/u2netp.safetensors is missing: run scripts/fetch-models.sh"
        );
        eprintln!(
            "SKIPPED: models/{name}.safetensors is absent; run `scripts/fetch-models.sh {name}` to test it"
        );
    }
    present
}

pub fn load(name: &str) -> backless_worker::model::Segmenter {
    backless_worker::model::Segmenter::load(&models_dir(), name, &candle_core::Device::Cpu)
        .expect("model loads")
}

//! Tests that start the whole stack (web, the Cloud Tasks emulator and the worker; some across
//! processes, PostgreSQL and Redis): end to end, pipelines and their stages, push
//! authentication, replicas, a database restart, and recovery from a worker killed mid-job.

mod e2e;
mod fuzz_corpus;
mod pg_restart;
mod pipelines;
mod push_auth;
mod recovery;
mod replicas;

use std::path::PathBuf;

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn models_dir() -> PathBuf {
    workspace().join("models")
}

/// A file under the worker's test folder (`fixtures/photos/...`).
pub fn fixture(rel: &str) -> PathBuf {
    workspace().join("worker/tests").join(rel)
}

/// Whether imported weights for `name` are present (U²-NetP must be: CI fetches it).
pub fn weights_present(name: &str) -> bool {
    let present = models_dir().join(format!("{name}.safetensors")).is_file();
    assert!(
        present || name != "u2netp",
        "models/u2netp.safetensors is missing: run scripts/fetch-models.sh"
    );
    present
}

/// The `worker` binary of this build (a sibling of the test binary's folder), for the tests
/// that kill a worker process. `cargo test --workspace` builds it.
pub fn worker_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join(format!("worker{}", std::env::consts::EXE_SUFFIX)))
        .expect("the target folder");
    assert!(
        bin.is_file(),
        "{} is missing: cargo build -p backless-worker --bin worker",
        bin.display()
    );
    bin
}

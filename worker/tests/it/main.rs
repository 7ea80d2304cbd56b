//! Worker integration tests: model parity with onnxruntime, weight names, bad input, the CLI,
//! and pushes from a real Cloud Tasks emulator (retries, faults). The tests that start the whole
//! stack (web too) are in the `backless-dev` crate.

mod bad_input;
mod cli;
mod faults;
mod golden;
mod logs;
mod metadata;
mod network;
mod plans;
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

/// The environment of a worker on port 0 with its SQLite database and file storage in `dir`.
pub fn worker_env(dir: &std::path::Path) -> Vec<(String, String)> {
    vec![
        (
            "BACKLESS_DATABASE_URL".to_string(),
            format!("sqlite://{}/backless.db?mode=rwc", dir.display()),
        ),
        (
            "BACKLESS_STORAGE_URL".into(),
            format!("file://{}/objects", dir.display()),
        ),
        (
            "BACKLESS_MODELS_DIR".into(),
            models_dir().display().to_string(),
        ),
        ("BACKLESS_WORKER_ADDR".into(), "127.0.0.1:0".into()),
    ]
}

/// Serve `worker` in the background until the returned sender says `true` (or is dropped).
pub fn serve_worker(worker: backless_worker::server::App) -> tokio::sync::watch::Sender<bool> {
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(worker.run_until_stopped(async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    stop_tx
}

/// A job as web records it, not yet enqueued: the astronaut fixture stored as its original and
/// its record inserted. Returns the job id.
pub async fn record_astronaut_job(
    db: &backless_common::db::Db,
    storage: &backless_common::storage::Storage,
) -> String {
    let id = backless_common::db::new_job_id();
    let photo = std::fs::read(fixture("fixtures/photos/astronaut.png")).unwrap();
    storage.put_original(&id, photo.into()).await.unwrap();
    db.insert(backless_common::db::NewJob {
        id: id.clone(),
        owner: "c".into(),
        name: "astronaut".into(),
        options: backless_common::db::JobOptions::default(),
        original_content_type: "image/png".into(),
        width: 256,
        height: 256,
        client_addr: None,
    })
    .await
    .unwrap();
    id
}

/// The worker's `/metrics` page.
pub async fn fetch_metrics(worker_url: &str) -> String {
    reqwest::get(format!("{worker_url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of `name{labels}` in a Prometheus text body (0 when absent).
pub fn metric_sample(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

//! A push that arrives while the worker is still loading its models waits for them and finishes
//! the job, instead of failing it or bouncing it back to the queue.

use std::time::Duration;

use backless_common::config::{CommonConfig, FromSettings};
use backless_common::db::{Db, JobState};
use backless_common::storage::Storage;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_during_start_up_waits_for_the_models() {
    assert!(crate::weights_present("u2netp"));
    let dir = tempfile::tempdir().unwrap();
    let pairs = crate::worker_env(dir.path());
    // The job exists before the worker starts, as when a scaled-to-zero worker is woken by the
    // push itself.
    let common = CommonConfig::from_pairs(pairs.clone()).unwrap();
    let db = Db::connect(&common.database).await.unwrap();
    let storage = Storage::from_config(&common.storage).unwrap();
    let id = crate::record_astronaut_job(&db, &storage).await;

    let worker = backless_worker::server::App::build(
        backless_worker::config::WorkerConfig::from_pairs(pairs).unwrap(),
    )
    .await
    .unwrap();
    let url = format!("http://{}", worker.addr());
    let state = worker.state();
    let stop_tx = crate::serve_worker(worker);

    let http = reqwest::Client::new();
    let ready = http.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(
        ready.status(),
        503,
        "the models were already loaded, so this push would not test start-up"
    );
    let push = http
        .post(format!("{url}/v1/tasks/remove-background"))
        .json(&serde_json::json!({ "job_id": id }))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(push.status(), 200);
    let body: serde_json::Value = push.json().await.unwrap();
    assert_eq!(body["status"], "done", "{body}");
    assert_eq!(db.get(&id).await.unwrap().unwrap().state, JobState::Done);
    assert_eq!(state.model_runs(), 1);
    let ready = http.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let _ = stop_tx.send(true);
}

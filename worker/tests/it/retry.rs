//! The queue's retry path: a push that finds the job leased by another delivery gets 503 with
//! Retry-After, and the emulator's retry, after the lease ran out, brings the job to done once;
//! then, idle, the worker hands its memory back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backless_common::config::{CommonConfig, FromSettings};
use backless_common::db::{Db, JobState};
use backless_common::events::{Events, InProcessEvents};
use backless_common::storage::Storage;
use backless_common::tasks::TaskQueue;
use backless_emulator::{Emulator, EmulatorConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn busy_job_answers_503_and_the_retry_finishes_it() {
    assert!(crate::weights_present("u2netp"));
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let emulator = Emulator::start(listener, EmulatorConfig::default())
        .await
        .unwrap();
    let pairs = vec![
        (
            "BACKLESS_DATABASE_URL".to_string(),
            format!("sqlite://{}/backless.db?mode=rwc", dir.path().display()),
        ),
        (
            "BACKLESS_STORAGE_URL".into(),
            format!("file://{}/objects", dir.path().display()),
        ),
        ("BACKLESS_TASKS_ENDPOINT".into(), emulator.url()),
        (
            "BACKLESS_MODELS_DIR".into(),
            crate::models_dir().display().to_string(),
        ),
        ("BACKLESS_WORKER_ADDR".into(), "127.0.0.1:0".into()),
    ];
    let events: Arc<dyn Events> = Arc::new(InProcessEvents::default());
    let worker = backless_worker::server::App::build_with(
        backless_worker::config::WorkerConfig::from_pairs(pairs.clone()).unwrap(),
        backless_worker::server::Components {
            events: Some(events),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let worker_url = format!("http://{}", worker.addr());
    let state = worker.state();
    let stop_tx = crate::serve_worker(worker);

    // A job as web records it, except that another delivery holds it for 3 s.
    let mut pairs = pairs;
    pairs.push(("BACKLESS_WORKER_URL".into(), worker_url.clone()));
    let common = CommonConfig::from_pairs(pairs).unwrap();
    let db = Db::connect(&common.database).await.unwrap();
    let storage = Storage::from_config(&common.storage).unwrap();
    let id = crate::record_astronaut_job(&db, &storage).await;
    assert!(db.try_claim(&id, Duration::from_secs(3)).await.unwrap());

    let tasks = TaskQueue::new(common.tasks.clone());
    tasks.ensure_queue().await.unwrap();
    tasks.enqueue_job(&id).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let job = db.get(&id).await.unwrap().unwrap();
        if job.state == JobState::Done {
            break;
        }
        assert!(Instant::now() < deadline, "job stuck in {:?}", job.state);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = crate::fetch_metrics(&worker_url).await;
    let retries = crate::metric_sample(&metrics, "backless_worker_pushes_total{outcome=\"retry\"}");
    let done = crate::metric_sample(&metrics, "backless_worker_pushes_total{outcome=\"done\"}");
    assert!(retries >= 1.0, "no 503 was answered:\n{metrics}");
    assert_eq!(done, 1.0, "{metrics}");
    assert_eq!(state.model_runs(), 1);
    assert!(crate::metric_sample(&metrics, "backless_worker_model_runs_total") == 1.0);
    assert!(metrics.contains("backless_worker_inference_seconds_count{model=\"u2netp\"} 1"));

    // With no further job, the idle worker hands its memory back (2 s after the last job).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = crate::fetch_metrics(&worker_url).await;
        if crate::metric_sample(&metrics, "backless_worker_memory_trims_total") == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no idle trim:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop_tx.send(true);
    emulator.shutdown().await;
}

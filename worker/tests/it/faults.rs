//! Fault injection on the worker's storage: a real file store wrapped (common's `FaultyStore`) so
//! a test can make the next result write fail, or hold reads until released. The queue is the real emulator.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backless_common::config::{CommonConfig, FromSettings};
use backless_common::db::{Db, JobState};
use backless_common::events::{Events, InProcessEvents};
use backless_common::storage::Storage;
use backless_common::tasks::TaskQueue;
use backless_common::testing::FaultyStore;
use backless_emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use object_store::local::LocalFileSystem;

struct Rig {
    db: Db,
    store: Arc<FaultyStore>,
    storage: Storage,
    worker_url: String,
    state: Arc<backless_worker::server::State>,
    tasks: TaskQueue,
    dir: tempfile::TempDir,
    emulator: Option<EmulatorHandle>,
    _stop: tokio::sync::watch::Sender<bool>,
}

/// Emulator + worker on a [`FaultyStore`]; `extra` configures the worker.
async fn rig(extra: &[(&str, &str)], gate_permits: usize) -> Rig {
    assert!(crate::weights_present("u2netp"));
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let emulator = Emulator::start(listener, EmulatorConfig::default())
        .await
        .unwrap();
    let mut pairs = vec![
        (
            "BACKLESS_DATABASE_URL".to_string(),
            format!("sqlite://{}/backless.db?mode=rwc", dir.path().display()),
        ),
        ("BACKLESS_TASKS_ENDPOINT".into(), emulator.url()),
        (
            "BACKLESS_MODELS_DIR".into(),
            crate::models_dir().display().to_string(),
        ),
        ("BACKLESS_WORKER_ADDR".into(), "127.0.0.1:0".into()),
    ];
    pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let objects = dir.path().join("objects");
    std::fs::create_dir_all(&objects).unwrap();
    let store = Arc::new(
        FaultyStore::new(Arc::new(
            LocalFileSystem::new_with_prefix(&objects).unwrap(),
        ))
        .with_read_permits(gate_permits),
    );
    let storage = Storage::from_store(store.clone(), "faulty://");
    let events: Arc<dyn Events> = Arc::new(InProcessEvents::default());
    let worker = backless_worker::server::App::build_with(
        backless_worker::config::WorkerConfig::from_pairs(pairs.clone()).unwrap(),
        backless_worker::server::Components {
            events: Some(events),
            storage: Some(storage.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let worker_url = format!("http://{}", worker.addr());
    let state = worker.state();
    let stop_tx = crate::serve_worker(worker);
    pairs.push(("BACKLESS_WORKER_URL".into(), worker_url.clone()));
    let common = CommonConfig::from_pairs(pairs).unwrap();
    let db = Db::connect(&common.database).await.unwrap();
    let tasks = TaskQueue::new(common.tasks.clone());
    tasks.ensure_queue().await.unwrap();
    Rig {
        db,
        store,
        storage,
        worker_url,
        state,
        tasks,
        dir,
        emulator: Some(emulator),
        _stop: stop_tx,
    }
}

impl Rig {
    /// A job as web records it (original stored, record inserted), not yet enqueued.
    async fn job(&self) -> String {
        crate::record_astronaut_job(&self.db, &self.storage).await
    }

    async fn wait_done(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let job = self.db.get(id).await.unwrap().unwrap();
            if job.state == JobState::Done {
                return;
            }
            assert!(Instant::now() < deadline, "job stuck in {:?}", job.state);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn metric(&self, name_and_labels: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.worker_url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        crate::metric_sample(&text, name_and_labels)
    }

    /// Every file under the store's folder.
    fn files(&self) -> Vec<String> {
        let root = self.dir.path().join("objects");
        let mut out: Vec<String> = walkdir::WalkDir::new(&root)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| e.path().strip_prefix(&root).unwrap().display().to_string())
            .collect();
        out.sort();
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn result_write_fails_once_then_the_retry_stores_it_whole() {
    let mut rig = rig(&[], 1_000).await;
    let id = rig.job().await;
    rig.store.fail_puts("results/", 1);
    rig.tasks.enqueue_job(&id).await.unwrap();
    rig.wait_done(&id).await;

    assert_eq!(rig.store.faults_left(), 0);
    let retry = "backless_worker_pushes_total{outcome=\"retry\"}";
    let done = "backless_worker_pushes_total{outcome=\"done\"}";
    assert!(
        rig.metric(retry).await >= 1.0,
        "the failed write was not retried"
    );
    assert_eq!(rig.metric(done).await, 1.0);
    assert_eq!(rig.state.model_runs(), 2, "one run per delivery");
    // Exactly the original and one complete result: nothing half-written, no temp files.
    assert_eq!(
        rig.files(),
        [format!("originals/{id}"), format!("results/{id}")]
    );
    let result = rig.storage.get_result(&id).await.unwrap();
    let img = image::load_from_memory(&result).expect("the stored result decodes");
    assert_eq!((img.width(), img.height()), (256, 256));
    rig.emulator.take().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_beyond_capacity_get_503_with_retry_after() {
    // Reads are held: the first push waits inside the worker for its original.
    let mut rig = rig(&[("BACKLESS_WORKER_MAX_IN_FLIGHT", "1")], 0).await;
    let (a, b) = (rig.job().await, rig.job().await);
    let client = reqwest::Client::new();
    let push = |id: String| {
        let client = client.clone();
        let url = format!("{}/v1/tasks/remove-background", rig.worker_url);
        async move {
            client
                .post(url)
                .json(&serde_json::json!({ "job_id": id }))
                .send()
                .await
                .unwrap()
        }
    };
    let first = tokio::spawn(push(a.clone()));
    // Wait until the first push holds the only slot (it is parked on the gate).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = rig.db.get(&a).await.unwrap().unwrap();
        if job.state == JobState::Processing {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first push never claimed its job"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let busy = push(b.clone()).await;
    assert_eq!(busy.status(), 503);
    assert_eq!(busy.headers()["retry-after"], "5");
    let body: serde_json::Value = busy.json().await.unwrap();
    assert_eq!(body["reason"], "busy");
    assert_eq!(
        rig.db.get(&b).await.unwrap().unwrap().state,
        JobState::Queued,
        "the refused job was not touched"
    );

    rig.store.allow_reads(1_000);
    assert_eq!(first.await.unwrap().status(), 200);
    rig.wait_done(&a).await;
    assert_eq!(push(b.clone()).await.status(), 200, "capacity is back");
    rig.wait_done(&b).await;
    rig.emulator.take().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_finding_its_job_finished_by_another_deletes_nothing() {
    // Reads are held, so the second delivery is parked inside the worker while the first
    // (whose lease ran out, but which was still alive) finishes the job.
    let mut rig = rig(&[], 0).await;
    let id = rig.job().await;
    assert!(rig.db.try_claim(&id, Duration::ZERO).await.unwrap());
    let client = reqwest::Client::new();
    let url = format!("{}/v1/tasks/remove-background", rig.worker_url);
    let body = serde_json::json!({ "job_id": id });
    let second = tokio::spawn(async move { client.post(url).json(&body).send().await.unwrap() });
    let deadline = Instant::now() + Duration::from_secs(30);
    while rig.db.get(&id).await.unwrap().unwrap().attempts < 2 {
        assert!(
            Instant::now() < deadline,
            "the second delivery never claimed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The first delivery stores its result and records it.
    let first_result = std::fs::read(crate::fixture("fixtures/photos/astronaut.png")).unwrap();
    rig.storage
        .put_result(&id, first_result.into())
        .await
        .unwrap();
    let key = backless_common::storage::result_key(&id);
    assert!(rig.db.mark_done(&id, &key, "image/png").await.unwrap());

    rig.store.allow_reads(1_000);
    let res = second.await.unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "already finished");
    let job = rig.db.get(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Done);
    assert_eq!(
        rig.files(),
        [format!("originals/{id}"), format!("results/{id}")],
        "the finished job keeps its original and its result"
    );
    let result = rig.storage.get_result(&id).await.unwrap();
    assert!(image::load_from_memory(&result).is_ok());

    // A job deleted while a delivery runs: what the delivery stored goes too.
    let gone = rig.job().await;
    rig.store.hold_reads();
    let client = reqwest::Client::new();
    let url = format!("{}/v1/tasks/remove-background", rig.worker_url);
    let body = serde_json::json!({ "job_id": gone });
    let delivery = tokio::spawn(async move { client.post(url).json(&body).send().await.unwrap() });
    let deadline = Instant::now() + Duration::from_secs(30);
    while rig.db.get(&gone).await.unwrap().unwrap().state != JobState::Processing {
        assert!(Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(rig.db.delete(&gone).await.unwrap());
    rig.store.allow_reads(1_000);
    let res = delivery.await.unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "gone");
    assert!(
        !rig.files().iter().any(|f| f.ends_with(&gone)),
        "nothing of the deleted job is left: {:?}",
        rig.files()
    );
    rig.emulator.take().unwrap().shutdown().await;
}

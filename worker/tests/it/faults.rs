//! Fault injection on the worker's storage: a real file store wrapped so a test can make the next
//! result write fail, or hold reads until released. The queue is the real emulator.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backless_common::config::CommonConfig;
use backless_common::db::{Db, JobState};
use backless_common::events::{Events, InProcessEvents};
use backless_common::storage::Storage;
use backless_common::tasks::TaskQueue;
use backless_emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use tokio::sync::Semaphore;

/// A local file store with switches.
#[derive(Debug)]
struct FaultyStore {
    inner: LocalFileSystem,
    /// Result writes still to fail.
    fail_result_puts: AtomicU32,
    /// Reads wait for a permit here (released by the test).
    gate: Semaphore,
}

impl std::fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if location.as_ref().starts_with("results/")
            && self
                .fail_result_puts
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(object_store::Error::Generic {
                store: "faulty",
                source: "injected write failure".into(),
            });
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let _permit = self.gate.acquire().await.expect("gate open");
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

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
    let store = Arc::new(FaultyStore {
        inner: LocalFileSystem::new_with_prefix(&objects).unwrap(),
        fail_result_puts: AtomicU32::new(0),
        gate: Semaphore::new(gate_permits),
    });
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
    rig.store.fail_result_puts.store(1, Ordering::SeqCst);
    rig.tasks.enqueue_job(&id).await.unwrap();
    rig.wait_done(&id).await;

    assert_eq!(rig.store.fail_result_puts.load(Ordering::SeqCst), 0);
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

    rig.store.gate.add_permits(1_000);
    assert_eq!(first.await.unwrap().status(), 200);
    rig.wait_done(&a).await;
    assert_eq!(push(b.clone()).await.status(), 200, "capacity is back");
    rig.wait_done(&b).await;
    rig.emulator.take().unwrap().shutdown().await;
}

//! Against a real Cloud Tasks API: the `backless-emulator` crate, started in-process. The push
//! target is a small recording HTTP server standing in for the worker (the queue is the real thing).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backless_common::config::{CommonConfig, FromSettings};
use backless_common::tasks::{Enqueued, TaskQueue};
use backless_emulator::{Emulator, EmulatorConfig};
use poem::{EndpointExt, Request, handler, post};

use crate::helpers::*;

#[derive(Debug, Clone)]
struct Push {
    task_name: String,
    body: serde_json::Value,
    content_type: String,
}

/// A push target that records each request and answers 200.
async fn recording_target() -> (String, Arc<Mutex<Vec<Push>>>) {
    let pushes: Arc<Mutex<Vec<Push>>> = Arc::default();
    #[handler]
    async fn receive(
        req: &Request,
        body: Vec<u8>,
        pushes: poem::web::Data<&Arc<Mutex<Vec<Push>>>>,
    ) -> &'static str {
        let header = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        pushes.lock().unwrap().push(Push {
            task_name: header("x-cloudtasks-taskname"),
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            content_type: header("content-type"),
        });
        "ok"
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let app = poem::Route::new()
        .at("/v1/tasks/remove-background", post(receive))
        .data(Arc::clone(&pushes));
    let server = poem::Server::new(poem::listener::TcpListener::bind(addr));
    tokio::spawn(server.run(app));
    (format!("http://{addr}"), pushes)
}

async fn start_emulator(port: u16, queues: Vec<String>) -> backless_emulator::EmulatorHandle {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    Emulator::start(
        listener,
        EmulatorConfig {
            initial_queues: queues,
            ..EmulatorConfig::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn enqueue_creates_one_named_task_and_a_repeat_is_already_exists() {
    let (worker_url, pushes) = recording_target().await;
    let port = closed_port();
    let emulator = start_emulator(port, Vec::new()).await;
    let cfg = CommonConfig::from_pairs([
        ("BACKLESS_TASKS_ENDPOINT", emulator.url()),
        ("BACKLESS_WORKER_URL", worker_url),
    ])
    .unwrap();
    let q = TaskQueue::new(cfg.tasks);
    q.ensure_queue().await.unwrap();
    q.ensure_queue().await.unwrap(); // idempotent
    let id = backless_common::db::new_job_id();
    assert_eq!(q.enqueue_job(&id).await.unwrap(), Enqueued::Created);
    assert_eq!(q.enqueue_job(&id).await.unwrap(), Enqueued::AlreadyExists);
    let seen = eventually(Duration::from_secs(10), || async {
        !pushes.lock().unwrap().is_empty()
    })
    .await;
    assert!(seen, "the emulator dispatched the task");
    emulator.wait_idle().await;
    let pushes = pushes.lock().unwrap().clone();
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    assert_eq!(pushes[0].task_name, id);
    assert_eq!(pushes[0].body, serde_json::json!({"job_id": id}));
    assert_eq!(pushes[0].content_type, "application/json");
    emulator.shutdown().await;
}

#[tokio::test]
async fn outbox_enqueues_a_job_once_the_queue_becomes_reachable() {
    let (worker_url, pushes) = recording_target().await;
    // The queue's port is closed at upload time.
    let port = closed_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let app = spawn_app(&[
        ("BACKLESS_TASKS_ENDPOINT", endpoint.as_str()),
        ("BACKLESS_WORKER_URL", worker_url.as_str()),
        ("BACKLESS_OUTBOX_INTERVAL", "200ms"),
    ])
    .await;
    let c = browser();
    let id = app.create_job(&c).await;
    let job: serde_json::Value = c
        .get(app.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["state"], "queued");
    assert!(!app.shared.db.get(&id).await.unwrap().unwrap().enqueued);

    // The queue comes up (without the queue: the outbox creates it).
    let emulator = start_emulator(port, Vec::new()).await;
    let enqueued = eventually(Duration::from_secs(15), || async {
        app.shared.db.get(&id).await.unwrap().unwrap().enqueued
    })
    .await;
    assert!(enqueued, "the outbox created the task");
    let dispatched = eventually(Duration::from_secs(10), || async {
        pushes.lock().unwrap().iter().any(|p| p.task_name == id)
    })
    .await;
    assert!(dispatched, "the task reached the push target");
    emulator.wait_idle().await;
    assert_eq!(pushes.lock().unwrap().len(), 1);
    emulator.shutdown().await;
}

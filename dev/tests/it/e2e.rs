//! The whole flow on embedded defaults, over HTTP only: web -> Cloud Tasks emulator -> worker
//! (real U²-NetP) -> SSE -> download -> deletion.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backless_common::config::FromSettings;
use backless_common::events::{Events, InProcessEvents};
use backless_emulator::{Emulator, EmulatorConfig};
use futures::StreamExt;

pub(crate) struct Stack {
    pub(crate) web: String,
    pub(crate) worker: String,
    pub(crate) issuer: String,
    /// The emulator's base URL (REST).
    pub(crate) emulator: String,
    pub(crate) worker_state: Arc<backless_worker::server::State>,
    pub(crate) dir: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

/// Emulator (as `emulator` configures it), worker and web on embedded defaults in a temp dir,
/// sharing one in-process event bus; `extra` configures both services.
pub(crate) async fn start_with(emulator: EmulatorConfig, extra: &[(&str, &str)]) -> Stack {
    start_gated(emulator, extra, None).await
}

/// As [`start_with`]; the worker loads its models only once `gate` fires.
pub(crate) async fn start_gated(
    emulator: EmulatorConfig,
    extra: &[(&str, &str)],
    gate: Option<std::sync::mpsc::Receiver<()>>,
) -> Stack {
    assert!(crate::weights_present("u2netp"));
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let emulator = Emulator::start(listener, emulator).await.unwrap();
    let issuer = emulator.issuer().to_string();
    let emulator_url = emulator.url();
    let mut pairs: Vec<(String, String)> = vec![
        (
            "BACKLESS_DATABASE_URL".into(),
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
        ("BACKLESS_WEB_ADDR".into(), "127.0.0.1:0".into()),
        ("BACKLESS_SSE_KEEP_ALIVE".into(), "200ms".into()),
        ("BACKLESS_SSE_POLL".into(), "200ms".into()),
        ("BACKLESS_PUSH_OIDC_ISSUER".into(), issuer.clone()),
    ];
    pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let events: Arc<dyn Events> = Arc::new(InProcessEvents::default());
    let worker = backless_worker::server::App::build_gated(
        backless_worker::config::WorkerConfig::from_pairs(pairs.clone()).unwrap(),
        backless_worker::server::Components {
            events: Some(Arc::clone(&events)),
            ..Default::default()
        },
        gate,
    )
    .await
    .unwrap();
    let worker_url = format!("http://{}", worker.addr());
    pairs.push(("BACKLESS_WORKER_URL".into(), worker_url.clone()));
    let web = backless_web::App::build_with(
        backless_web::WebConfig::from_pairs(pairs).unwrap(),
        backless_web::Components {
            events: Some(events),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let web_url = format!("http://{}", web.addr());
    let worker_state = worker.state();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tokio::spawn(worker.run_until_stopped(stopped(rx.clone())));
    tokio::spawn(web.run_until_stopped(stopped(rx.clone())));
    tokio::spawn(async move {
        stopped(rx).await;
        emulator.shutdown().await;
    });
    Stack {
        web: web_url,
        worker: worker_url,
        issuer,
        emulator: emulator_url,
        worker_state,
        dir,
        _stop: tx,
    }
}

async fn start() -> Stack {
    start_with(EmulatorConfig::default(), &[("BACKLESS_GRACE", "1s")]).await
}

async fn upload(client: &reqwest::Client, stack: &Stack, bytes: Vec<u8>) -> reqwest::Response {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name("astronaut.png"),
    );
    client
        .post(format!("{}/v1/jobs", stack.web))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// Follow the job's SSE stream until it ends; returns the stages seen, in order.
pub(crate) async fn follow(client: &reqwest::Client, url: &str, token: &str) -> Vec<String> {
    let resp = client.get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut stages = Vec::new();
    let mut buf = String::new();
    let mut body = resp.bytes_stream();
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline.into(), body.next()).await {
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = buf.find('\n') {
            let line = buf[..end].trim().to_string();
            buf.drain(..=end);
            if let Some(stage) = line.strip_prefix("event:") {
                stages.push(stage.trim().to_string());
            }
        }
    }
    stages
}

pub(crate) async fn files_left(dir: &std::path::Path) -> usize {
    walkdir_count(&dir.join("objects"))
}

fn walkdir_count(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| {
            if e.path().is_dir() {
                walkdir_count(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_to_cut_out_to_deletion() {
    let stack = start().await;
    let client = reqwest::Client::new();
    // The queue is held until the watcher is connected, so every live stage reaches it (else the
    // worker may publish its first stages before the stream subscribes).
    let queue = format!(
        "{}/v2/projects/dev/locations/local/queues/backless",
        stack.emulator
    );
    let paused = client.post(format!("{queue}:pause")).send().await.unwrap();
    assert!(paused.status().is_success(), "{}", paused.status());
    let photo = std::fs::read(crate::fixture("fixtures/photos/astronaut.png")).unwrap();
    let resp = upload(&client, &stack, photo).await;
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let created: serde_json::Value = resp.json().await.unwrap();
    let token = created["token"].as_str().unwrap().to_string();
    let id = created["job"]["id"].as_str().unwrap().to_string();
    assert_eq!(created["job"]["state"], "queued");

    // Live progress over SSE, through the emulator's push to the worker, to `done`.
    let events = format!("{}/v1/jobs/{id}/events", stack.web);
    let watcher = tokio::spawn({
        let (client, events, token) = (client.clone(), events.clone(), token.clone());
        async move { follow(&client, &events, &token).await }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = client
            .get(format!("{}/metrics", stack.web))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("backless_web_sse_connections 1") {
            break;
        }
        assert!(Instant::now() < deadline, "the watcher never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resumed = client.post(format!("{queue}:resume")).send().await.unwrap();
    assert!(resumed.status().is_success(), "{}", resumed.status());
    let stages = watcher.await.unwrap();
    assert_eq!(
        stages.last().map(String::as_str),
        Some("done"),
        "{stages:?}"
    );
    for expected in ["segmenting", "stored", "done"] {
        assert!(
            stages.iter().any(|s| s == expected),
            "{expected} missing: {stages:?}"
        );
    }

    // Another client cannot see it.
    let other = client
        .get(format!("{}/v1/jobs/{id}", stack.web))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);

    // The result: a PNG of the photo's size, transparent background, opaque subject.
    let result = client
        .get(format!("{}/v1/jobs/{id}/result", stack.web))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(result.status(), 200);
    let png = image::load_from_memory(&result.bytes().await.unwrap()).unwrap();
    assert_eq!((png.width(), png.height()), (256, 256));
    let rgba = png.to_rgba8();
    let alpha: Vec<u8> = rgba.pixels().map(|p| p.0[3]).collect();
    let clear = alpha.iter().filter(|&&a| a < 16).count() as f64 / alpha.len() as f64;
    let solid = alpha.iter().filter(|&&a| a > 240).count() as f64 / alpha.len() as f64;
    assert!(
        clear > 0.15 && solid > 0.15,
        "clear {clear:.2} solid {solid:.2}"
    );
    // The astronaut's face (centre-left) is subject; the top-right corner is background.
    assert!(rgba.get_pixel(100, 60).0[3] > 200);
    assert!(rgba.get_pixel(250, 5).0[3] < 30);

    // A duplicate delivery of the finished task answers 2xx without running the model again.
    let runs = stack.worker_state.model_runs();
    assert_eq!(runs, 1);
    let dup = client
        .post(format!("{}/v1/tasks/remove-background", stack.worker))
        .json(&serde_json::json!({ "job_id": id }))
        .send()
        .await
        .unwrap();
    assert_eq!(dup.status(), 200);
    assert_eq!(stack.worker_state.model_runs(), runs);

    // A client connecting after completion still gets `done`; when it leaves too, the grace
    // window passes and nothing is left in storage or the database.
    let late = follow(&client, &events, &token).await;
    assert_eq!(late.last().map(String::as_str), Some("done"), "{late:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let gone = client
            .get(format!("{}/v1/jobs/{id}", stack.web))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status()
            == 404;
        if gone && files_left(stack.dir.path()).await == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "job not deleted after the grace window"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_upload_is_refused_and_stores_nothing() {
    let stack = start().await;
    let client = reqwest::Client::new();
    let mut truncated = std::fs::read(crate::fixture("fixtures/photos/chelsea.png")).unwrap();
    truncated.truncate(10);
    let resp = upload(&client, &stack, b"plain text, not a photo".to_vec()).await;
    assert!(resp.status().is_client_error(), "{}", resp.status());
    let resp = upload(&client, &stack, truncated).await;
    assert!(resp.status().is_client_error(), "{}", resp.status());
    assert_eq!(files_left(stack.dir.path()).await, 0);
}

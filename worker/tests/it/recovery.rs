//! Failure paths of the push contract with real processes: a worker killed mid-job and started
//! again still brings the job to `done`, through the queue's retries (the killed delivery, then
//! 503s while the dead worker's claim lease is live) and the lease running out.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backless_emulator::{Emulator, EmulatorConfig};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_worker(env: &[(String, String)]) -> Killed {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_worker"));
    cmd.arg("serve")
        .env_clear()
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Killed(cmd.spawn().expect("worker starts"))
}

async fn job_state(client: &reqwest::Client, url: &str, token: &str) -> String {
    let v: serde_json::Value = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["state"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_killed_mid_job_and_restarted_still_finishes_it() {
    assert!(crate::weights_present("u2netp"));
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        EmulatorConfig::default(),
    )
    .await
    .unwrap();
    let worker_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env: Vec<(String, String)> = [
        (
            "BACKLESS_DATABASE_URL",
            format!("sqlite://{}/backless.db?mode=rwc", dir.path().display()),
        ),
        (
            "BACKLESS_STORAGE_URL",
            format!("file://{}/objects", dir.path().display()),
        ),
        ("BACKLESS_TASKS_ENDPOINT", emulator.url()),
        (
            "BACKLESS_WORKER_URL",
            format!("http://127.0.0.1:{worker_port}"),
        ),
        ("BACKLESS_WORKER_ADDR", format!("127.0.0.1:{worker_port}")),
        (
            "BACKLESS_MODELS_DIR",
            crate::models_dir().display().to_string(),
        ),
        // A dead worker's claim runs out quickly.
        ("BACKLESS_CLAIM_LEASE", "3s".into()),
        ("BACKLESS_WEB_ADDR", "127.0.0.1:0".into()),
        ("BACKLESS_SSE_POLL", "200ms".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();

    let web = backless_web::App::build(backless_web::WebConfig::from_pairs(env.clone()).unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", web.addr());
    tokio::spawn(web.run_until_stopped(std::future::pending()));

    let first = spawn_worker(&env);
    let client = reqwest::Client::new();
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(
            std::fs::read(crate::fixture("fixtures/photos/astronaut.png")).unwrap(),
        )
        .file_name("astronaut.png"),
    );
    let created: serde_json::Value = client
        .post(format!("{base}/v1/jobs"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = created["token"].as_str().unwrap().to_string();
    let url = format!("{base}/v1/jobs/{}", created["job"]["id"].as_str().unwrap());

    // Kill the worker as soon as it has claimed the job, before it can finish.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = job_state(&client, &url, &token).await;
        if state == "processing" {
            break;
        }
        assert_ne!(
            state, "done",
            "the job finished before the worker could be killed"
        );
        assert!(
            Instant::now() < deadline,
            "the job was never claimed (state {state})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(first);
    assert_eq!(job_state(&client, &url, &token).await, "processing");

    // The queue retries the lost delivery; the new worker waits out the dead one's lease (503)
    // and then takes the job over.
    let _second = spawn_worker(&env);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state = job_state(&client, &url, &token).await;
        if state == "done" {
            break;
        }
        assert_ne!(state, "failed");
        assert!(Instant::now() < deadline, "job stuck in {state}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let result = client
        .get(format!("{url}/result"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(result.status(), 200);
    let png = image::load_from_memory(&result.bytes().await.unwrap()).unwrap();
    assert_eq!((png.width(), png.height()), (256, 256));
    emulator.shutdown().await;
}

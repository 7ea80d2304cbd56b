//! Failure paths of the push contract with real processes: a worker killed mid-job and started
//! again still brings the job to `done`, through the queue's retries (the killed delivery, then
//! 503s while the dead worker's claim lease is live) and the lease running out.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backless_common::config::FromSettings;
use backless_emulator::{Emulator, EmulatorConfig};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_worker(env: &[(String, String)]) -> Killed {
    let mut cmd = Command::new(crate::worker_binary());
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

/// The environment of web and worker processes sharing `dir`, pushed through `emulator`.
fn stack_env(
    dir: &std::path::Path,
    emulator: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let worker_port = backless_common::testing::free_port();
    let mut env: Vec<(String, String)> = [
        (
            "BACKLESS_DATABASE_URL",
            format!("sqlite://{}/backless.db?mode=rwc", dir.display()),
        ),
        (
            "BACKLESS_STORAGE_URL",
            format!("file://{}/objects", dir.display()),
        ),
        ("BACKLESS_TASKS_ENDPOINT", emulator.to_string()),
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
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

/// Upload the astronaut photo through web at `base`: (job URL, bearer token).
async fn upload_astronaut(client: &reqwest::Client, base: &str) -> (String, String) {
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
    (url, token)
}

/// Wait until a delivery to `worker` has claimed the job at `url` (its `attempts` on the record
/// reach `attempt`), then kill that worker while it holds the job.
async fn kill_once_claimed(env: &[(String, String)], url: &str, attempt: i32, worker: Killed) {
    let common = backless_common::config::CommonConfig::from_pairs(env.to_vec()).unwrap();
    let db = backless_common::db::Db::connect(&common.database)
        .await
        .unwrap();
    let id = url.rsplit('/').next().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = db.get(id).await.unwrap().unwrap();
        if job.attempts >= attempt {
            assert_eq!(
                job.state.as_str(),
                "processing",
                "the job ended before the worker could be killed"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the job was never claimed (state {})",
            job.state.as_str()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(worker);
}

/// Poll the job at `url` until it reaches `want`; it must never reach `never`.
async fn wait_until(client: &reqwest::Client, url: &str, token: &str, want: &str, never: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state = job_state(client, url, token).await;
        if state == want {
            return;
        }
        assert_ne!(state, never, "the job reached {never}, not {want}");
        assert!(Instant::now() < deadline, "job stuck in {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The emulator, and web in this process, for a stack whose workers are separate processes:
/// (emulator, environment of the processes, web's base URL).
async fn start_stack(
    dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> (
    backless_emulator::EmulatorHandle,
    Vec<(String, String)>,
    String,
) {
    let emulator = Emulator::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        EmulatorConfig::default(),
    )
    .await
    .unwrap();
    let env = stack_env(dir, &emulator.url(), extra);
    let web = backless_web::App::build(backless_web::WebConfig::from_pairs(env.clone()).unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", web.addr());
    tokio::spawn(web.run_until_stopped(std::future::pending()));
    (emulator, env, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_killed_mid_job_and_restarted_still_finishes_it() {
    assert!(crate::weights_present("u2netp"));
    let dir = tempfile::tempdir().unwrap();
    let (emulator, env, base) = start_stack(dir.path(), &[]).await;

    let first = spawn_worker(&env);
    let client = reqwest::Client::new();
    let (url, token) = upload_astronaut(&client, &base).await;

    // Kill the worker as soon as it has claimed the job, before it can finish.
    kill_once_claimed(&env, &url, 1, first).await;
    assert_eq!(job_state(&client, &url, &token).await, "processing");

    // The queue retries the lost delivery; the new worker waits out the dead one's lease (503)
    // and then takes the job over.
    let _second = spawn_worker(&env);
    wait_until(&client, &url, &token, "done", "failed").await;
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

/// A job that takes its worker down every time (here: the worker is killed while it holds the
/// job, as an abort would) is failed with `too_many_attempts` once its deliveries are spent,
/// answered 2xx so the queue stops; the next job runs as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_that_keeps_killing_its_worker_is_failed_and_the_next_one_runs() {
    assert!(crate::weights_present("u2netp"));
    let dir = tempfile::tempdir().unwrap();
    let (emulator, env, base) = start_stack(
        dir.path(),
        &[
            ("BACKLESS_MAX_ATTEMPTS", "2"),
            ("BACKLESS_CLAIM_LEASE", "1s"),
        ],
    )
    .await;
    let client = reqwest::Client::new();

    let worker = spawn_worker(&env);
    let (url, token) = upload_astronaut(&client, &base).await;
    // Two deliveries die holding the job.
    kill_once_claimed(&env, &url, 1, worker).await;
    // The dead delivery's lease runs out before the queue's retry can claim the job again.
    let worker = spawn_worker(&env);
    kill_once_claimed(&env, &url, 2, worker).await;

    // The third delivery finds the job attempted twice: failed, and the queue told to stop.
    let _worker = spawn_worker(&env);
    wait_until(&client, &url, &token, "failed", "done").await;
    let job: serde_json::Value = client
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["error_code"], "too_many_attempts", "{job}");
    // The queue heard a 2xx: the task is gone, not retried.
    tokio::time::timeout(Duration::from_secs(30), emulator.wait_idle())
        .await
        .expect("the queue stops delivering the job");
    assert_eq!(emulator.engine().task_count(), 0);

    // Another job on the same worker is unaffected.
    let (other, other_token) = upload_astronaut(&client, &base).await;
    wait_until(&client, &other, &other_token, "done", "failed").await;
    emulator.shutdown().await;
}

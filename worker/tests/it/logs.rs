//! `BACKLESS_LOG_FORMAT=json`: the real worker binary writes one JSON object per line, and every
//! line logged while handling a push carries the job id.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_job_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_worker"))
        .arg("serve")
        .env("BACKLESS_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env(
            "BACKLESS_DATABASE_URL",
            format!("sqlite://{}/b.db?mode=rwc", dir.path().display()),
        )
        .env(
            "BACKLESS_STORAGE_URL",
            format!("file://{}/objects", dir.path().display()),
        )
        .env("BACKLESS_MODELS_DIR", crate::models_dir())
        .env("BACKLESS_WORKER_ADDR", "127.0.0.1:0")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next_line = |deadline: Instant| -> serde_json::Value {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("a log line in time");
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
        v
    };

    // The listening line names the bound address.
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let v = next_line(deadline);
        if v["message"] == "worker listening" {
            break v["addr"].as_str().unwrap().to_string();
        }
    };
    let job_id = backless_common::db::new_job_id();
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/tasks/remove-background"))
        .json(&serde_json::json!({ "job_id": job_id }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200); // unknown job: nothing to do, not worth a retry

    // Every line about the push carries the job id through its span; collect for a moment
    // after the first one.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut about_push = 0;
    let mut until = deadline;
    while let Ok(line) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        let spans = v["spans"].as_array().cloned().unwrap_or_default();
        if spans.iter().any(|s| s["name"] == "push") {
            about_push += 1;
            assert!(
                spans.iter().any(|s| s["job_id"] == job_id.as_str()),
                "push line without the job id: {v}"
            );
            until = until.min(Instant::now() + Duration::from_millis(500));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(about_push >= 1, "no log line for the push");
}

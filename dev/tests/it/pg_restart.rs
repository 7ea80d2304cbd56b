//! PostgreSQL restarted in the middle of a job: a private cluster (so the shared test server is
//! not disturbed) is killed while the worker is segmenting, so recording the result fails; the
//! worker answers 503, the emulator retries, and once PostgreSQL is back the job completes.

use std::time::{Duration, Instant};

use backless_common::testing::PostgresServer;
use backless_emulator::EmulatorConfig;
use futures::StreamExt;

use crate::e2e::start_with;

/// A large smooth photo, so compositing and encoding after `segmenting` take a while.
fn big_photo() -> Vec<u8> {
    let img = image::RgbImage::from_fn(2400, 1800, |x, y| {
        let d = ((x as i64 - 1200).pow(2) + (y as i64 - 900).pow(2)) < 600 * 600;
        if d {
            image::Rgb([200, (x / 12) as u8, 40])
        } else {
            image::Rgb([(y / 8) as u8, 90, 220])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

async fn metric(client: &reqwest::Client, base: &str, line_prefix: &str) -> f64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_mid_job_then_the_job_completes() {
    let mut pg = PostgresServer::start();
    let db_url = pg.url();
    let stack = start_with(
        EmulatorConfig::default(),
        &[
            ("BACKLESS_DATABASE_URL", db_url.as_str()),
            // The failed attempt cannot release its claim (the database is down); the retry
            // takes the job over once this lease runs out.
            ("BACKLESS_CLAIM_LEASE", "2s"),
            ("BACKLESS_GRACE", "60s"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let queue = format!(
        "{}/v2/projects/dev/locations/local/queues/backless",
        stack.emulator
    );
    let paused = client.post(format!("{queue}:pause")).send().await.unwrap();
    assert!(paused.status().is_success());
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(big_photo()).file_name("big.png"),
    );
    let resp = client
        .post(format!("{}/v1/jobs", stack.web))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let created: serde_json::Value = resp.json().await.unwrap();
    let id = created["job"]["id"].as_str().unwrap().to_string();
    let token = created["token"].as_str().unwrap().to_string();

    // Watch live, then let the queue deliver.
    let events = client
        .get(format!("{}/v1/jobs/{id}/events", stack.web))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let mut events = events.bytes_stream();
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&client, &stack.web, "backless_web_sse_connections ").await < 1.0 {
        assert!(Instant::now() < deadline, "the watcher never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resumed = client.post(format!("{queue}:resume")).send().await.unwrap();
    assert!(resumed.status().is_success());

    // Kill PostgreSQL as soon as the worker has claimed the job and is running the model.
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.contains("segmenting") {
        let chunk = tokio::time::timeout_at(deadline.into(), events.next())
            .await
            .expect("no `segmenting` event within 60 s")
            .expect("stream ended early")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    pg.stop();
    assert!(
        !seen.contains("event: done") && !seen.contains("event:done"),
        "{seen}"
    );

    // The worker cannot record the result: it asks the queue to retry.
    let retry = "backless_worker_pushes_total{outcome=\"retry\"} ";
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&client, &stack.worker, retry).await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the worker never answered retry with the database down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Down a little longer: a retry or two may land while it is still down.
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.start_again();

    // The queue's retry completes the job, and web (same pool, reconnected) serves it.
    let deadline = Instant::now() + Duration::from_secs(120);
    let job = loop {
        let resp = client
            .get(format!("{}/v1/jobs/{id}", stack.web))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            let job: serde_json::Value = resp.json().await.unwrap();
            if job["state"] == "done" || job["state"] == "failed" {
                break job;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the job did not complete after PostgreSQL came back"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(job["state"], "done", "{job}");
    let result = client
        .get(format!("{}/v1/jobs/{id}/result", stack.web))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(result.status(), 200);
    let png = result.bytes().await.unwrap();
    let out = image::load_from_memory(&png).unwrap();
    assert_eq!((out.width(), out.height()), (2400, 1800));
    let done = "backless_worker_pushes_total{outcome=\"done\"} ";
    assert_eq!(metric(&client, &stack.worker, done).await, 1.0);
    assert!(metric(&client, &stack.worker, retry).await >= 1.0);
}

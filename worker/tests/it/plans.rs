//! Jobs web never checked (planted in the database and pushed to the worker directly): a
//! pipeline whose plan breaks a limit fails permanently with the same code web would have
//! answered, before a pixel is decoded; a hostile record never takes the worker down, and the
//! next job still runs.

use std::io::Cursor;
use std::time::Duration;

use backless_common::config::{CommonConfig, FromSettings};
use backless_common::db::{Db, JobOptions, JobState, NewJob, new_job_id};
use backless_common::job::Pipeline;
use backless_common::storage::Storage;

fn flat_png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image::RgbImage::new(w, h)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// Store `png` and record a job running `pipeline` (JSON, as on the job record) on it.
async fn plant(db: &Db, storage: &Storage, png: Vec<u8>, pipeline: serde_json::Value) -> String {
    let id = new_job_id();
    let (w, h) = image::load_from_memory(&png)
        .map(|i| (i.width(), i.height()))
        .unwrap();
    storage.put_original(&id, png.into()).await.unwrap();
    let pipeline: Pipeline = serde_json::from_value(pipeline).unwrap();
    db.insert(NewJob {
        id: id.clone(),
        owner: "planted".into(),
        name: "planted".into(),
        options: JobOptions {
            pipeline: Some(pipeline),
            ..JobOptions::default()
        },
        original_content_type: "image/png".into(),
        width: w,
        height: h,
        client_addr: None,
    })
    .await
    .unwrap();
    id
}

/// A worker on the database and storage in `dir`, with `extra` settings, served in the
/// background: its database, storage, URL and the sender that stops it.
async fn start_worker(
    dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> (Db, Storage, String, tokio::sync::watch::Sender<bool>) {
    let mut pairs = crate::worker_env(dir);
    pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let common = CommonConfig::from_pairs(pairs.clone()).unwrap();
    let db = Db::connect(&common.database).await.unwrap();
    let storage = Storage::from_config(&common.storage).unwrap();
    let worker = backless_worker::server::App::build(
        backless_worker::config::WorkerConfig::from_pairs(pairs).unwrap(),
    )
    .await
    .unwrap();
    let url = format!("http://{}", worker.addr());
    (db, storage, url, crate::serve_worker(worker))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_jobs_beyond_the_limits_fail_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let (db, storage, url, stop) = start_worker(dir.path(), &[]).await;
    let http = reqwest::Client::new();
    let push = |id: String| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let res = http
                .post(format!("{url}/v1/tasks/remove-background"))
                .json(&serde_json::json!({ "job_id": id }))
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "a permanent failure is a 2xx");
            res.json::<serde_json::Value>().await.unwrap()
        }
    };
    let encode = serde_json::json!({"op": "encode", "format": "png"});
    // (width, height, operations before encode, expected code)
    let cases = [
        // The 163-byte PNG that aborted the worker with a 6 TB allocation.
        (
            1,
            20_000,
            vec![serde_json::json!({"op": "resize", "width": 10000})],
            "output_too_large",
        ),
        (
            20_000,
            1,
            vec![serde_json::json!({"op": "resize", "height": 10000})],
            "output_too_large",
        ),
        (
            32,
            32,
            vec![
                serde_json::json!({"op": "resize", "width": 10000, "height": 10000, "fit": "fill"}),
            ],
            "output_too_large",
        ),
        (
            32,
            32,
            vec![
                serde_json::json!({"op": "resize", "width": 10000, "height": 10000, "fit": "cover"}),
            ],
            "output_too_large",
        ),
        (
            40,
            30,
            vec![
                serde_json::json!({"op": "resize", "width": 8000}),
                serde_json::json!({"op": "resize", "height": 9000}),
            ],
            "output_too_large",
        ),
        (
            2,
            1,
            vec![
                serde_json::json!({"op": "resize", "width": 10000, "height": 10000, "fit": "fill"}),
                serde_json::json!({"op": "watermark", "text": "big", "opacity": 0.5}),
            ],
            "output_too_large",
        ),
        // A record web would never write: a margin that wraps a u32 addition.
        (
            16,
            16,
            vec![
                serde_json::json!({"op": "remove_background", "model": "u2netp"}),
                serde_json::json!({"op": "crop_to_subject", "threshold": 10, "margin": u32::MAX}),
            ],
            "bad_parameter",
        ),
    ];
    for (w, h, mut ops, code) in cases {
        ops.push(encode.clone());
        let png = flat_png(w, h);
        let id = plant(&db, &storage, png, serde_json::Value::Array(ops.clone())).await;
        let body = push(id.clone()).await;
        assert_eq!(body["status"], "failed", "{ops:?}: {body}");
        let job = db.get(&id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed, "{ops:?}");
        assert_eq!(job.error_code.as_deref(), Some(code), "{ops:?}");
        let message = job.error_message.unwrap_or_default();
        assert!(!message.is_empty(), "{ops:?}");
    }
    // No pixel was decoded for any of them: the plan failed them from the header.
    let metrics = crate::fetch_metrics(&url).await;
    assert_eq!(
        crate::metric_sample(
            &metrics,
            "backless_worker_stage_seconds_count{stage=\"decode\"}"
        ),
        0.0,
        "{metrics}"
    );

    // The worker is alive and the next job runs.
    let id = plant(
        &db,
        &storage,
        flat_png(1, 200),
        serde_json::json!([{"op": "resize", "width": 50}, encode]),
    )
    .await;
    let body = push(id.clone()).await;
    assert_eq!(body["status"], "done", "{body}");
    let out = image::load_from_memory(&storage.get_result(&id).await.unwrap()).unwrap();
    assert_eq!((out.width(), out.height()), (50, 10_000));
    let _ = stop.send(true);
}

/// Images wait for memory, not fail: with room for less than one image (each then reserves the
/// whole budget and runs alone) and three pushes admitted at once, every job ends done, and the
/// budget is whole again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_wait_for_memory_and_all_finish() {
    assert!(crate::weights_present("u2netp"));
    let dir = tempfile::tempdir().unwrap();
    let (db, storage, url, stop) = start_worker(
        dir.path(),
        &[
            ("BACKLESS_WORKER_CONCURRENCY", "3"),
            ("BACKLESS_WORKER_MEMORY_MB", "1"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(crate::record_astronaut_job(&db, &storage).await);
    }
    let pushes = ids.iter().map(|id| {
        let (http, url) = (http.clone(), url.clone());
        let id = id.clone();
        async move {
            // The models may still be loading: the worker answers 503 until they are.
            for _ in 0..120 {
                let res = http
                    .post(format!("{url}/v1/tasks/remove-background"))
                    .json(&serde_json::json!({ "job_id": id }))
                    .timeout(Duration::from_secs(120))
                    .send()
                    .await
                    .unwrap();
                if res.status() == 200 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            panic!("job {id} was never finished");
        }
    });
    futures::future::join_all(pushes).await;
    for id in &ids {
        let job = db.get(id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Done, "{id}: {:?}", job.error_message);
    }
    let metrics = crate::fetch_metrics(&url).await;
    assert_eq!(
        crate::metric_sample(&metrics, "backless_worker_memory_budget_bytes"),
        f64::from(1u32 << 20)
    );
    assert_eq!(
        crate::metric_sample(&metrics, "backless_worker_memory_reserved_bytes"),
        0.0
    );
    let _ = stop.send(true);
}

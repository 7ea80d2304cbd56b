//! Pipelines of operations end to end: web -> Cloud Tasks emulator -> worker -> SSE -> result.

use std::time::{Duration, Instant};

use backless_emulator::EmulatorConfig;

use crate::e2e::{Stack, follow, start_gated};

/// Upload `photo` with these `op` fields; returns (job id, token).
async fn upload(
    client: &reqwest::Client,
    stack: &Stack,
    photo: &str,
    ops: &[&str],
) -> (String, String) {
    let bytes = std::fs::read(crate::fixture(photo)).unwrap();
    let mut form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name("photo.png"),
    );
    for op in ops {
        form = form.text("op", op.to_string());
    }
    let res = client
        .post(format!("{}/v1/jobs", stack.web))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let body: serde_json::Value = res.json().await.unwrap();
    (
        body["job"]["id"].as_str().unwrap().to_string(),
        body["token"].as_str().unwrap().to_string(),
    )
}

async fn result(
    client: &reqwest::Client,
    stack: &Stack,
    id: &str,
    token: &str,
) -> reqwest::Response {
    client
        .get(format!("{}/v1/jobs/{id}/result", stack.web))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn state(client: &reqwest::Client, stack: &Stack, id: &str, token: &str) -> String {
    let job: serde_json::Value = client
        .get(format!("{}/v1/jobs/{id}", stack.web))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    job["state"].as_str().unwrap().to_string()
}

async fn wait_done(client: &reqwest::Client, stack: &Stack, id: &str, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match state(client, stack, id, token).await.as_str() {
            "done" => return,
            "failed" => panic!("job {id} failed"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "job {id} never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn product_shot_cut_out_crop_resize_watermark_webp() {
    // The models load at once (the gate's sender is dropped).
    let stack = start_gated(EmulatorConfig::default(), &[], None).await;
    let client = reqwest::Client::new();
    let (id, token) = upload(
        &client,
        &stack,
        "fixtures/photos/astronaut.png",
        &[
            "remove_background:model=u2netp",
            "crop_to_subject:margin=4",
            "resize:width=128",
            "watermark:text=BackLess,opacity=1",
            "encode:format=webp",
        ],
    )
    .await;
    let stages = follow(
        &client,
        &format!("{}/v1/jobs/{id}/events", stack.web),
        &token,
    )
    .await;
    assert_eq!(
        stages.last().map(String::as_str),
        Some("done"),
        "{stages:?}"
    );
    // Every operation reported its own stage, in pipeline order (a stage published before the
    // stream subscribed is skipped, never reordered).
    let order = [
        "segmenting",
        "compositing",
        "cropping",
        "resizing",
        "watermarking",
        "encoding",
        "stored",
        "done",
    ];
    let seen: Vec<&str> = stages
        .iter()
        .map(String::as_str)
        .filter(|s| order.contains(s))
        .collect();
    let mut expected: Vec<&str> = order.to_vec();
    expected.retain(|s| seen.contains(s));
    assert_eq!(seen, expected, "{stages:?}");
    assert!(seen.contains(&"watermarking"), "{stages:?}");

    let res = result(&client, &stack, &id, &token).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/webp");
    let bytes = res.bytes().await.unwrap();
    assert_eq!(
        image::guess_format(&bytes).unwrap(),
        image::ImageFormat::WebP
    );
    let img = image::load_from_memory(&bytes).unwrap().to_rgba8();
    assert_eq!(img.width(), 128);
    // Cropped to the subject: narrower than tall or square, not the 256x256 frame scaled.
    assert!(img.height() >= 100, "{}x{}", img.width(), img.height());
    assert!(
        img.pixels().any(|p| p.0[3] < 16),
        "the background is transparent"
    );
    // The watermark: near-white opaque pixels in the bottom-right quarter.
    let (w, h) = img.dimensions();
    let white = img
        .enumerate_pixels()
        .filter(|(x, y, p)| {
            *x >= w / 2 && *y >= h * 3 / 4 && p.0[3] > 200 && p.0[..3].iter().all(|&c| c > 230)
        })
        .count();
    assert!(white > 10, "{white} watermark pixels");
    assert_eq!(stack.worker_state.model_runs(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thumbnail_runs_while_the_model_is_still_loading() {
    let (open, gate) = std::sync::mpsc::channel();
    let stack = start_gated(EmulatorConfig::default(), &[], Some(gate)).await;
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("{}/readyz", stack.worker))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "the models are held back");

    // A background removal waits for the model...
    let (cut, cut_token) = upload(
        &client,
        &stack,
        "fixtures/photos/astronaut.png",
        &["remove_background"],
    )
    .await;
    // ...while a thumbnail + grayscale + JPEG needs none and finishes at once.
    let (thumb, thumb_token) = upload(
        &client,
        &stack,
        "fixtures/photos/chelsea.png",
        &[
            "thumbnail:size=64",
            "filter:grayscale",
            "encode:format=jpeg,quality=85",
        ],
    )
    .await;
    wait_done(&client, &stack, &thumb, &thumb_token).await;
    let res = result(&client, &stack, &thumb, &thumb_token).await;
    assert_eq!(res.headers()["content-type"], "image/jpeg");
    let img = image::load_from_memory(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(img.width().max(img.height()), 64);
    let rgb = img.to_rgb8();
    assert!(
        rgb.pixels()
            .all(|p| p.0[0].abs_diff(p.0[1]) <= 3 && p.0[1].abs_diff(p.0[2]) <= 3),
        "grayscale"
    );
    assert_eq!(stack.worker_state.model_runs(), 0);
    assert_ne!(state(&client, &stack, &cut, &cut_token).await, "done");
    let ready = client
        .get(format!("{}/readyz", stack.worker))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "still loading");

    // Once the model is loaded, the waiting job completes.
    open.send(()).unwrap();
    wait_done(&client, &stack, &cut, &cut_token).await;
    assert_eq!(stack.worker_state.model_runs(), 1);
}

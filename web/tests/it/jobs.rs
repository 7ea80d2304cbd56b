use crate::helpers::*;

#[tokio::test]
async fn upload_creates_a_queued_job_visible_only_to_its_creator() {
    let app = spawn_app(&[]).await;
    let alice = browser();
    let (status, body) = app
        .upload(&alice, png_bytes(64, 48), "holiday cat.png")
        .await;
    assert_eq!(status, 201, "{body}");
    let job = &body["job"];
    let id = job["id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert_eq!(job["state"], "queued");
    assert_eq!(job["name"], "holiday cat");
    assert_eq!(job["width"], 64);
    assert_eq!(job["height"], 48);
    assert_eq!(job["download_name"], "holiday cat-nobg.png");
    let token = body["token"].as_str().unwrap().to_string();

    // The creator (cookie) sees it.
    let res = alice
        .get(app.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let got: serde_json::Value = res.json().await.unwrap();
    assert_eq!(got["id"], id);
    assert_eq!(got["state"], "queued");

    // A stranger gets 404, the same as for an id that does not exist.
    let stranger = browser();
    for path in ["", "/original", "/result", "/events"] {
        let res = stranger
            .get(app.url(&format!("/v1/jobs/{id}{path}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{path}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["code"], "not_found");
    }
    let res = stranger
        .delete(app.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let list: serde_json::Value = stranger
        .get(app.url("/v1/jobs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 0);

    // A forged token is no identity: the same token with its last character changed.
    let last = if token.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &token[..token.len() - 1]);
    assert_ne!(forged, token);
    let res = stranger
        .get(app.url(&format!("/v1/jobs/{id}")))
        .bearer_auth(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // The bearer token works without the cookie.
    let api = reqwest::Client::new();
    let res = api
        .get(app.url(&format!("/v1/jobs/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // The original comes back byte for byte with the sniffed type.
    let res = alice
        .get(app.url(&format!("/v1/jobs/{id}/original")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/png");
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        png_bytes(64, 48).as_slice()
    );

    // No result yet.
    let res = alice
        .get(app.url(&format!("/v1/jobs/{id}/result")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);

    // Listed for its owner; renamable.
    let list: serde_json::Value = alice
        .get(app.url("/v1/jobs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let res = alice
        .patch(app.url(&format!("/v1/jobs/{id}")))
        .json(&serde_json::json!({"name": "Mittens"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let renamed: serde_json::Value = res.json().await.unwrap();
    assert_eq!(renamed["name"], "Mittens");
    assert_eq!(renamed["download_name"], "Mittens-nobg.png");
    let res = stranger
        .patch(app.url(&format!("/v1/jobs/{id}")))
        .json(&serde_json::json!({"name": "evil"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // Stored under the job id only; the enqueue failed (no queue here) so the outbox holds it.
    let files = app.stored_files();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with(format!("originals/{id}")));
    let row = app.shared.db.get(id).await.unwrap().unwrap();
    assert!(!row.enqueued);
}

#[tokio::test]
async fn non_images_and_corrupt_images_are_refused_and_nothing_is_stored() {
    let app = spawn_app(&[]).await;
    let c = browser();

    let (status, body) = app
        .upload(&c, b"<html>not a photo</html>".to_vec(), "x.png")
        .await;
    assert_eq!(status, 415, "{body}");
    assert_eq!(body["code"], "unsupported_media_type");

    let mut truncated = png_bytes(64, 48);
    truncated.truncate(20);
    let (status, body) = app.upload(&c, truncated, "broken.png").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "corrupt_image");

    let (status, body) = app.upload(&c, Vec::new(), "empty.png").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "empty_file");

    // A bad option is refused before anything is stored too.
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(png_bytes(8, 8)).file_name("a.png"),
        )
        .text("format", "bmp");
    let res = c
        .post(app.url("/v1/jobs"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "invalid_option");

    assert!(app.stored_files().is_empty(), "{:?}", app.stored_files());
    assert_eq!(app.job_rows().await, 0);
}

#[tokio::test]
async fn oversized_upload_is_413() {
    let app = spawn_app(&[("BACKLESS_MAX_UPLOAD_BYTES", "10000")]).await;
    let c = browser();
    // Random pixels do not compress: well over 10 kB.
    let big = png_bytes(200, 200);
    assert!(big.len() > 10_000);
    let (status, body) = app.upload(&c, big, "big.png").await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], "file_too_large");

    // A body declaring far more than the limit is refused before it is read.
    let res = c
        .post(app.url("/v1/jobs"))
        .header("content-type", "multipart/form-data; boundary=x")
        .body(vec![0u8; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);

    assert!(app.stored_files().is_empty());
    assert_eq!(app.job_rows().await, 0);
}

#[tokio::test]
async fn pixel_bomb_header_is_refused_before_decoding() {
    let app = spawn_app(&[]).await;
    let c = browser();
    let bomb = png_claiming(100_000, 100_000);
    assert!(bomb.len() < 100);
    let (status, body) = app.upload(&c, bomb, "bomb.png").await;
    assert!((400..500).contains(&status), "{status} {body}");
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "image_side_too_large");

    let (status, body) = app.upload(&c, png_claiming(8000, 6000), "big.png").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "too_many_pixels");
    assert!(body["message"].as_str().unwrap().contains("megapixels"));

    assert!(app.stored_files().is_empty());
    assert_eq!(app.job_rows().await, 0);
}

#[tokio::test]
async fn delete_removes_files_and_record_at_once() {
    let app = spawn_app(&[]).await;
    let c = browser();
    let id = app.create_job(&c).await;
    app.finish_job(&id).await;
    assert_eq!(app.stored_files().len(), 2);
    let res = c
        .get(app.url(&format!("/v1/jobs/{id}/result")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("cat-nobg.png")
    );

    let res = c
        .delete(app.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert!(app.stored_files().is_empty(), "{:?}", app.stored_files());
    assert_eq!(app.job_rows().await, 0);
    let res = c
        .get(app.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn live_job_cap_is_429_with_a_clear_message() {
    let app = spawn_app(&[("BACKLESS_MAX_LIVE_JOBS_PER_CLIENT", "2")]).await;
    let c = browser();
    let first = app.create_job(&c).await;
    app.create_job(&c).await;
    let (status, body) = app.upload(&c, png_bytes(8, 8), "third.png").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "too_many_jobs");
    assert!(body["message"].as_str().unwrap().contains('2'));
    // Another client is not affected.
    app.create_job(&browser()).await;
    // A finished job no longer counts.
    app.finish_job(&first).await;
    app.create_job(&c).await;
}

#[tokio::test]
async fn health_docs_and_pages() {
    let app = spawn_app(&[]).await;
    let c = reqwest::Client::new();
    assert_eq!(
        c.get(app.url("/healthz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        c.get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ready"
    );
    let spec: serde_json::Value = c
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for p in [
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/events",
        "/v1/jobs/{id}/result",
        "/v1/config",
        "/readyz",
    ] {
        assert!(spec["paths"][p].is_object(), "{p} missing from the spec");
    }
    let docs = c.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));

    let page = c.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"));
    let html = page.text().await.unwrap();
    assert!(html.contains("/static/app.js"));
    assert!(!html.contains("<script>"), "no inline script");
    assert!(!html.contains("https://"), "no external resources");
    for asset in ["/static/app.js", "/static/style.css"] {
        let res = c.get(app.url(asset)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{asset}");
    }
}

#[tokio::test]
async fn config_tells_the_page_the_limits_the_server_enforces() {
    let app = spawn_app(&[
        ("BACKLESS_MAX_UPLOAD_BYTES", "5000"),
        ("BACKLESS_MAX_PIXELS", "1234567"),
        ("BACKLESS_MAX_SIDE", "3000"),
        ("BACKLESS_MODELS", "u2netp,isnet"),
        ("BACKLESS_MAX_LIVE_JOBS_PER_CLIENT", "3"),
        ("BACKLESS_GRACE", "7s"),
    ])
    .await;
    let c = browser();
    let cfg: serde_json::Value = c
        .get(app.url("/v1/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cfg["max_upload_bytes"], 5000);
    assert_eq!(cfg["max_pixels"], 1_234_567);
    assert_eq!(cfg["max_side"], 3000);
    assert_eq!(cfg["max_live_jobs"], 3);
    // The page sends no more photos at once than the client may have live.
    assert_eq!(cfg["batch_size"], 3);
    assert_eq!(cfg["grace_seconds"], 7);
    assert_eq!(cfg["formats"], serde_json::json!(["png", "webp", "jpeg"]));
    assert_eq!(
        cfg["models"],
        serde_json::json!([
            {"id": "u2netp", "label": "U²-NetP (fast)", "available": true},
            {"id": "u2net", "label": "U²-Net (balanced)", "available": false},
            {"id": "isnet", "label": "IS-Net (best quality)", "available": true},
        ])
    );
    let types = cfg["content_types"].as_array().unwrap();
    assert!(types.contains(&"image/png".into()) && types.contains(&"image/tiff".into()));
    // The advertised byte limit is the one uploads meet.
    let (status, body) = app.upload(&c, png_bytes(64, 64), "big.png").await;
    assert!(png_bytes(64, 64).len() > 5000);
    assert_eq!(status, 413, "{body}");
}

#[tokio::test]
async fn a_body_without_a_length_is_cut_off_at_the_limit() {
    let app = spawn_app(&[("BACKLESS_MAX_UPLOAD_BYTES", "10000")]).await;
    let c = browser();
    // 1.25 MiB in 64 KiB chunks, no Content-Length: refused once it passes the limit (the file
    // limit plus 1 MiB of multipart framing), counted as it streams.
    let chunks = (0..20).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 64 * 1024]));
    let res = c
        .post(app.url("/v1/jobs"))
        .header("content-type", "multipart/form-data; boundary=x")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "file_too_large");
    assert!(app.stored_files().is_empty());
    assert_eq!(app.job_rows().await, 0);
}

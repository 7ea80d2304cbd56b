//! Hostile clients: request floods, cross-site posts, malformed multipart, enormous headers,
//! failing backends. Every refusal is a clear 4xx/503 with a stable code, leaks nothing
//! internal, and stores nothing.

use std::time::{Duration, Instant};

use crate::helpers::*;

fn assert_no_internals(body: &str, dir: &std::path::Path) {
    let dir = dir.display().to_string();
    for leak in [
        dir.as_str(),
        "/tmp",
        "sqlite",
        "postgres",
        "SELECT",
        "INSERT",
        "relation",
        "database \"",
        "os error",
        "panicked",
        ".rs:",
    ] {
        assert!(!body.contains(leak), "{leak:?} leaked: {body}");
    }
}

#[tokio::test]
async fn requests_beyond_the_per_ip_rate_get_429_with_retry_after() {
    let app = spawn_app(&[("BACKLESS_RATE_LIMIT_PER_IP", "5")]).await;
    let c = reqwest::Client::new();
    for _ in 0..5 {
        let res = c.get(app.url("/v1/jobs")).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    let res = c.get(app.url("/v1/jobs")).send().await.unwrap();
    assert_eq!(res.status(), 429);
    let wait: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=12).contains(&wait), "{wait}");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    // Pages are not API requests and stay available.
    assert_eq!(c.get(app.url("/")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn client_ip_header_is_honoured_only_when_configured() {
    let app = spawn_app(&[
        ("BACKLESS_RATE_LIMIT_PER_IP", "2"),
        ("BACKLESS_CLIENT_IP_HEADER", "X-Forwarded-For"),
    ])
    .await;
    let c = reqwest::Client::new();
    let get = |ip: &'static str| {
        c.get(app.url("/v1/jobs"))
            .header("x-forwarded-for", format!("203.0.113.9, {ip}"))
            .send()
    };
    assert_eq!(get("198.51.100.1").await.unwrap().status(), 200);
    assert_eq!(get("198.51.100.1").await.unwrap().status(), 200);
    assert_eq!(get("198.51.100.1").await.unwrap().status(), 429);
    // Another address, as the nearest proxy saw it: its own budget.
    assert_eq!(get("198.51.100.2").await.unwrap().status(), 200);
}

#[tokio::test]
async fn requests_beyond_the_per_client_rate_get_429() {
    let app = spawn_app(&[
        ("BACKLESS_RATE_LIMIT_PER_IP", "0"),
        ("BACKLESS_RATE_LIMIT_PER_CLIENT", "3"),
    ])
    .await;
    let alice = browser();
    // Uploaded before Alice had an id: only her address counts it.
    let id = app.create_job(&alice).await;
    let url = app.url(&format!("/v1/jobs/{id}"));
    for _ in 0..3 {
        assert_eq!(alice.get(&url).send().await.unwrap().status(), 200);
    }
    let res = alice.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    // Another client is not affected.
    let bob = browser();
    app.create_job(&bob).await;
}

#[tokio::test]
async fn event_streams_per_client_are_capped_and_slots_come_back() {
    let app = spawn_app(&[("BACKLESS_MAX_SSE_PER_CLIENT", "2")]).await;
    let alice = browser();
    let id = app.create_job(&alice).await;
    let url = app.url(&format!("/v1/jobs/{id}/events"));
    let first = alice.get(&url).send().await.unwrap();
    let second = alice.get(&url).send().await.unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = alice.get(&url).send().await.unwrap();
    assert_eq!(third.status(), 429);
    assert!(third.headers().contains_key("retry-after"));
    let body: serde_json::Value = third.json().await.unwrap();
    assert_eq!(body["code"], "too_many_streams");

    drop(first);
    let again = eventually(Duration::from_secs(5), || async {
        alice.get(&url).send().await.unwrap().status() == 200
    })
    .await;
    assert!(again, "the closed stream's slot never came back");
    drop(second);
}

/// Upload a small PNG as a brand-new client (no cookie) from `addr` (as the proxy reports it).
async fn upload_from(app: &TestApp, addr: &str) -> (u16, serde_json::Value, Option<String>) {
    let part = reqwest::multipart::Part::bytes(png_bytes(64, 48))
        .file_name("a.png")
        .mime_str("image/png")
        .unwrap();
    let res = reqwest::Client::new()
        .post(app.url("/v1/jobs"))
        .header("x-forwarded-for", format!("203.0.113.9, {addr}"))
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, res.json().await.unwrap(), retry)
}

#[tokio::test]
async fn clients_without_a_cookie_meet_their_address_quotas() {
    let app = spawn_app(&[
        ("BACKLESS_CLIENT_IP_HEADER", "X-Forwarded-For"),
        ("BACKLESS_MAX_LIVE_JOBS_PER_ADDR", "2"),
        ("BACKLESS_MAX_STORED_BYTES_PER_ADDR", "30000"),
    ])
    .await;
    let small = png_bytes(64, 48).len();
    assert!((10_001..15_000).contains(&small), "{small}");
    // Every upload is a new client id; the addresses are one IPv6 /64, written as proxies do.
    let (s1, b1, _) = upload_from(&app, "2001:db8:1:2::1").await;
    let (s2, b2, _) = upload_from(&app, "[2001:db8:1:2:ffff::9]:4711").await;
    assert_eq!((s1, s2), (201, 201), "{b1} {b2}");
    let (status, body, retry) = upload_from(&app, "2001:db8:1:2:aaaa::3").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "too_many_jobs");
    assert_eq!(retry.as_deref(), Some("5"));
    // Another /64 has its own quota; nothing of the refused upload was kept.
    let (status, body, _) = upload_from(&app, "2001:db8:1:3::1").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(app.job_rows().await, 3);
    assert_eq!(app.stored_files().len(), 3);

    // Finished jobs free the live quota, but their originals stay counted until deleted: the
    // third photo would take the /64 past 30,000 stored bytes.
    for b in [&b1, &b2] {
        let id = b["job"]["id"].as_str().unwrap();
        assert!(app.shared.db.mark_failed(id, "x", "y").await.unwrap());
    }
    let (status, body, retry) = upload_from(&app, "2001:db8:1:2::5").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "storage_quota");
    assert_eq!(retry.as_deref(), Some("5"));
    app.shared
        .delete_job(b1["job"]["id"].as_str().unwrap(), "api")
        .await
        .unwrap();
    let (status, body, _) = upload_from(&app, "2001:db8:1:2::5").await;
    assert_eq!(status, 201, "deleting a photo gives its bytes back: {body}");
}

#[tokio::test]
async fn event_streams_are_capped_per_address_and_per_process() {
    let app = spawn_app(&[
        ("BACKLESS_CLIENT_IP_HEADER", "X-Forwarded-For"),
        ("BACKLESS_MAX_SSE_PER_ADDR", "2"),
        ("BACKLESS_MAX_SSE", "3"),
    ])
    .await;
    let open = |addr: &'static str| {
        let app = &app;
        async move {
            let (status, body, _) = upload_from(app, addr).await;
            assert_eq!(status, 201, "{body}");
            let (id, token) = (
                body["job"]["id"].as_str().unwrap(),
                body["token"].as_str().unwrap(),
            );
            reqwest::Client::new()
                .get(app.url(&format!("/v1/jobs/{id}/events")))
                .header("x-forwarded-for", addr)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    // Two clients behind one address hold its two streams; a third client there is refused.
    let a = open("198.51.100.7").await;
    let b = open("198.51.100.7").await;
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let refused = open("198.51.100.7").await;
    assert_eq!(refused.status(), 429);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "too_many_streams");
    // The process holds three at most, whoever asks.
    let c = open("198.51.100.8").await;
    assert_eq!(c.status(), 200);
    assert_eq!(open("198.51.100.9").await.status(), 429);
    drop((a, b, c));
    assert!(
        eventually(Duration::from_secs(5), || async {
            open("198.51.100.9").await.status() == 200
        })
        .await
    );
}

#[tokio::test]
async fn cross_site_state_changes_are_refused() {
    let app = spawn_app(&[]).await;
    let alice = browser();
    let id = app.create_job(&alice).await;
    let job = app.url(&format!("/v1/jobs/{id}"));

    // A page on another site makes Alice's browser post, cookie attached.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(png_bytes(8, 8)).file_name("a.png"),
    );
    let res = alice
        .post(app.url("/v1/jobs"))
        .header("sec-fetch-site", "cross-site")
        .header("origin", "https://evil.example")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "cross_site_request");

    let res = alice
        .delete(&job)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = alice
        .patch(&job)
        .header("sec-fetch-site", "same-site")
        .json(&serde_json::json!({ "name": "pwned" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(app.job_rows().await, 1, "nothing was created or deleted");
    let got: serde_json::Value = alice.get(&job).send().await.unwrap().json().await.unwrap();
    assert_ne!(got["name"], "pwned");

    // Our own page (same origin) may.
    let host = app.base.trim_start_matches("http://").to_string();
    let res = alice
        .delete(&job)
        .header("sec-fetch-site", "same-origin")
        .header("origin", format!("http://{host}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
}

#[tokio::test]
async fn every_response_carries_security_headers_and_downloads_a_disposition() {
    let app = spawn_app(&[]).await;
    let alice = browser();
    let id = app.create_job(&alice).await;
    app.finish_job(&id).await;
    for path in [
        "/".to_string(),
        "/static/app.js".into(),
        "/v1/jobs".into(),
        "/v1/config".into(),
        "/healthz".into(),
        "/docs".into(),
        "/no/such/page".into(),
        "/v1/jobs/0123456789abcdef0123456789abcdef".into(),
        format!("/v1/jobs/{id}/original"),
        format!("/v1/jobs/{id}/result"),
    ] {
        let res = alice.get(app.url(&path)).send().await.unwrap();
        let h = res.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        if path.ends_with("/result") || path.ends_with("/original") {
            assert_eq!(res.status(), 200, "{path}");
            let d = h["content-disposition"].to_str().unwrap();
            assert!(d.starts_with("inline"), "{path}: {d}");
            assert_eq!(h["cache-control"], "private, no-store");
        }
    }
    // The app's page keeps its own, stricter policy.
    let page = alice.get(app.url("/")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
}

#[tokio::test]
async fn malformed_multipart_is_a_clear_400_and_stores_nothing() {
    let app = spawn_app(&[]).await;
    let c = reqwest::Client::new();
    let png = png_bytes(8, 8);
    // The body uses another boundary than the header announces.
    let mut body =
        b"--real\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
            .to_vec();
    body.extend_from_slice(&png);
    body.extend_from_slice(b"\r\n--real--\r\n");
    for content_type in [
        "multipart/form-data; boundary=announced",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "application/json",
    ] {
        let res = c
            .post(app.url("/v1/jobs"))
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        assert!(
            status == 400 || status == 415,
            "{content_type}: {status} {text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert!(
            v["code"].is_string(),
            "{content_type}: no stable code: {text}"
        );
        assert_no_internals(&text, app.dir.path());
    }
    assert!(app.stored_files().is_empty());
    assert_eq!(app.job_rows().await, 0);
}

#[tokio::test]
async fn ten_thousand_form_fields_are_bounded_and_harmless() {
    let app = spawn_app(&[]).await;
    let c = reqwest::Client::new();
    let started = Instant::now();
    let mut form = reqwest::multipart::Form::new();
    for i in 0..10_000 {
        form = form.text(format!("f{i}"), "x");
    }
    form = form.part(
        "file",
        reqwest::multipart::Part::bytes(png_bytes(8, 8)).file_name("a.png"),
    );
    let res = c
        .post(app.url("/v1/jobs"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    // Unknown fields are skipped; the job is created exactly once, quickly.
    assert_eq!(status, 201, "{text}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(app.job_rows().await, 1);
    assert_eq!(app.stored_files().len(), 1);
}

#[tokio::test]
async fn enormous_header_values_are_refused_and_the_server_lives_on() {
    let app = spawn_app(&[]).await;
    let c = reqwest::Client::new();
    let huge = "a".repeat(1024 * 1024);
    let res = c
        .get(app.url("/v1/jobs"))
        .header("x-huge", huge.as_str())
        .send()
        .await;
    match res {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => assert!(e.is_request() || e.is_connect() || e.is_body(), "{e}"),
    }
    // A forged cookie of any size is just no identity.
    let res = c
        .get(app.url("/v1/jobs"))
        .header("cookie", format!("backless_client={}", "f".repeat(8000)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "[]");
    assert_eq!(
        c.get(app.url("/healthz")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn slowloris_uploads_are_cut_off_and_store_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app(&[
        ("BACKLESS_HEADER_TIMEOUT", "500ms"),
        ("BACKLESS_BODY_TIMEOUT", "500ms"),
        ("BACKLESS_BODY_MIN_RATE", "1000"),
    ])
    .await;
    let addr = app
        .url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();

    // A body trickled at 20 bytes per second: 408 within the allowance, nothing kept.
    let png = png_bytes(64, 64);
    let mut body = b"--XyZ\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.png\"\r\ncontent-type: image/png\r\n\r\n".to_vec();
    body.extend_from_slice(&png);
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nhost: {addr}\r\ncontent-type: multipart/form-data; boundary=XyZ\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(head.as_bytes()).await.unwrap();
    let began = Instant::now();
    let trickle = tokio::spawn(async move {
        for b in body {
            if wr.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut out)).await;
    trickle.abort();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"code\":\"request_timeout\""), "{text}");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(app.job_rows().await, 0);
    assert!(app.stored_files().is_empty());

    // A request head trickled a byte at a time: the connection is closed.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let began = Instant::now();
    let mut closed = false;
    for b in "GET /v1/jobs HTTP/1.1\r\nhost: x\r\nx-pad: "
        .bytes()
        .chain(std::iter::repeat_n(b'a', 200))
    {
        if slow.write_all(&[b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        if began.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    if !closed {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(2), slow.read(&mut buf)).await;
        closed = matches!(n, Ok(Ok(0) | Err(_)));
    }
    assert!(closed, "a trickled head kept its connection");

    // Clients that keep up are served as usual.
    let c = browser();
    app.create_job(&c).await;
    assert_eq!(app.job_rows().await, 1);
}

#[tokio::test]
async fn storage_failure_during_upload_is_503_and_leaks_nothing() {
    let app = spawn_app(&[]).await;
    // The objects folder becomes a file: every write fails (even as root).
    let _ = std::fs::remove_dir_all(app.objects_dir());
    std::fs::write(app.objects_dir(), b"not a folder").unwrap();
    let c = browser();
    let part = reqwest::multipart::Part::bytes(png_bytes(8, 8)).file_name("a.png");
    let res = c
        .post(app.url("/v1/jobs"))
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "5");
    let text = res.text().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["code"], "service_unavailable");
    assert_no_internals(&text, app.dir.path());
    assert_eq!(app.job_rows().await, 0);
}

#[tokio::test]
async fn database_unavailable_during_upload_is_503_and_nothing_is_stored() {
    use sea_orm::ConnectionTrait;
    let url = backless_common::testing::postgres_database().await;
    let app = spawn_app(&[("BACKLESS_DATABASE_URL", url.as_str())]).await;
    let alice = browser();
    app.create_job(&alice).await;
    let files_before = app.stored_files();

    // The database goes away under the running app.
    let server = std::env::var("BACKLESS_TEST_POSTGRES_URL").unwrap();
    let name = url.rsplit('/').next().unwrap().to_string();
    let admin = sea_orm::Database::connect(server.as_str()).await.unwrap();
    admin
        .execute_unprepared(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();

    let res = alice
        .post(app.url("/v1/jobs"))
        .multipart(reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(png_bytes(8, 8)).file_name("b.png"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let text = res.text().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["code"], "service_unavailable");
    assert_no_internals(&text, app.dir.path());
    assert!(!text.contains(&name), "{text}");
    assert_eq!(app.stored_files(), files_before, "nothing new was stored");
}

/// A GIF with `n` 4x4 frames.
fn gif_frames(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut out);
        let frames = (0..n).map(|i| {
            image::Frame::new(image::RgbaImage::from_pixel(
                4,
                4,
                image::Rgba([i as u8, 0, 0, 255]),
            ))
        });
        enc.encode_frames(frames).unwrap();
    }
    out
}

#[tokio::test]
async fn animations_over_the_frame_limit_are_422_and_stored_nowhere() {
    let app = spawn_app(&[("BACKLESS_MAX_FRAMES", "3")]).await;
    let c = browser();
    let (status, body) = app.upload(&c, gif_frames(4), "anim.gif").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "too_many_frames");
    assert!(body["message"].as_str().unwrap().contains("limit is 3"));
    assert!(app.stored_files().is_empty());
    let (status, body) = app.upload(&c, gif_frames(3), "anim.gif").await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn a_polyglot_is_stored_and_served_only_as_the_image_it_sniffs_as() {
    let app = spawn_app(&[]).await;
    let c = browser();
    let mut polyglot = gif_frames(1);
    polyglot.extend_from_slice(b"<html><script>alert(document.cookie)</script></html>");
    // The client claims HTML; the bytes say GIF.
    let part = reqwest::multipart::Part::bytes(polyglot)
        .file_name("evil.html")
        .mime_str("text/html")
        .unwrap();
    let res = c
        .post(app.url("/v1/jobs"))
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["job"]["original_content_type"], "image/gif");
    let id = body["job"]["id"].as_str().unwrap();
    let res = c
        .get(app.url(&format!("/v1/jobs/{id}/original")))
        .send()
        .await
        .unwrap();
    let h = res.headers();
    assert_eq!(h["content-type"], "image/gif");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(
        h["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("inline")
    );
    // The stored key is ours, never the client's name.
    for f in app.stored_files() {
        assert!(!f.display().to_string().contains("evil"), "{}", f.display());
    }
}

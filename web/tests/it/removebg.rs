//! The remove.bg-compatible API and API keys: keys (missing, wrong, over quota), the three input
//! kinds, remove.bg's answers and errors, `image_url` refusals, and the job deleted once answered.
//! The job is finished the way a worker finishes it (see `TestApp::finish_job`); the real worker
//! and the real remove.bg clients run in `scripts/test-clients.sh`.

use std::time::Duration;

use backless_common::config::FromSettings;
use base64::Engine;

use crate::helpers::*;

const KEY: &str = "ci-key-0123456789abcdef";
const OTHER: &str = "other-key-0123456789abcdef";

async fn app_with_keys(extra: &[(&str, &str)]) -> TestApp {
    let keys = format!("ci={KEY},other={OTHER}");
    let mut pairs = vec![("BACKLESS_API_KEYS", keys.as_str())];
    pairs.extend_from_slice(extra);
    spawn_app(&pairs).await
}

/// The first job `owner` has, once it is stored.
async fn stored_job(app: &TestApp, owner: &str) -> backless_common::db::Job {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(j) = app
            .shared
            .db
            .list_by_owner(owner)
            .await
            .unwrap()
            .into_iter()
            .next()
        {
            return j;
        }
        assert!(tokio::time::Instant::now() < deadline, "no job was stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Finish the first job `owner` has once it is stored, the way a worker would.
async fn finish_when_stored(app: &TestApp, owner: &str) -> String {
    let id = stored_job(app, owner).await.id;
    app.finish_job(&id).await;
    id
}

/// `GET /v1.0/account` with `key`: (status, body).
async fn account(app: &TestApp, key: &str) -> (u16, serde_json::Value) {
    let res = reqwest::Client::new()
        .get(app.url("/v1.0/account"))
        .header("X-Api-Key", key)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

/// The credits `key` has left today, as `/v1.0/account` reports them.
async fn credits_left(app: &TestApp, key: &str) -> serde_json::Value {
    let (status, body) = account(app, key).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["attributes"]["credits"]["total"].clone()
}

fn file_form(data: Vec<u8>, fields: &[(&str, &str)]) -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new().part(
        "image_file",
        reqwest::multipart::Part::bytes(data).file_name("cat.png"),
    );
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    form
}

async fn error_of(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let body: serde_json::Value = res.json().await.unwrap();
    let code = body["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(body["errors"][0]["title"].is_string(), "{body}");
    (status, code)
}

#[tokio::test]
async fn a_file_is_answered_with_the_image_and_the_job_is_gone() {
    let app = app_with_keys(&[]).await;
    let c = reqwest::Client::new();
    let req = c
        .post(app.url("/v1.0/removebg"))
        .header("X-Api-Key", KEY)
        .multipart(file_form(
            png_bytes(64, 48),
            &[("size", "auto"), ("crop", "false")],
        ))
        .send();
    let (res, id) = tokio::join!(req, finish_when_stored(&app, "key:env:ci"));
    let res = res.unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "image/png");
    assert_eq!(h["x-width"], "8");
    assert_eq!(h["x-height"], "8");
    assert_eq!(h["x-credits-charged"], "1");
    assert!(h.contains_key("x-type"));
    // remove.bg's rate-limit headers, from the key's own bucket.
    let header = |name: &str| h[name].to_str().unwrap().parse::<u64>().unwrap();
    assert_eq!(header("x-ratelimit-limit"), 300);
    assert!(header("x-ratelimit-remaining") < 300);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!((now..now + 61).contains(&header("x-ratelimit-reset")));
    let body = res.bytes().await.unwrap();
    assert_eq!(image::load_from_memory(&body).unwrap().width(), 8);
    // Deleted once answered: record, original and result.
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.shared.db.get(&id).await.unwrap().is_none() && app.stored_files().is_empty()
        })
        .await,
        "the job outlived its answer: {:?}",
        app.stored_files()
    );
}

#[tokio::test]
async fn base64_in_json_with_a_json_answer_and_the_plan_it_ran() {
    let app = app_with_keys(&[]).await;
    let c = reqwest::Client::new();
    let b64 = base64::engine::general_purpose::STANDARD.encode(png_bytes(400, 300));
    let req = c
        .post(app.url("/v1.0/removebg"))
        .header("X-Api-Key", KEY)
        .header("Accept", "application/json")
        .json(&serde_json::json!({
            "image_file_b64": b64,
            "size": "preview",
            "channels": "alpha",
            "crop": true,
            "crop_margin": "10px",
            "type": "product",
        }))
        .send();
    let job = async {
        // The job carries remove.bg's options as a pipeline.
        let j = stored_job(&app, "key:env:ci").await;
        app.finish_job(&j.id).await;
        serde_json::json!(j.options.pipeline().to_strings())
    };
    let (res, pipeline) = tokio::join!(req, job);
    assert_eq!(
        pipeline,
        serde_json::json!([
            "remove_background:model=u2netp,mask_only=true",
            "crop_to_subject:threshold=10,margin=10",
            "thumbnail:pixels=250000",
            "encode:format=png"
        ])
    );
    let res = res.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-width"], "8");
    let body: serde_json::Value = res.json().await.unwrap();
    let png = base64::engine::general_purpose::STANDARD
        .decode(body["data"]["result_b64"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.job_rows().await == 0
        })
        .await
    );
}

#[tokio::test]
async fn a_background_image_is_stored_with_the_job_and_deleted_with_it() {
    let app = app_with_keys(&[]).await;
    let c = reqwest::Client::new();
    let form = file_form(png_bytes(64, 48), &[("scale", "80%"), ("format", "zip")]).part(
        "bg_image_file",
        reqwest::multipart::Part::bytes(png_bytes(30, 20)).file_name("beach.png"),
    );
    let req = c
        .post(app.url("/v1.0/removebg"))
        .header("X-Api-Key", KEY)
        .multipart(form)
        .send();
    let job = async {
        let j = stored_job(&app, "key:env:ci").await;
        // The background is stored with the job, under its own key, before it can run.
        let key = backless_common::storage::background_key(&j.id);
        let stored = app.shared.storage.get(&key).await.unwrap();
        assert_eq!(stored, png_bytes(30, 20));
        app.finish_job(&j.id).await;
        (j.id.clone(), j.options.pipeline().to_strings())
    };
    let (res, (id, pipeline)) = tokio::join!(req, job);
    assert_eq!(
        pipeline,
        [
            "remove_background:model=u2netp",
            "place:scale=80%",
            "backdrop",
            "thumbnail:pixels=250000",
            "encode:format=zip"
        ]
    );
    assert_eq!(res.unwrap().status(), 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.shared.db.get(&id).await.unwrap().is_none() && app.stored_files().is_empty()
        })
        .await,
        "left behind: {:?}",
        app.stored_files()
    );
}

#[tokio::test]
async fn keys_are_required_checked_and_counted() {
    let app = app_with_keys(&[("BACKLESS_API_KEY_QUOTA_PER_DAY", "1")]).await;
    let c = reqwest::Client::new();
    let post = |key: Option<&str>| {
        let mut r = c
            .post(app.url("/v1.0/removebg"))
            .multipart(file_form(png_bytes(32, 32), &[]));
        if let Some(k) = key {
            r = r.header("X-Api-Key", k);
        }
        r.send()
    };
    assert_eq!(
        error_of(post(None).await.unwrap()).await,
        (403, "auth_failed".into())
    );
    assert_eq!(
        error_of(post(Some("wrong-key-0123456789")).await.unwrap()).await,
        (403, "auth_failed".into())
    );
    // The account shows one credit; a job spends it; the next request is 402.
    let (_, a) = account(&app, KEY).await;
    assert_eq!(a["data"]["attributes"]["credits"]["total"], 1.0);
    assert_eq!(a["data"]["attributes"]["api"]["sizes"], "all");
    let (res, _) = tokio::join!(post(Some(KEY)), finish_when_stored(&app, "key:env:ci"));
    assert_eq!(res.unwrap().status(), 200);
    assert_eq!(credits_left(&app, KEY).await, 0.0);
    assert_eq!(
        error_of(post(Some(KEY)).await.unwrap()).await,
        (402, "insufficient_credits".into())
    );
    // Another key has its own quota.
    assert_eq!(credits_left(&app, OTHER).await, 1.0);
    assert_eq!(account(&app, "nope-0123456789abcdef").await.0, 403);
}

#[tokio::test]
async fn a_failed_job_is_an_error_and_costs_nothing() {
    let app = app_with_keys(&[("BACKLESS_API_KEY_QUOTA_PER_DAY", "1")]).await;
    let c = reqwest::Client::new();
    let req = c
        .post(app.url("/v1.0/removebg"))
        .header("X-Api-Key", KEY)
        .multipart(file_form(png_bytes(32, 32), &[]))
        .send();
    let fail = async {
        let j = stored_job(&app, "key:env:ci").await;
        let db = &app.shared.db;
        assert!(db.try_claim(&j.id, Duration::from_secs(60)).await.unwrap());
        assert!(
            db.mark_failed(&j.id, "corrupt_image", "The image is damaged.")
                .await
                .unwrap()
        );
        app.publish(
            &j.id,
            backless_common::events::JobEvent::failed("corrupt_image", "The image is damaged.", 5),
        )
        .await;
    };
    let (res, ()) = tokio::join!(req, fail);
    assert_eq!(
        error_of(res.unwrap()).await,
        (400, "invalid_file_type".into())
    );
    assert_eq!(credits_left(&app, KEY).await, 1.0, "refunded");
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.job_rows().await == 0
        })
        .await
    );
}

#[tokio::test]
async fn bad_requests_get_remove_bg_errors_and_store_nothing() {
    let app = app_with_keys(&[]).await;
    let c = reqwest::Client::new();
    let send = |form: reqwest::multipart::Form| {
        c.post(app.url("/v1.0/removebg"))
            .header("X-Api-Key", KEY)
            .multipart(form)
            .send()
    };
    let cases: Vec<(reqwest::multipart::Form, u16, &str)> = vec![
        (
            reqwest::multipart::Form::new().text("size", "auto"),
            400,
            "missing_source",
        ),
        (
            file_form(
                png_bytes(8, 8),
                &[("image_url", "https://example.com/a.png")],
            ),
            400,
            "multiple_sources",
        ),
        (
            file_form(png_bytes(8, 8), &[("size", "huge")]),
            400,
            "invalid_size",
        ),
        (
            file_form(png_bytes(8, 8), &[("bg_color", "nope")]),
            400,
            "invalid_bg_color",
        ),
        (
            file_form(png_bytes(8, 8), &[("scale", "5%")]),
            400,
            "invalid_scale",
        ),
        (
            file_form(png_bytes(8, 8), &[("roi", "50% 0 10% 100%")]),
            400,
            "invalid_roi",
        ),
        (
            file_form(png_bytes(8, 8), &[]).part(
                "bg_image_file",
                reqwest::multipart::Part::bytes(b"not a picture".to_vec()).file_name("bg.png"),
            ),
            400,
            "invalid_bg_image",
        ),
        (
            file_form(
                png_bytes(8, 8),
                &[
                    ("bg_color", "red"),
                    ("bg_image_url", "https://example.com/b.png"),
                ],
            ),
            400,
            "invalid_parameter",
        ),
        (
            file_form(b"hello, not an image".to_vec(), &[]),
            400,
            "invalid_file_type",
        ),
        (
            file_form(png_claiming(100_000, 100_000), &[]),
            400,
            "resolution_too_high",
        ),
    ];
    for (form, status, code) in cases {
        assert_eq!(
            error_of(send(form).await.unwrap()).await,
            (status, code.to_string())
        );
    }
    let res = c
        .post(app.url("/v1.0/removebg"))
        .header("X-Api-Key", KEY)
        .json(&serde_json::json!({ "image_file_b64": "***not base64***" }))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await, (400, "invalid_image_file_b64".into()));
    assert_eq!(app.job_rows().await, 0);
    assert!(app.stored_files().is_empty());
}

/// A one-route server: `/photo.png` answers a PNG, `/to?u=URL` redirects to URL.
async fn image_server() -> u16 {
    use poem::{EndpointExt, Route, get, handler, web::Query};
    #[handler]
    fn photo() -> poem::Response {
        poem::Response::builder()
            .content_type("image/png")
            .body(png_bytes(40, 30))
    }
    #[derive(serde::Deserialize)]
    struct To {
        u: String,
    }
    #[handler]
    fn to(Query(t): Query<To>) -> poem::Response {
        poem::Response::builder()
            .status(poem::http::StatusCode::FOUND)
            .header("Location", t.u)
            .finish()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let app = Route::new()
        .at("/photo.png", get(photo))
        .at("/to", get(to))
        .boxed();
    tokio::spawn(
        poem::Server::new(poem::listener::TcpListener::bind(format!(
            "127.0.0.1:{port}"
        )))
        .run(app),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    port
}

#[tokio::test]
async fn image_url_reaches_only_public_addresses_or_allowed_hosts() {
    let port = image_server().await;
    // `localhost` is allowed (as a test server would be); 127.0.0.1 and every private range not.
    let app = app_with_keys(&[("BACKLESS_IMAGE_URL_ALLOW_HOSTS", "localhost")]).await;
    let c = reqwest::Client::new();
    let fetch = |url: String| {
        c.post(app.url("/v1.0/removebg"))
            .header("X-Api-Key", KEY)
            .form(&[("image_url", url.as_str()), ("size", "preview")])
            .send()
    };
    for url in [
        format!("http://127.0.0.1:{port}/photo.png"),
        format!("http://[::1]:{port}/photo.png"),
        "http://10.0.0.1/photo.png".to_string(),
        "http://192.168.1.1/photo.png".to_string(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[fd00:ec2::254]/".to_string(),
        // Allowed host, redirecting to a loopback literal: the redirect is checked too.
        format!("http://localhost:{port}/to?u=http://127.0.0.1:{port}/photo.png"),
    ] {
        assert_eq!(
            error_of(fetch(url.clone()).await.unwrap()).await,
            (400, "image_url_forbidden".into()),
            "{url}"
        );
    }
    assert_eq!(
        error_of(fetch("file:///etc/passwd".into()).await.unwrap()).await,
        (400, "failed_to_download".into())
    );
    assert_eq!(app.job_rows().await, 0);

    // A name that resolves to loopback, not on the allow list, is refused after resolution.
    let strict = app_with_keys(&[]).await;
    let res = c
        .post(strict.url("/v1.0/removebg"))
        .header("X-Api-Key", KEY)
        .form(&[("image_url", format!("http://localhost:{port}/photo.png"))])
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await, (400, "image_url_forbidden".into()));

    // From the allowed server, through a redirect on it, the photo is fetched and processed.
    let url = format!("http://localhost:{port}/to?u=/photo.png");
    let (res, _) = tokio::join!(fetch(url), finish_when_stored(&app, "key:env:ci"));
    let res = res.unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
}

#[tokio::test]
async fn a_key_works_on_v1_as_a_bearer_and_sees_only_its_jobs() {
    let app = app_with_keys(&[]).await;
    let c = reqwest::Client::new();
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(png_bytes(16, 16)).file_name("a.png"),
    );
    let res = c
        .post(app.url("/v1/jobs"))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert!(res.headers().get("set-cookie").is_none());
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["token"].is_null(), "no client token for a key: {body}");
    let id = body["job"]["id"].as_str().unwrap();
    let get = |auth: Option<&str>| {
        let mut r = c.get(app.url(&format!("/v1/jobs/{id}")));
        if let Some(a) = auth {
            r = r.bearer_auth(a);
        }
        r.send()
    };
    assert_eq!(get(Some(KEY)).await.unwrap().status(), 200);
    assert_eq!(get(Some(OTHER)).await.unwrap().status(), 404);
    assert_eq!(get(None).await.unwrap().status(), 404);
    let list: serde_json::Value = c
        .get(app.url("/v1/jobs"))
        .header("X-Api-Key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    // A wrong key is refused, not taken for an anonymous upload.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(png_bytes(16, 16)).file_name("a.png"),
    );
    let res = c
        .post(app.url("/v1/jobs"))
        .bearer_auth("bl_not-a-real-key-0000")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
}

/// A key the service does not know is no identity at all: not even the cookie that comes with it
/// reaches the cookie's own job.
#[tokio::test]
async fn an_unknown_key_hides_the_cookie_it_comes_with() {
    let app = app_with_keys(&[]).await;
    let c = browser();
    let (status, body) = app.upload(&c, png_bytes(16, 16), "a.png").await;
    assert_eq!(status, 201, "{body}");
    let url = app.url(&format!("/v1/jobs/{}", body["job"]["id"].as_str().unwrap()));
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    let with_key = |key: &'static str| c.get(&url).header("X-Api-Key", key).send();
    assert_eq!(
        with_key("bl_not-a-real-key-0000").await.unwrap().status(),
        404
    );
    // A valid key is its own identity too: the cookie's job is not its job.
    assert_eq!(with_key(KEY).await.unwrap().status(), 404);
}

#[tokio::test]
async fn keys_made_by_the_command_work_until_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/backless.db?mode=rwc", dir.path().display());
    let config =
        backless_web::WebConfig::from_pairs([("BACKLESS_DATABASE_URL", db.as_str())]).unwrap();
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let out = backless_web::keys::command(
        &config,
        &args(&["create", "--name", "shop", "--quota-per-day", "5"]),
    )
    .await
    .unwrap();
    let key = out.lines().next().unwrap().to_string();
    assert!(key.starts_with("bl_"), "{out}");
    // Only the hash is stored.
    let raw = std::fs::read(dir.path().join("backless.db")).unwrap();
    assert!(!raw.windows(key.len()).any(|w| w == key.as_bytes()));
    let keys = backless_web::keys::Keys::new(
        backless_common::db::Db::connect(&config.common.database)
            .await
            .unwrap(),
        &[],
        None,
    );
    let found = keys.resolve(&key).await.unwrap().unwrap();
    assert_eq!(
        (found.name.as_str(), found.quota_per_day),
        ("shop", Some(5))
    );
    let listed = backless_web::keys::command(&config, &args(&["list"]))
        .await
        .unwrap();
    assert!(listed.contains("shop\t5\t0\t"), "{listed}");
    assert!(
        backless_web::keys::command(&config, &args(&["create", "--name", "shop"]))
            .await
            .is_err()
    );
    backless_web::keys::command(&config, &args(&["revoke", "shop"]))
        .await
        .unwrap();
    let fresh = backless_web::keys::Keys::new(
        backless_common::db::Db::connect(&config.common.database)
            .await
            .unwrap(),
        &[],
        None,
    );
    assert_eq!(fresh.resolve(&key).await.unwrap(), None);
    assert!(
        backless_web::keys::command(&config, &args(&["revoke", "shop"]))
            .await
            .is_err()
    );
}

//! Results by redirect to a signed URL (`BACKLESS_RESULT_DELIVERY=redirect`) with `s3://` storage
//! on a real S3-protocol server (`s3s-fs`, installed by `scripts/test-services.sh`). Run by
//! scripts/test.sh with `--features s3`. Its own test binary: the object_store S3 client reads
//! endpoint and keys from the process's `AWS_*` variables, as in production.

#[allow(dead_code)]
#[path = "it/helpers.rs"]
mod helpers;

use std::time::Duration;

use backless_common::config::FromSettings;
use backless_common::testing::S3Server;
use helpers::{browser, png_bytes, spawn_app};

#[test]
fn result_redirects_to_a_signed_url_that_expires() {
    let server = S3Server::start("backless-results");
    for (k, v) in server.aws_env() {
        // SAFETY: the only test in this binary, before any other thread exists.
        unsafe { std::env::set_var(k, v) };
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let app = spawn_app(&[
            ("BACKLESS_STORAGE_URL", "s3://backless-results/jobs"),
            ("BACKLESS_RESULT_DELIVERY", "redirect"),
            ("BACKLESS_RESULT_URL_TTL", "2s"),
        ])
        .await;
        let (status, created) = app.upload(&browser(), png_bytes(64, 48), "cat.png").await;
        assert_eq!(status, 201, "{created}");
        let id = created["job"]["id"].as_str().unwrap().to_string();
        let token = created["token"].as_str().unwrap().to_string();
        let result_url = app.url(&format!("/v1/jobs/{id}/result"));

        // Not done yet: no redirect, the usual 409.
        let early = reqwest::Client::new()
            .get(&result_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(early.status(), 409);

        app.finish_job(&id).await;
        let stored = app.shared.storage.get_result(&id).await.unwrap();
        // The result is on the S3 server, under the bucket and the URL's prefix.
        let on_disk = server
            .root()
            .join("backless-results/jobs")
            .join(backless_common::storage::result_key(&id));
        assert_eq!(std::fs::read(on_disk).unwrap(), stored.to_vec());

        // Web answers 303 to a signed URL of the object on the store; nothing is cached.
        let no_follow = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let redirect = no_follow
            .get(&result_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(redirect.status(), 303);
        assert_eq!(redirect.headers()["cache-control"], "private, no-store");
        let location = redirect.headers()["location"].to_str().unwrap().to_string();
        assert!(location.starts_with(&server.endpoint()), "{location}");
        assert!(location.contains("X-Amz-Signature="), "{location}");
        assert!(location.contains(&id), "{location}");

        // A client that follows redirects gets the bytes from the store, not through web.
        let followed = reqwest::Client::new()
            .get(&result_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(followed.status(), 200);
        assert!(
            followed.url().as_str().starts_with(&server.endpoint()),
            "served from {}",
            followed.url()
        );
        assert_eq!(followed.bytes().await.unwrap(), stored);

        // Someone else's client gets the same 404 as for a job that does not exist: no URL.
        let stranger = no_follow
            .get(&result_url)
            .bearer_auth(
                created["token"]
                    .as_str()
                    .unwrap()
                    .chars()
                    .rev()
                    .collect::<String>(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(stranger.status(), 404);

        // The URL expires (TTL 2 s): the store refuses it afterwards.
        tokio::time::sleep(Duration::from_millis(3100)).await;
        let expired = reqwest::get(&location).await.unwrap();
        assert_eq!(expired.status(), 403, "an expired URL still works");
        // A fresh request to web signs a fresh URL.
        let again = reqwest::Client::new()
            .get(&result_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 200);

        // Redirect needs a store that can sign: with file:// storage web refuses to start.
        let dir = tempfile::tempdir().unwrap();
        let config = backless_web::WebConfig::from_pairs([
            (
                "BACKLESS_DATABASE_URL".to_string(),
                format!("sqlite://{}/b.db?mode=rwc", dir.path().display()),
            ),
            (
                "BACKLESS_STORAGE_URL".into(),
                format!("file://{}/objects", dir.path().display()),
            ),
            ("BACKLESS_WEB_ADDR".into(), "127.0.0.1:0".into()),
            ("BACKLESS_RESULT_DELIVERY".into(), "redirect".into()),
        ])
        .unwrap();
        let err = backless_web::App::build(config)
            .await
            .err()
            .expect("redirect with file:// storage must not start");
        assert!(err.to_string().contains("cannot sign"), "{err}");
    });
    drop(server);
}

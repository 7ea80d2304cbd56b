//! The push endpoint accepts only the queue: OIDC tokens signed by our emulator (verified against
//! its JWKS) or the shared secret; everything else gets 401 and changes nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use backless_emulator::{EmulatorConfig, OidcKey};

use crate::e2e::{Stack, follow, start_with};

const SA: &str = "pusher@proj.iam.gserviceaccount.com";
const AUD: &str = "https://worker.backless.test";

/// The stack with the emulator signing with `key`.
async fn start(key: OidcKey, extra: &[(&str, &str)]) -> Stack {
    start_with(
        EmulatorConfig {
            key: Some(key),
            ..EmulatorConfig::default()
        },
        extra,
    )
    .await
}

/// Upload the fixture and follow it to the end; returns (job id, stages).
async fn upload_and_follow(client: &reqwest::Client, stack: &Stack) -> (String, Vec<String>) {
    let photo = std::fs::read(crate::fixture("fixtures/photos/astronaut.png")).unwrap();
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(photo).file_name("astronaut.png"),
    );
    let resp = client
        .post(format!("{}/v1/jobs", stack.web))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created: serde_json::Value = resp.json().await.unwrap();
    let id = created["job"]["id"].as_str().unwrap().to_string();
    let token = created["token"].as_str().unwrap();
    let stages = follow(client, &format!("{}/v1/jobs/{id}/events", stack.web), token).await;
    (id, stages)
}

async fn push(
    client: &reqwest::Client,
    stack: &Stack,
    id: &str,
    auth: Option<(&str, &str)>,
) -> u16 {
    let mut req = client
        .post(format!("{}/v1/tasks/remove-background", stack.worker))
        .json(&serde_json::json!({ "job_id": id }));
    if let Some((name, value)) = auth {
        req = req.header(name, value);
    }
    req.send().await.unwrap().status().as_u16()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oidc_tokens_from_the_emulator_are_verified() {
    let key = OidcKey::generate().unwrap();
    let stack = start(
        key.clone(),
        &[
            ("BACKLESS_TASKS_SERVICE_ACCOUNT", SA),
            ("BACKLESS_TASKS_AUDIENCE", AUD),
            ("BACKLESS_PUSH_OIDC_AUDIENCE", AUD),
            ("BACKLESS_PUSH_OIDC_EMAIL", SA),
        ],
    )
    .await;
    let client = reqwest::Client::new();

    // The queue's own pushes carry valid tokens: the job goes through.
    let (id, stages) = upload_and_follow(&client, &stack).await;
    assert_eq!(
        stages.last().map(String::as_str),
        Some("done"),
        "{stages:?}"
    );
    let runs = stack.worker_state.model_runs();

    // Forged pushes are refused, whatever is wrong with them.
    let other_key = OidcKey::generate().unwrap();
    let bearer = |t: String| format!("Bearer {t}");
    let claims = |aud: &str, email: &str, iat: u64, exp: u64| {
        serde_json::json!({
            "aud": aud, "iss": stack.issuer, "email": email, "email_verified": true,
            "sub": "1", "azp": "1", "iat": iat, "exp": exp,
        })
    };
    let url = format!("{}/v1/tasks/remove-background", stack.worker);
    let forged = [
        ("no token", None),
        (
            "signed by another key",
            Some(bearer(other_key.id_token(
                &stack.issuer,
                SA,
                AUD,
                &url,
                SystemTime::now(),
            ))),
        ),
        (
            "wrong audience",
            Some(bearer(key.id_token(
                &stack.issuer,
                SA,
                "https://elsewhere",
                &url,
                SystemTime::now(),
            ))),
        ),
        (
            "wrong issuer",
            Some(bearer(key.id_token(
                "https://evil.test",
                SA,
                AUD,
                &url,
                SystemTime::now(),
            ))),
        ),
        (
            "another service account",
            Some(bearer(key.id_token(
                &stack.issuer,
                "x@y.iam.gserviceaccount.com",
                AUD,
                &url,
                SystemTime::now(),
            ))),
        ),
        (
            "expired",
            Some(bearer(key.sign(&claims(
                AUD,
                SA,
                now() - 7200,
                now() - 3600,
            )))),
        ),
        ("garbage", Some("Bearer not.a.jwt".to_string())),
    ];
    for (what, auth) in forged {
        let status = push(
            &client,
            &stack,
            &id,
            auth.as_deref().map(|a| ("Authorization", a)),
        )
        .await;
        assert_eq!(status, 401, "{what}");
    }
    // A valid token for the finished job: accepted and idempotent.
    let good = bearer(key.id_token(&stack.issuer, SA, AUD, &url, SystemTime::now()));
    assert_eq!(
        push(&client, &stack, &id, Some(("Authorization", &good))).await,
        200
    );
    assert_eq!(stack.worker_state.model_runs(), runs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_secret_where_oidc_is_not_available() {
    let secret = "s3cret-s3cret-s3cret";
    let stack = start(
        OidcKey::generate().unwrap(),
        &[("BACKLESS_PUSH_SECRET", secret)],
    )
    .await;
    let client = reqwest::Client::new();
    let (id, stages) = upload_and_follow(&client, &stack).await;
    assert_eq!(
        stages.last().map(String::as_str),
        Some("done"),
        "{stages:?}"
    );
    assert_eq!(push(&client, &stack, &id, None).await, 401);
    assert_eq!(
        push(
            &client,
            &stack,
            &id,
            Some(("X-BackLess-Push-Secret", "s3cret-guess-s3cret!"))
        )
        .await,
        401
    );
    assert_eq!(
        push(
            &client,
            &stack,
            &id,
            Some(("X-BackLess-Push-Secret", secret))
        )
        .await,
        200
    );
}

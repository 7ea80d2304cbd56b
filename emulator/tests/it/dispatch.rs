//! Dispatch semantics: what the target receives, retries on the service's backoff schedule,
//! deadlines, Retry-After, rate limits, concurrency, pause/RunTask, a target that is down.

use std::time::{Duration, Instant};

use google_cloud_tasks_v2::model::{
    HttpMethod, HttpRequest, OidcToken, Queue, RateLimits, RetryConfig, Task,
};
use serde_json::Value;

use crate::support::*;

const SA: &str = "worker@test-project.iam.gserviceaccount.com";

async fn queue_with(
    c: &google_cloud_tasks_v2::client::CloudTasks,
    id: &str,
    retry: RetryConfig,
    rate: RateLimits,
) {
    c.create_queue()
        .set_parent(PARENT)
        .set_queue(
            Queue::new()
                .set_name(queue_name(id))
                .set_retry_config(retry)
                .set_rate_limits(rate),
        )
        .send()
        .await
        .unwrap();
}

fn backoff(min_ms: u64, max_ms: u64, doublings: i32, attempts: i32) -> RetryConfig {
    RetryConfig::new()
        .set_min_backoff(wkt_duration(Duration::from_millis(min_ms)))
        .set_max_backoff(wkt_duration(Duration::from_millis(max_ms)))
        .set_max_doublings(doublings)
        .set_max_attempts(attempts)
}

async fn push(
    c: &google_cloud_tasks_v2::client::CloudTasks,
    queue: &str,
    req: HttpRequest,
) -> Task {
    c.create_task()
        .set_parent(queue_name(queue))
        .set_task(Task::new().set_http_request(req))
        .send()
        .await
        .unwrap()
}

/// Verifies a token the way a worker would: discovery document -> JWKS -> RS256 check.
async fn verify(issuer: &str, token: &str, audience: &str) -> Value {
    let http = reqwest::Client::new();
    let disco: Value = http
        .get(format!("{issuer}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwks: Value = http
        .get(disco["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"].as_str() == header.kid.as_deref())
        .expect("kid in JWKS");
    let key = jsonwebtoken::DecodingKey::from_rsa_components(
        jwk["n"].as_str().unwrap(),
        jwk["e"].as_str().unwrap(),
    )
    .unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[issuer]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("token verifies")
        .claims
}

#[tokio::test]
async fn dispatch_sends_method_headers_body_and_a_verifiable_oidc_token() {
    let emu = start().await;
    let sink = Sink::start().await;
    let c = client(&emu).await;
    queue_with(&c, "push", RetryConfig::new(), RateLimits::new()).await;
    let url = sink.url("/work/run?job=42");
    let name = format!("{}/tasks/job-42", queue_name("push"));
    let eta = SystemTimeExt::now_plus(Duration::from_millis(300));
    let t = c
        .create_task()
        .set_parent(queue_name("push"))
        .set_task(
            Task::new()
                .set_name(name.clone())
                .set_schedule_time(google_cloud_wkt::Timestamp::try_from(eta).unwrap())
                .set_dispatch_deadline(wkt_duration(Duration::from_secs(300)))
                .set_http_request(
                    HttpRequest::new()
                        .set_url(url.clone())
                        .set_http_method(HttpMethod::Put)
                        .set_headers([
                            ("Content-Type", "application/json"),
                            ("X-Custom", "value"),
                            ("X-Forwarded-For", "1.2.3.4"),
                        ])
                        .set_body(r#"{"job":42}"#)
                        .set_oidc_token(OidcToken::new().set_service_account_email(SA)),
                ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(t.name, name);
    let created = Instant::now();
    let got = sink.wait_for(1, Duration::from_secs(5)).await;
    let r = &got[0];
    assert!(
        r.at.duration_since(created) >= Duration::from_millis(200),
        "dispatched before schedule_time"
    );
    assert_eq!(r.method, "PUT");
    assert_eq!(r.uri, "/work/run?job=42");
    assert_eq!(r.body, br#"{"job":42}"#);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-custom"), Some("value"));
    assert_eq!(r.header("x-forwarded-for"), None);
    assert_eq!(r.header("user-agent"), Some("Google-Cloud-Tasks"));
    assert_eq!(r.header("x-cloudtasks-queuename"), Some("push"));
    assert_eq!(r.header("x-cloudtasks-taskname"), Some("job-42"));
    assert_eq!(r.header("x-cloudtasks-taskretrycount"), Some("0"));
    assert_eq!(r.header("x-cloudtasks-taskexecutioncount"), Some("0"));
    assert_eq!(r.header("x-cloudtasks-taskpreviousresponse"), None);
    let eta_header: f64 = r.header("x-cloudtasks-tasketa").unwrap().parse().unwrap();
    let eta_secs = eta
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (eta_header - eta_secs).abs() < 0.001,
        "{eta_header} vs {eta_secs}"
    );

    let token = r
        .header("authorization")
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap();
    let claims = verify(emu.issuer(), token, &url).await;
    assert_eq!(claims["email"], SA);
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["aud"], url.as_str());
    assert_eq!(claims["sub"], claims["azp"]);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );

    // An explicit audience is used as is.
    push(
        &c,
        "push",
        HttpRequest::new().set_url(sink.url("/aud")).set_oidc_token(
            OidcToken::new()
                .set_service_account_email(SA)
                .set_audience("https://worker.example"),
        ),
    )
    .await;
    let got = sink.wait_for(2, Duration::from_secs(5)).await;
    let token = got[1]
        .header("authorization")
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap();
    verify(emu.issuer(), token, "https://worker.example").await;
    emu.wait_idle().await;
    emu.shutdown().await;
}

struct SystemTimeExt;
impl SystemTimeExt {
    fn now_plus(d: Duration) -> std::time::SystemTime {
        std::time::SystemTime::now() + d
    }
}

#[tokio::test]
async fn retries_follow_the_backoff_schedule_and_report_previous_responses() {
    let emu = start().await;
    let sink = Sink::start().await;
    let c = client(&emu).await;
    // min 200 ms, max 1 s, one doubling: 0.2, 0.4, then linear 0.8, 1.2 -> capped 1.0, 1.0.
    queue_with(&c, "retry", backoff(200, 1000, 1, 100), RateLimits::new()).await;
    sink.script([503, 404, 429, 500, 302].map(Reply::Status));
    push(&c, "retry", HttpRequest::new().set_url(sink.url("/r"))).await;
    let got = sink.wait_for(6, Duration::from_secs(10)).await;
    let expected_gaps = [200, 400, 800, 1000, 1000];
    for (i, want) in expected_gaps.iter().enumerate() {
        let gap = got[i + 1].at.duration_since(got[i].at).as_millis() as u64;
        assert!(
            gap + 15 >= *want && gap <= want + 300,
            "gap {i}: {gap} ms, want {want} ms"
        );
    }
    let col = |h: &str| {
        got.iter()
            .map(|r| r.header(h).unwrap_or("-").to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        col("x-cloudtasks-taskretrycount"),
        ["0", "1", "2", "3", "4", "5"]
    );
    assert_eq!(
        col("x-cloudtasks-taskexecutioncount"),
        ["0", "0", "1", "2", "2", "3"]
    );
    assert_eq!(
        col("x-cloudtasks-taskpreviousresponse"),
        ["-", "503", "404", "429", "500", "302"]
    );
    assert_eq!(
        col("x-cloudtasks-taskretryreason"),
        ["-", "", "", "", "", ""]
    );
    emu.wait_idle().await;
    assert_eq!(emu.engine().task_count(), 0);
    emu.shutdown().await;
}

#[tokio::test]
async fn retries_stop_at_max_attempts_and_task_state_is_recorded() {
    let emu = start().await;
    let sink = Sink::start().await;
    let c = client(&emu).await;
    queue_with(&c, "limited", backoff(100, 100, 16, 3), RateLimits::new()).await;
    sink.script([500, 500, 500, 500].map(Reply::Status));
    let t = push(&c, "limited", HttpRequest::new().set_url(sink.url("/x"))).await;
    sink.wait_for(2, Duration::from_secs(5)).await;
    let mid = c.get_task().set_name(t.name.clone()).send().await;
    if let Ok(mid) = mid {
        assert!(mid.dispatch_count >= 1);
        let last = mid.last_attempt.unwrap();
        assert_eq!(last.response_status.unwrap().code, 13);
    }
    emu.wait_idle().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sink.received().len(),
        3,
        "max_attempts=3 with no retry duration stops after 3"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn retry_after_is_honoured_on_503() {
    let emu = start().await;
    let sink = Sink::start().await;
    let c = client(&emu).await;
    queue_with(&c, "after", backoff(100, 100, 16, 10), RateLimits::new()).await;
    sink.script([Reply::RetryAfter(503, 1)]);
    push(&c, "after", HttpRequest::new().set_url(sink.url("/x"))).await;
    let got = sink.wait_for(2, Duration::from_secs(5)).await;
    let gap = got[1].at.duration_since(got[0].at);
    assert!(
        gap >= Duration::from_millis(990),
        "retried after {gap:?} despite Retry-After: 1"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn rate_limit_and_max_concurrency_are_respected() {
    let emu = start().await;
    let sink = Sink::start().await;
    let c = client(&emu).await;
    // 5/s gives a burst of 10: 10 at once, then one every 200 ms.
    queue_with(
        &c,
        "slow",
        RetryConfig::new(),
        RateLimits::new().set_max_dispatches_per_second(5.0),
    )
    .await;
    c.pause_queue()
        .set_name(queue_name("slow"))
        .send()
        .await
        .unwrap();
    for _ in 0..16 {
        push(&c, "slow", HttpRequest::new().set_url(sink.url("/slow"))).await;
    }
    c.resume_queue()
        .set_name(queue_name("slow"))
        .send()
        .await
        .unwrap();
    let got = sink.wait_for(16, Duration::from_secs(6)).await;
    let t0 = got[0].at;
    for (i, r) in got.iter().enumerate() {
        let earliest = (i as f64 + 1.0 - 10.0).max(0.0) / 5.0;
        let at = r.at.duration_since(t0).as_secs_f64();
        assert!(
            at + 0.03 >= earliest,
            "request {i} at {at:.3}s, rate allows {earliest:.3}s"
        );
    }
    let total = got[15].at.duration_since(t0).as_secs_f64();
    assert!(total < 2.0, "took {total}s");

    // max_concurrent_dispatches = 2 while the target is slow.
    let sink2 = Sink::start().await;
    sink2.set_delay(Duration::from_millis(200));
    queue_with(
        &c,
        "narrow",
        RetryConfig::new(),
        RateLimits::new().set_max_concurrent_dispatches(2),
    )
    .await;
    for _ in 0..6 {
        push(&c, "narrow", HttpRequest::new().set_url(sink2.url("/n"))).await;
    }
    sink2.wait_for(6, Duration::from_secs(5)).await;
    emu.wait_idle().await;
    assert_eq!(sink2.max_concurrent(), 2);
    emu.shutdown().await;
}

#[tokio::test]
async fn paused_queue_holds_tasks_and_run_task_dispatches_anyway() {
    let emu = start().await;
    let sink = Sink::start().await;
    let c = client(&emu).await;
    queue_with(&c, "hold", RetryConfig::new(), RateLimits::new()).await;
    c.pause_queue()
        .set_name(queue_name("hold"))
        .send()
        .await
        .unwrap();
    let a = push(&c, "hold", HttpRequest::new().set_url(sink.url("/a"))).await;
    push(&c, "hold", HttpRequest::new().set_url(sink.url("/b"))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink.received().is_empty(), "paused queue dispatched");
    let ran = c.run_task().set_name(a.name.clone()).send().await.unwrap();
    assert_eq!(ran.dispatch_count, 1);
    let got = sink.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].uri, "/a");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        sink.received().len(),
        1,
        "only the run task left the paused queue"
    );
    c.resume_queue()
        .set_name(queue_name("hold"))
        .send()
        .await
        .unwrap();
    let got = sink.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got[1].uri, "/b");
    emu.shutdown().await;
}

#[tokio::test]
async fn target_down_then_up_is_retried_until_it_succeeds() {
    let emu = start().await;
    let c = client(&emu).await;
    queue_with(&c, "down", backoff(100, 300, 16, 100), RateLimits::new()).await;
    // Reserve a port, free it: nothing listens there for now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = push(
        &c,
        "down",
        HttpRequest::new().set_url(format!("http://127.0.0.1:{port}/up")),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let failed = c.get_task().set_name(t.name.clone()).send().await.unwrap();
    assert!(
        failed.dispatch_count >= 2,
        "retried while down: {}",
        failed.dispatch_count
    );
    assert_eq!(failed.response_count, 0);
    let sink = Sink::on(
        tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap(),
    )
    .await;
    let got = sink.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].header("x-cloudtasks-taskexecutioncount"), Some("0"));
    assert!(
        got[0]
            .header("x-cloudtasks-taskretrycount")
            .unwrap()
            .parse::<u32>()
            .unwrap()
            >= 2
    );
    emu.wait_idle().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn target_hanging_past_the_deadline_is_reported_as_504_and_retried() {
    let emu = start().await;
    let sink = Sink::start().await;
    let c = client(&emu).await;
    queue_with(&c, "hang", backoff(100, 100, 16, 5), RateLimits::new()).await;
    sink.script([Reply::Hang(Duration::from_secs(20))]);
    c.create_task()
        .set_parent(queue_name("hang"))
        .set_task(
            Task::new()
                .set_dispatch_deadline(wkt_duration(Duration::from_secs(15)))
                .set_http_request(HttpRequest::new().set_url(sink.url("/hang"))),
        )
        .send()
        .await
        .unwrap();
    let got = sink.wait_for(2, Duration::from_secs(20)).await;
    let gap = got[1].at.duration_since(got[0].at);
    assert!(
        gap >= Duration::from_secs(15) && gap < Duration::from_secs(17),
        "{gap:?}"
    );
    assert_eq!(
        got[1].header("x-cloudtasks-taskpreviousresponse"),
        Some("504")
    );
    assert_eq!(got[1].header("x-cloudtasks-taskretrycount"), Some("1"));
    assert_eq!(got[1].header("x-cloudtasks-taskexecutioncount"), Some("0"));
    emu.shutdown().await;
}

/// HttpRequest.headers: a task with a body gets `Content-Type: application/octet-stream` unless
/// it names its own (in any letter case); a task without a body gets none. The stored task shows
/// the default, as it shows `User-Agent`.
#[tokio::test]
async fn a_body_without_content_type_is_sent_as_octet_stream() {
    let emu = start().await;
    let sink = Sink::start().await;
    let c = client(&emu).await;
    queue_with(&c, "types", RetryConfig::new(), RateLimits::new()).await;
    let raw = push(
        &c,
        "types",
        HttpRequest::new().set_url(sink.url("/raw")).set_body("raw"),
    )
    .await;
    assert_eq!(
        raw.http_request().unwrap().headers.get("Content-Type"),
        Some(&"application/octet-stream".to_string())
    );
    let own = push(
        &c,
        "types",
        HttpRequest::new()
            .set_url(sink.url("/own"))
            .set_headers([("content-type", "text/plain")])
            .set_body("own"),
    )
    .await;
    let own_headers = &own.http_request().unwrap().headers;
    assert_eq!(own_headers.get("content-type"), Some(&"text/plain".into()));
    assert!(!own_headers.contains_key("Content-Type"), "{own_headers:?}");
    push(&c, "types", HttpRequest::new().set_url(sink.url("/empty"))).await;

    let got = sink.wait_for(3, Duration::from_secs(5)).await;
    let by_uri = |uri: &str| got.iter().find(|r| r.uri == uri).unwrap();
    assert_eq!(
        by_uri("/raw").header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(by_uri("/own").header("content-type"), Some("text/plain"));
    assert_eq!(by_uri("/empty").header("content-type"), None);
    emu.shutdown().await;
}

/// Of the first attempt the service keeps only its dispatch time; the last attempt has all four
/// fields.
#[tokio::test]
async fn the_first_attempt_keeps_only_its_dispatch_time() {
    let emu = start().await;
    let sink = Sink::start().await;
    let c = client(&emu).await;
    queue_with(
        &c,
        "attempts",
        backoff(2000, 2000, 16, 5),
        RateLimits::new(),
    )
    .await;
    sink.script([Reply::Status(500), Reply::Status(200)]);
    let t = push(&c, "attempts", HttpRequest::new().set_url(sink.url("/a"))).await;
    sink.wait_for(1, Duration::from_secs(5)).await;
    // The response is recorded just after the target answered.
    let deadline = Instant::now() + Duration::from_secs(5);
    let task = loop {
        let task = c.get_task().set_name(t.name.clone()).send().await.unwrap();
        if task.last_attempt.is_some() || Instant::now() > deadline {
            break task;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let first = task.first_attempt.expect("first attempt recorded");
    assert!(first.dispatch_time.is_some());
    assert!(first.schedule_time.is_none(), "{first:?}");
    assert!(first.response_time.is_none(), "{first:?}");
    assert!(first.response_status.is_none(), "{first:?}");
    let last = task.last_attempt.expect("last attempt recorded");
    assert!(last.schedule_time.is_some() && last.dispatch_time.is_some());
    assert!(last.response_time.is_some());
    assert_eq!(last.response_status.unwrap().code, 13);
    emu.shutdown().await;
}

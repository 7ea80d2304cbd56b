//! Queue and task RPCs through the official Rust client (REST), and the real service's
//! errors for bad input.

use std::time::{Duration, SystemTime};

use google_cloud_gax::error::rpc::Code;
use google_cloud_tasks_v2::model::{
    HttpMethod, HttpRequest, OidcToken, Queue, RateLimits, RetryConfig, Task, queue, task,
};

use crate::support::*;

fn http_task(url: &str) -> Task {
    Task::new().set_http_request(
        HttpRequest::new()
            .set_url(url)
            .set_http_method(HttpMethod::Post),
    )
}

fn status_of(e: &google_cloud_tasks_v2::Error) -> (Code, String) {
    let s = e.status().unwrap_or_else(|| panic!("no status in {e:?}"));
    (s.code, s.message.clone())
}

#[tokio::test]
async fn queue_lifecycle_through_rust_client() {
    let emu = start().await;
    let c = client(&emu).await;
    let q = c
        .create_queue()
        .set_parent(PARENT)
        .set_queue(Queue::new().set_name(queue_name("life")))
        .send()
        .await
        .unwrap();
    assert_eq!(q.name, queue_name("life"));
    assert_eq!(q.state, queue::State::Running);
    let rl = q.rate_limits.clone().unwrap();
    assert_eq!(
        (
            rl.max_dispatches_per_second,
            rl.max_burst_size,
            rl.max_concurrent_dispatches
        ),
        (500.0, 100, 1000)
    );
    let rc = q.retry_config.clone().unwrap();
    assert_eq!(rc.max_attempts, 100);
    assert_eq!(rc.max_doublings, 16);
    assert_eq!(
        rc.min_backoff.unwrap(),
        wkt_duration(Duration::from_millis(100))
    );
    assert_eq!(
        rc.max_backoff.unwrap(),
        wkt_duration(Duration::from_secs(3600))
    );

    let err = c
        .create_queue()
        .set_parent(PARENT)
        .set_queue(Queue::new().set_name(queue_name("life")))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        status_of(&err),
        (Code::AlreadyExists, "Queue already exists".into())
    );
    assert_eq!(err.http_status_code(), Some(409));

    // UpdateQueue with a mask changes only the masked field; the burst is derived.
    let q = c
        .update_queue()
        .set_queue(
            Queue::new()
                .set_name(queue_name("life"))
                .set_rate_limits(
                    RateLimits::new()
                        .set_max_dispatches_per_second(77.0)
                        .set_max_concurrent_dispatches(3),
                )
                .set_retry_config(RetryConfig::new().set_max_attempts(5)),
        )
        .set_update_mask(
            google_cloud_wkt::FieldMask::default()
                .set_paths(["rate_limits.max_dispatches_per_second"]),
        )
        .send()
        .await
        .unwrap();
    let rl = q.rate_limits.clone().unwrap();
    assert_eq!(
        (
            rl.max_dispatches_per_second,
            rl.max_burst_size,
            rl.max_concurrent_dispatches
        ),
        (77.0, 15, 1000)
    );
    assert_eq!(q.retry_config.unwrap().max_attempts, 100);

    let q = c
        .pause_queue()
        .set_name(queue_name("life"))
        .send()
        .await
        .unwrap();
    assert_eq!(q.state, queue::State::Paused);
    let q = c
        .get_queue()
        .set_name(queue_name("life"))
        .send()
        .await
        .unwrap();
    assert_eq!(q.state, queue::State::Paused);
    let q = c
        .resume_queue()
        .set_name(queue_name("life"))
        .send()
        .await
        .unwrap();
    assert_eq!(q.state, queue::State::Running);

    // ListQueues pages.
    for id in ["page-a", "page-b"] {
        c.create_queue()
            .set_parent(PARENT)
            .set_queue(Queue::new().set_name(queue_name(id)))
            .send()
            .await
            .unwrap();
    }
    let first = c
        .list_queues()
        .set_parent(PARENT)
        .set_page_size(2)
        .send()
        .await
        .unwrap();
    assert_eq!(first.queues.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = c
        .list_queues()
        .set_parent(PARENT)
        .set_page_size(2)
        .set_page_token(first.next_page_token.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(second.queues.len(), 1);
    assert!(second.next_page_token.is_empty());
    let mut all: Vec<String> = first
        .queues
        .iter()
        .chain(&second.queues)
        .map(|q| q.name.clone())
        .collect();
    all.sort();
    assert_eq!(
        all,
        [
            queue_name("life"),
            queue_name("page-a"),
            queue_name("page-b")
        ]
    );

    c.delete_queue()
        .set_name(queue_name("page-a"))
        .send()
        .await
        .unwrap();
    let err = c
        .get_queue()
        .set_name(queue_name("page-a"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(status_of(&err).0, Code::NotFound);
    emu.shutdown().await;
}

#[tokio::test]
async fn tasks_list_get_delete_and_views() {
    let emu = start_with(|c| c.initial_queues = vec![queue_name("held")]).await;
    let c = client(&emu).await;
    c.pause_queue()
        .set_name(queue_name("held"))
        .send()
        .await
        .unwrap();
    let mut names = Vec::new();
    for i in 0..5 {
        let t = c
            .create_task()
            .set_parent(queue_name("held"))
            .set_task(
                http_task("http://127.0.0.1:9/x").set_http_request(
                    HttpRequest::new()
                        .set_url("http://127.0.0.1:9/x")
                        .set_body(format!("body-{i}"))
                        .set_headers([
                            ("Content-Type", "text/plain"),
                            ("Host", "dropped"),
                            ("X-Custom", "kept"),
                        ]),
                ),
            )
            .send()
            .await
            .unwrap();
        // Unnamed tasks get a numeric id; BASIC view hides the body.
        let id = t.name.rsplit('/').next().unwrap();
        assert!(id.chars().all(|c| c.is_ascii_digit()), "{id}");
        assert_eq!(t.view, task::View::Basic);
        let req = t.http_request().unwrap();
        assert!(req.body.is_empty());
        assert_eq!(
            req.headers.get("User-Agent").map(String::as_str),
            Some("Google-Cloud-Tasks")
        );
        assert_eq!(
            req.headers.get("X-Custom").map(String::as_str),
            Some("kept")
        );
        assert!(!req.headers.contains_key("Host"));
        assert_eq!(
            t.dispatch_deadline.unwrap(),
            wkt_duration(Duration::from_secs(600))
        );
        names.push(t.name.clone());
    }
    // Paging with the FULL view.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .list_tasks()
            .set_parent(queue_name("held"))
            .set_page_size(2)
            .set_page_token(token.clone())
            .set_response_view(task::View::Full)
            .send()
            .await
            .unwrap();
        pages += 1;
        assert!(page.tasks.len() <= 2);
        for t in &page.tasks {
            assert_eq!(t.view, task::View::Full);
            assert!(String::from_utf8_lossy(&t.http_request().unwrap().body).starts_with("body-"));
            seen.push(t.name.clone());
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    seen.sort();
    names.sort();
    assert_eq!(seen, names);

    let t = c
        .get_task()
        .set_name(names[0].clone())
        .set_response_view(task::View::Full)
        .send()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&t.http_request().unwrap().body).starts_with("body-"));
    c.delete_task()
        .set_name(names[0].clone())
        .send()
        .await
        .unwrap();
    let err = c
        .get_task()
        .set_name(names[0].clone())
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        status_of(&err),
        (
            Code::NotFound,
            "The task no longer exists, though a task with this name existed recently. The task either successfully completed or was deleted.".into()
        )
    );
    // Purge empties the queue.
    let q = c
        .purge_queue()
        .set_name(queue_name("held"))
        .send()
        .await
        .unwrap();
    assert!(q.purge_time.is_some());
    let page = c
        .list_tasks()
        .set_parent(queue_name("held"))
        .send()
        .await
        .unwrap();
    assert!(page.tasks.is_empty());
    emu.shutdown().await;
}

#[tokio::test]
async fn named_task_dedup_and_tombstones() {
    let emu = start_with(|c| {
        c.initial_queues = vec![queue_name("dedup")];
        c.tombstone_ttl = Duration::from_millis(1500);
    })
    .await;
    let sink = Sink::start().await;
    let c = client(&emu).await;
    let name = format!("{}/tasks/job-0123abcd", queue_name("dedup"));
    c.pause_queue()
        .set_name(queue_name("dedup"))
        .send()
        .await
        .unwrap();
    let create = || {
        c.create_task()
            .set_parent(queue_name("dedup"))
            .set_task(http_task(&sink.url("/work")).set_name(name.clone()))
            .send()
    };
    create().await.unwrap();
    let err = create().await.unwrap_err();
    assert_eq!(
        status_of(&err),
        (
            Code::AlreadyExists,
            "Requested entity already exists".into()
        )
    );
    assert_eq!(err.http_status_code(), Some(409));

    c.resume_queue()
        .set_name(queue_name("dedup"))
        .send()
        .await
        .unwrap();
    sink.wait_for(1, Duration::from_secs(5)).await;
    emu.wait_idle().await;
    let err = create().await.unwrap_err();
    let (code, message) = status_of(&err);
    assert_eq!(code, Code::AlreadyExists);
    assert!(message.contains("existed too recently"), "{message}");
    // The window is configurable: after it the name is free again.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    create().await.unwrap();
    sink.wait_for(2, Duration::from_secs(5)).await;
    emu.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_the_services_errors() {
    let emu = start_with(|c| c.initial_queues = vec![queue_name("bad")]).await;
    let c = client(&emu).await;
    let q = queue_name("bad");
    let create = |t: Task| c.create_task().set_parent(q.clone()).set_task(t).send();

    let err = c
        .create_queue()
        .set_parent(PARENT)
        .set_queue(Queue::new().set_name(queue_name("not_valid")))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        status_of(&err),
        (
            Code::InvalidArgument,
            "Queue ID \"not_valid\" can contain only letters ([A-Za-z]), numbers ([0-9]), or hyphens (-). Queue ID must be between 1 and 100 characters.".into()
        )
    );
    assert_eq!(err.http_status_code(), Some(400));

    let err = create(http_task("http://127.0.0.1:9/").set_name(format!("{q}/tasks/not valid")))
        .await
        .unwrap_err();
    let (code, msg) = status_of(&err);
    assert_eq!(code, Code::InvalidArgument);
    assert!(
        msg.starts_with("Task ID \"not valid\" can contain only letters"),
        "{msg}"
    );

    let err = create(
        http_task("http://127.0.0.1:9/").set_name(format!("{}/tasks/t", queue_name("other"))),
    )
    .await
    .unwrap_err();
    assert_eq!(status_of(&err).0, Code::InvalidArgument);

    let get_with_body = Task::new().set_http_request(
        HttpRequest::new()
            .set_url("http://127.0.0.1:9/")
            .set_http_method(HttpMethod::Get)
            .set_body("x"),
    );
    assert_eq!(
        status_of(&create(get_with_body).await.unwrap_err()),
        (
            Code::InvalidArgument,
            "Body can only be set if the http_method is POST, PUT, or PATCH.".into()
        )
    );

    let far = SystemTime::now() + Duration::from_secs(800 * 3600);
    let err = create(
        http_task("http://127.0.0.1:9/")
            .set_schedule_time(google_cloud_wkt::Timestamp::try_from(far).unwrap()),
    )
    .await
    .unwrap_err();
    let (code, msg) = status_of(&err);
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.starts_with("The Task.scheduleTime, "), "{msg}");
    assert!(
        msg.ends_with(
            "is too far in the future. Schedule time must be no more than 720h in the future."
        ),
        "{msg}"
    );

    let err = create(
        http_task("http://127.0.0.1:9/")
            .set_dispatch_deadline(wkt_duration(Duration::from_secs(5))),
    )
    .await
    .unwrap_err();
    assert_eq!(
        status_of(&err),
        (
            Code::InvalidArgument,
            "Task.dispatchDeadline must be between [15s, 30m].".into()
        )
    );

    let err = create(http_task("ftp://example.com/")).await.unwrap_err();
    assert_eq!(
        status_of(&err),
        (
            Code::InvalidArgument,
            "HttpTarget.url must start with 'http://' or 'https://'.".into()
        )
    );

    let err = create(Task::new()).await.unwrap_err();
    assert_eq!(
        status_of(&err),
        (
            Code::InvalidArgument,
            "Task.payload_type is not set.".into()
        )
    );

    let err = create(
        Task::new().set_http_request(
            HttpRequest::new()
                .set_url("http://127.0.0.1:9/")
                .set_oidc_token(OidcToken::new()),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(
        status_of(&err),
        (
            Code::InvalidArgument,
            "service_account_email must be set.".into()
        )
    );

    let err = c
        .create_task()
        .set_parent(queue_name("missing"))
        .set_task(http_task("http://127.0.0.1:9/"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        status_of(&err),
        (
            Code::NotFound,
            "Queue does not exist. If you just created the queue, wait at least a minute for the queue to initialize.".into()
        )
    );
    assert_eq!(err.http_status_code(), Some(404));

    let err = c
        .create_queue()
        .set_parent(PARENT)
        .set_queue(
            Queue::new()
                .set_name(queue_name("too-fast"))
                .set_rate_limits(RateLimits::new().set_max_dispatches_per_second(501.0)),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        status_of(&err),
        (
            Code::InvalidArgument,
            "RateLimits.maxDispatchesPerSecond must be less than or equal to 500.".into()
        )
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn rest_answers_string_enums_without_alt_and_serves_oidc_discovery() {
    let emu = start_with(|c| c.initial_queues = vec![queue_name("plain")]).await;
    let http = reqwest::Client::new();
    let v: serde_json::Value = http
        .get(format!("{}/v2/{}", emu.url(), queue_name("plain")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], "RUNNING");
    assert_eq!(v["retryConfig"]["minBackoff"], "0.100s");
    let v: serde_json::Value = http
        .get(format!(
            "{}/v2/{}?%24alt=json%3Benum-encoding%3Dint",
            emu.url(),
            queue_name("plain")
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], 1);
    let resp = http
        .get(format!("{}/v2/{}", emu.url(), queue_name("nope")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["status"], "NOT_FOUND");
    assert_eq!(v["error"]["code"], 404);
    let d: serde_json::Value = http
        .get(format!("{}/.well-known/openid-configuration", emu.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["issuer"], emu.issuer());
    assert_eq!(d["issuer"], emu.url());
    emu.shutdown().await;
}

//! `--state`: queued tasks, queues and tombstones survive a restart; in-flight dispatches
//! are put back at shutdown.

use std::time::Duration;

use google_cloud_gax::error::rpc::Code;
use google_cloud_tasks_v2::model::{HttpRequest, Queue, Task};

use crate::support::*;

#[tokio::test]
async fn queued_tasks_and_tombstones_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("tasks.sqlite");
    let sink = Sink::start().await;
    let s = state.clone();
    let emu = start_with(move |c| c.state_path = Some(s)).await;
    let c = client(&emu).await;
    c.create_queue()
        .set_parent(PARENT)
        .set_queue(Queue::new().set_name(queue_name("durable")))
        .send()
        .await
        .unwrap();
    // One task runs now (leaving a tombstone), one waits in the future.
    let done = format!("{}/tasks/done", queue_name("durable"));
    c.create_task()
        .set_parent(queue_name("durable"))
        .set_task(
            Task::new()
                .set_name(done.clone())
                .set_http_request(HttpRequest::new().set_url(sink.url("/done"))),
        )
        .send()
        .await
        .unwrap();
    sink.wait_for(1, Duration::from_secs(5)).await;
    let later = std::time::SystemTime::now() + Duration::from_millis(1500);
    c.create_task()
        .set_parent(queue_name("durable"))
        .set_task(
            Task::new()
                .set_name(format!("{}/tasks/later", queue_name("durable")))
                .set_schedule_time(google_cloud_wkt::Timestamp::try_from(later).unwrap())
                .set_body_less(sink.url("/later")),
        )
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    emu.shutdown().await;

    let s = state.clone();
    let emu = start_with(move |c| c.state_path = Some(s)).await;
    let c = client(&emu).await;
    let q = c
        .get_queue()
        .set_name(queue_name("durable"))
        .send()
        .await
        .unwrap();
    assert_eq!(q.name, queue_name("durable"));
    let got = sink.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got[1].uri, "/later");
    let err = c
        .create_task()
        .set_parent(queue_name("durable"))
        .set_task(
            Task::new()
                .set_name(done)
                .set_http_request(HttpRequest::new().set_url(sink.url("/done"))),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.status().unwrap().code, Code::AlreadyExists);
    emu.shutdown().await;
}

#[tokio::test]
async fn in_flight_dispatch_is_put_back_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("tasks.sqlite");
    let sink = Sink::start().await;
    sink.script([Reply::Hang(Duration::from_secs(30))]);
    let s = state.clone();
    let emu = start_with(move |c| {
        c.state_path = Some(s);
        c.shutdown_grace = Duration::from_millis(200);
        c.initial_queues = vec![queue_name("inflight")];
    })
    .await;
    let c = client(&emu).await;
    c.create_task()
        .set_parent(queue_name("inflight"))
        .set_task(Task::new().set_http_request(HttpRequest::new().set_url(sink.url("/slow"))))
        .send()
        .await
        .unwrap();
    sink.wait_for(1, Duration::from_secs(5)).await;
    emu.shutdown().await;

    let s = state.clone();
    let emu = start_with(move |c| c.state_path = Some(s)).await;
    let got = sink.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got[1].uri, "/slow");
    // The abandoned attempt was not counted.
    assert_eq!(got[1].header("x-cloudtasks-taskretrycount"), Some("0"));
    emu.wait_idle().await;
    emu.shutdown().await;
}

trait BodyLess {
    fn set_body_less(self, url: String) -> Self;
}

impl BodyLess for Task {
    fn set_body_less(self, url: String) -> Self {
        self.set_http_request(HttpRequest::new().set_url(url))
    }
}

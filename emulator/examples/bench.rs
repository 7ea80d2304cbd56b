//! Benchmark client: against a running emulator (ours or a peer), enqueue N HTTP tasks to a
//! local sink through one transport, measuring CreateTask latency, then resume the queue and
//! measure sustained dispatch throughput. Prints one JSON line. Driven by
//! `scripts/bench-emulator.sh`.
//!
//! `cargo run --release -p backless-emulator --example bench -- ENDPOINT rest|grpc N LABEL`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use googleapis_tonic_google_cloud_tasks_v2::google::cloud::tasks::v2 as pb;
use pb::cloud_tasks_client::CloudTasksClient;

const PARENT: &str = "projects/bench/locations/local";

enum Client {
    Rest(google_cloud_tasks_v2::client::CloudTasks),
    Grpc(CloudTasksClient<tonic::transport::Channel>),
}

impl Client {
    async fn create_queue(&mut self, name: &str) {
        match self {
            Client::Rest(c) => {
                use google_cloud_tasks_v2::model::{Queue, RateLimits};
                c.create_queue()
                    .set_parent(PARENT)
                    .set_queue(
                        Queue::new().set_name(name).set_rate_limits(
                            RateLimits::new()
                                .set_max_dispatches_per_second(500.0)
                                .set_max_concurrent_dispatches(5000),
                        ),
                    )
                    .send()
                    .await
                    .expect("create queue");
            }
            Client::Grpc(c) => {
                c.create_queue(pb::CreateQueueRequest {
                    parent: PARENT.into(),
                    queue: Some(pb::Queue {
                        name: name.into(),
                        rate_limits: Some(pb::RateLimits {
                            max_dispatches_per_second: 500.0,
                            max_concurrent_dispatches: 5000,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                })
                .await
                .expect("create queue");
            }
        }
    }

    async fn pause(&mut self, name: &str, pause: bool) {
        match self {
            Client::Rest(c) => {
                if pause {
                    c.pause_queue().set_name(name).send().await.expect("pause");
                } else {
                    c.resume_queue()
                        .set_name(name)
                        .send()
                        .await
                        .expect("resume");
                }
            }
            Client::Grpc(c) => {
                if pause {
                    c.pause_queue(pb::PauseQueueRequest { name: name.into() })
                        .await
                        .expect("pause");
                } else {
                    c.resume_queue(pb::ResumeQueueRequest { name: name.into() })
                        .await
                        .expect("resume");
                }
            }
        }
    }

    async fn create_task(&mut self, queue: &str, url: &str) {
        match self {
            Client::Rest(c) => {
                use google_cloud_tasks_v2::model::{HttpRequest, Task};
                c.create_task()
                    .set_parent(queue)
                    .set_task(
                        Task::new()
                            .set_http_request(HttpRequest::new().set_url(url).set_body("{}")),
                    )
                    .send()
                    .await
                    .expect("create task");
            }
            Client::Grpc(c) => {
                c.create_task(pb::CreateTaskRequest {
                    parent: queue.into(),
                    task: Some(pb::Task {
                        message_type: Some(pb::task::MessageType::HttpRequest(pb::HttpRequest {
                            url: url.into(),
                            http_method: pb::HttpMethod::Post as i32,
                            body: b"{}".to_vec(),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }),
                    response_view: 0,
                })
                .await
                .expect("create task");
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let endpoint = args.get(1).expect("ENDPOINT").clone();
    let transport = args.get(2).expect("rest|grpc").clone();
    let n: usize = args.get(3).map_or(10_000, |s| s.parse().expect("N"));
    let label = args.get(4).cloned().unwrap_or_else(|| "emulator".into());

    // The sink: answers 200 at once and counts.
    let received = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind sink");
    let sink = format!("http://{}/sink", listener.local_addr().expect("addr"));
    let counter = Arc::clone(&received);
    let app = axum::Router::new().fallback(move || {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::Relaxed);
            "ok"
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut client = match transport.as_str() {
        "rest" => Client::Rest(
            google_cloud_tasks_v2::client::CloudTasks::builder()
                .with_endpoint(endpoint.clone())
                .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
                .build()
                .await
                .expect("rest client"),
        ),
        "grpc" => {
            let channel = tonic::transport::Channel::from_shared(endpoint.clone())
                .expect("endpoint")
                .connect()
                .await
                .expect("grpc connect");
            Client::Grpc(CloudTasksClient::new(channel))
        }
        other => panic!("unknown transport {other}"),
    };
    let queue = format!("{PARENT}/queues/bench-{transport}-{}", std::process::id());
    client.create_queue(&queue).await;
    client.pause(&queue, true).await;

    let mut latencies = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        client.create_task(&queue, &sink).await;
        latencies.push(t.elapsed());
    }
    let enqueue_secs = started.elapsed().as_secs_f64();
    latencies.sort();

    let before = received.load(Ordering::Relaxed);
    let resumed = Instant::now();
    client.pause(&queue, false).await;
    let deadline = resumed + Duration::from_secs(300);
    while received.load(Ordering::Relaxed) < before + n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let dispatched = received.load(Ordering::Relaxed) - before;
    let dispatch_secs = resumed.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "label": label,
            "transport": transport,
            "n": n,
            "create_p50_ms": percentile(&latencies, 0.50),
            "create_p99_ms": percentile(&latencies, 0.99),
            "create_per_s": n as f64 / enqueue_secs,
            "dispatched": dispatched,
            "dispatch_per_s": dispatched as f64 / dispatch_secs,
        })
    );
}

//! The production topology on one machine: two web replicas and one worker, sharing a real
//! PostgreSQL, a real Redis (started and restarted by the test) and the Cloud Tasks emulator.
//! Progress of a job uploaded through one replica reaches a watcher on the other; a Redis restart
//! mid-stream loses nothing that matters; the last watcher across replicas decides deletion.

use std::time::{Duration, Instant};

use backless_common::config::FromSettings;
use backless_common::events::{Events, RedisEvents, RedisOptions};
use backless_emulator::{Emulator, EmulatorConfig};
use futures::StreamExt;

use crate::e2e::{files_left, follow};
use backless_common::testing::{RedisServer, postgres_database};

struct Topology {
    web_a: String,
    web_b: String,
    dir: tempfile::TempDir,
    redis: RedisServer,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn start() -> Topology {
    assert!(crate::weights_present("u2netp"));
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let emulator = Emulator::start(listener, EmulatorConfig::default())
        .await
        .unwrap();
    let pairs: Vec<(String, String)> = [
        ("BACKLESS_DATABASE_URL", postgres_database().await),
        (
            "BACKLESS_STORAGE_URL",
            format!("file://{}/objects", dir.path().display()),
        ),
        ("BACKLESS_REDIS_URL", redis.url()),
        ("BACKLESS_TASKS_ENDPOINT", emulator.url()),
        ("BACKLESS_GRACE", "1s".into()),
        (
            "BACKLESS_MODELS_DIR",
            crate::models_dir().display().to_string(),
        ),
        ("BACKLESS_WORKER_ADDR", "127.0.0.1:0".into()),
        ("BACKLESS_WEB_ADDR", "127.0.0.1:0".into()),
        ("BACKLESS_SSE_KEEP_ALIVE", "200ms".into()),
        ("BACKLESS_SSE_POLL", "500ms".into()),
        // Replicas must agree on client tokens.
        ("BACKLESS_COOKIE_SECRET", "k".repeat(32)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();

    // Nothing is shared in memory: each service opens its own database pool and Redis clients.
    let worker = backless_worker::server::App::build_with(
        backless_worker::config::WorkerConfig::from_pairs(pairs.clone()).unwrap(),
        backless_worker::server::Components::default(),
    )
    .await
    .unwrap();
    let mut web_pairs = pairs;
    web_pairs.push((
        "BACKLESS_WORKER_URL".into(),
        format!("http://{}", worker.addr()),
    ));
    let mut webs = Vec::new();
    for _ in 0..2 {
        webs.push(
            backless_web::App::build_with(
                backless_web::WebConfig::from_pairs(web_pairs.clone()).unwrap(),
                backless_web::Components::default(),
            )
            .await
            .unwrap(),
        );
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let urls: Vec<String> = webs
        .iter()
        .map(|w| format!("http://{}", w.addr()))
        .collect();
    tokio::spawn(worker.run_until_stopped(stopped(rx.clone())));
    for web in webs {
        tokio::spawn(web.run_until_stopped(stopped(rx.clone())));
    }
    tokio::spawn(async move {
        stopped(rx).await;
        emulator.shutdown().await;
    });
    Topology {
        web_a: urls[0].clone(),
        web_b: urls[1].clone(),
        dir,
        redis,
        _stop: tx,
    }
}

/// Upload the fixture photo through `web`; returns (job id, client token).
async fn upload(client: &reqwest::Client, web: &str) -> (String, String) {
    let photo = std::fs::read(crate::fixture("fixtures/photos/astronaut.png")).unwrap();
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(photo).file_name("astronaut.png"),
    );
    let resp = client
        .post(format!("{web}/v1/jobs"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let created: serde_json::Value = resp.json().await.unwrap();
    (
        created["job"]["id"].as_str().unwrap().to_string(),
        created["token"].as_str().unwrap().to_string(),
    )
}

async fn status(client: &reqwest::Client, web: &str, id: &str, token: &str) -> u16 {
    client
        .get(format!("{web}/v1/jobs/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_web_replicas_one_worker_postgres_and_redis() {
    let mut top = start().await;
    let client = reqwest::Client::new();

    // 1. Uploaded through B, watched on A: the worker's stages arrive through Redis.
    let (id, token) = upload(&client, &top.web_b).await;
    let stages = follow(
        &client,
        &format!("{}/v1/jobs/{id}/events", top.web_a),
        &token,
    )
    .await;
    assert_eq!(
        stages.last().map(String::as_str),
        Some("done"),
        "{stages:?}"
    );
    // `stored` exists only as a live event (the database knows queued, processing, done), and
    // the worker publishes it well after the watcher connected.
    assert!(
        stages.iter().any(|s| s == "stored"),
        "worker stages not relayed: {stages:?}"
    );

    // 2. Redis restarted while a watcher on A follows a job uploaded through B: the stream still
    //    ends with `done` (from the database if the event itself was lost).
    let (id2, token2) = upload(&client, &top.web_b).await;
    let resp = client
        .get(format!("{}/v1/jobs/{id2}/events", top.web_a))
        .bearer_auth(&token2)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    // Wait for the first event (the stored state), then pull Redis out from under everyone.
    let first = tokio::time::timeout(Duration::from_secs(30), body.next())
        .await
        .expect("first event")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event:"));
    top.redis.restart();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline.into(), body.next()).await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(
        text.contains("event: done") || text.contains("event:done"),
        "{text}"
    );

    // 3. After the restart the relay is subscribed again: live worker stages reach A once more.
    let (id3, token3) = upload(&client, &top.web_b).await;
    let stages = follow(
        &client,
        &format!("{}/v1/jobs/{id3}/events", top.web_a),
        &token3,
    )
    .await;
    assert!(
        stages.iter().any(|s| s == "stored") && stages.last().map(String::as_str) == Some("done"),
        "no live stages after the Redis restart: {stages:?}"
    );

    // 4. Deletion waits for the last watcher on any replica. A third process on the same Redis
    //    announces a watcher of job 4 exactly as a replica does; A's watcher leaves after `done`,
    //    and the job outlives the grace window because of the watcher elsewhere.
    let other = RedisEvents::connect(&top.redis.url(), RedisOptions::default())
        .await
        .unwrap();
    let (id4, token4) = upload(&client, &top.web_a).await;
    other.set_watched(&id4, true);
    let stages = follow(
        &client,
        &format!("{}/v1/jobs/{id4}/events", top.web_a),
        &token4,
    )
    .await;
    assert_eq!(stages.last().map(String::as_str), Some("done"));
    tokio::time::sleep(Duration::from_secs(4)).await; // grace is 1 s
    assert_eq!(
        status(&client, &top.web_a, &id4, &token4).await,
        200,
        "deleted while another replica still had a watcher"
    );
    // That watcher leaves; the next watcher to leave (here a late one on B) deletes it.
    other.set_watched(&id4, false);
    let late = follow(
        &client,
        &format!("{}/v1/jobs/{id4}/events", top.web_b),
        &token4,
    )
    .await;
    assert_eq!(late.last().map(String::as_str), Some("done"));

    // Every job is gone from the shared database and storage once its watchers left.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let jobs = [
            (&id, &token),
            (&id2, &token2),
            (&id3, &token3),
            (&id4, &token4),
        ];
        let mut left = 0;
        for (j, t) in jobs {
            if status(&client, &top.web_b, j, t).await != 404 {
                left += 1;
            }
        }
        if left == 0 && files_left(top.dir.path()).await == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} jobs not deleted after their watchers left"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

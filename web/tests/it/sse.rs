use std::time::Duration;

use backless_common::events::{JobEvent, Stage};

use crate::helpers::*;

#[tokio::test]
async fn events_send_current_state_first_then_live_stages_and_end_after_done() {
    let app = spawn_app(&[("BACKLESS_GRACE", "60s")]).await;
    let c = browser();
    let id = app.create_job(&c).await;

    let res = c
        .get(app.url(&format!("/v1/jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut sse = SseReader::new(res);
    let first = sse.next().await.unwrap();
    assert_eq!(first.event, "queued");
    assert_eq!(first.id, "2");
    assert_eq!(first.data["stage"], "queued");
    // Wait until the stream is registered as a watcher, then drive the job as a worker would.
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.shared.watchers(&id) == 1
        })
        .await
    );
    app.finish_job(&id).await;
    let mut stages = Vec::new();
    while let Some(ev) = sse.next().await {
        stages.push(ev.event.clone());
        assert_eq!(ev.data["stage"], ev.event);
        assert_eq!(ev.id, ev.data["seq"].to_string());
    }
    assert_eq!(
        stages,
        ["received", "segmenting", "compositing", "stored", "done"],
        "the stream ends after done"
    );

    // A client arriving after completion still gets `done`, and the stream ends.
    let res = c
        .get(app.url(&format!("/v1/jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(res);
    let ev = sse.next().await.unwrap();
    assert_eq!(ev.event, "done");
    assert!(sse.next().await.is_none());

    // Last-Event-ID: a reconnect that already saw `done` gets nothing more.
    let res = c
        .get(app.url(&format!("/v1/jobs/{id}/events")))
        .header("Last-Event-ID", "41")
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(res);
    assert!(sse.next().await.is_none());
}

#[tokio::test]
async fn last_event_id_skips_stages_already_seen_and_failures_end_the_stream() {
    let app = spawn_app(&[("BACKLESS_GRACE", "60s")]).await;
    let c = browser();
    let id = app.create_job(&c).await;
    assert!(
        app.shared
            .db
            .try_claim(&id, Duration::from_secs(60))
            .await
            .unwrap()
    );

    // Already saw up to `segmenting` (10): the stored state (processing = received, 3) is skipped.
    let res = c
        .get(app.url(&format!("/v1/jobs/{id}/events")))
        .header("Last-Event-ID", "10")
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(res);
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.shared.watchers(&id) == 1
        })
        .await
    );
    app.publish(&id, JobEvent::new(Stage::Segmenting, 5)).await;
    app.publish(&id, JobEvent::new(Stage::Compositing, 6)).await;
    let ev = sse.next().await.unwrap();
    assert_eq!(ev.event, "compositing");
    assert!(
        app.shared
            .db
            .mark_failed(&id, "decode_failed", "The image could not be decoded.")
            .await
            .unwrap()
    );
    app.publish(
        &id,
        JobEvent::failed("decode_failed", "The image could not be decoded.", 7),
    )
    .await;
    let ev = sse.next().await.unwrap();
    assert_eq!(ev.event, "failed");
    assert_eq!(ev.data["error_code"], "decode_failed");
    assert!(sse.next().await.is_none());
}

#[tokio::test]
async fn events_arrive_from_the_record_when_no_event_is_published() {
    // A worker in another process without a shared bus: polling the record still moves the stream.
    let app = spawn_app(&[("BACKLESS_GRACE", "60s")]).await;
    let c = browser();
    let id = app.create_job(&c).await;
    let res = c
        .get(app.url(&format!("/v1/jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(res);
    assert_eq!(sse.next().await.unwrap().event, "queued");
    let db = &app.shared.db;
    assert!(db.try_claim(&id, Duration::from_secs(60)).await.unwrap());
    assert_eq!(sse.next().await.unwrap().event, "received");
    app.shared
        .storage
        .put_result(&id, png_bytes(4, 4).into())
        .await
        .unwrap();
    assert!(
        db.mark_done(&id, &backless_common::storage::result_key(&id), "image/png")
            .await
            .unwrap()
    );
    assert_eq!(sse.next().await.unwrap().event, "done");
    assert!(sse.next().await.is_none());
}

/// `backless_web_db_queries_total` by kind, as `/metrics` renders it.
fn queries(app: &TestApp) -> std::collections::BTreeMap<String, u64> {
    app.shared
        .metrics
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("backless_web_db_queries_total{kind=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(kind, n)| (kind.to_string(), n.trim().parse().unwrap()))
        .collect()
}

fn total(q: &std::collections::BTreeMap<String, u64>) -> u64 {
    q.values().sum()
}

#[tokio::test]
async fn open_streams_cost_one_query_per_interval_and_held_finished_ones_none() {
    // The outbox and sweeper run once at start and then stay quiet, so every query counted below
    // is the streams'.
    let app = spawn_app(&[
        ("BACKLESS_GRACE", "60s"),
        ("BACKLESS_OUTBOX_INTERVAL", "1h"),
        ("BACKLESS_SWEEP_INTERVAL", "1h"),
    ])
    .await;
    let c = browser();

    // 20 held streams of a finished job for 10 s: each read the job once when it opened, and
    // nothing after.
    let done = app.create_job(&c).await;
    app.finish_job(&done).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        let res = c
            .get(app.url(&format!("/v1/jobs/{done}/events?hold=true")))
            .send()
            .await
            .unwrap();
        let mut sse = SseReader::new(res);
        assert_eq!(sse.next().await.unwrap().event, "done");
        held.push(sse);
    }
    assert_eq!(app.shared.watchers(&done), 20);
    let before = queries(&app);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(app.shared.watchers(&done), 20, "the streams are still open");
    assert_eq!(
        queries(&app),
        before,
        "held streams of a finished job make no queries"
    );
    assert_eq!(app.shared.watcher.watched(), 0);

    // 20 streams of an unfinished job (another client: the first holds its 20 streams): one
    // batched read per interval (200 ms) for all of them, not one per stream.
    let c = browser();
    let queued = app.create_job(&c).await;
    let mut open = Vec::new();
    for _ in 0..20 {
        let res = c
            .get(app.url(&format!("/v1/jobs/{queued}/events")))
            .send()
            .await
            .unwrap();
        let mut sse = SseReader::new(res);
        assert_eq!(sse.next().await.unwrap().event, "queued");
        open.push(sse);
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.shared.watcher.watched() == 1
        })
        .await
    );
    // Let the outbox's one try at this job's task (woken by the failed enqueue) pass.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = queries(&app);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = queries(&app);
    let batched =
        after.get("get_many").copied().unwrap_or(0) - before.get("get_many").copied().unwrap_or(0);
    assert!(
        (3..=12).contains(&batched),
        "one read per 200 ms interval over 2 s, whatever the number of streams: {batched}"
    );
    assert_eq!(
        total(&after) - total(&before),
        batched,
        "nothing else is read while the streams wait: {before:?} -> {after:?}"
    );

    // The record alone (no event published) moves every stream to its end.
    let db = &app.shared.db;
    assert!(
        db.try_claim(&queued, Duration::from_secs(60))
            .await
            .unwrap()
    );
    let key = backless_common::storage::result_key(&queued);
    app.shared
        .storage
        .put_result(&queued, png_bytes(4, 4).into())
        .await
        .unwrap();
    assert!(db.mark_done(&queued, &key, "image/png").await.unwrap());
    for sse in &mut open {
        let mut last = String::new();
        while let Some(ev) = sse.next().await {
            last = ev.event;
        }
        assert_eq!(last, "done");
    }
    // Nobody subscribes any more: the watcher reads nothing.
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.shared.watcher.watched() == 0
        })
        .await
    );
    let rendered = app.shared.metrics.render();
    assert!(rendered.contains("backless_web_db_queries_total{kind=\"get_many\"}"));
}

#[tokio::test]
async fn a_stream_ends_at_its_maximum_lifetime_and_a_reconnect_misses_nothing() {
    let app = spawn_app(&[
        ("BACKLESS_GRACE", "60s"),
        ("BACKLESS_SSE_MAX_LIFETIME", "1s"),
    ])
    .await;
    let c = browser();
    let id = app.create_job(&c).await;
    let url = app.url(&format!("/v1/jobs/{id}/events?hold=true"));
    let began = std::time::Instant::now();
    let mut sse = SseReader::new(c.get(&url).send().await.unwrap());
    let first = sse.next().await.unwrap();
    assert_eq!(first.event, "queued");
    assert!(
        sse.next().await.is_none(),
        "the stream ends at its lifetime"
    );
    assert!(began.elapsed() >= Duration::from_millis(900));
    // The job finished while the client was away; the reconnect gets the rest.
    app.finish_job(&id).await;
    let res = c
        .get(&url)
        .header("Last-Event-ID", first.id.as_str())
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(res);
    assert_eq!(sse.next().await.unwrap().event, "done");
}

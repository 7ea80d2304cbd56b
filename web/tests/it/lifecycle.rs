use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn finished_job_is_deleted_a_grace_window_after_its_last_watcher_leaves() {
    let app = spawn_app(&[("BACKLESS_GRACE", "700ms")]).await;
    let c = browser();
    let id = app.create_job(&c).await;
    let res = c
        .get(app.url(&format!("/v1/jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(res);
    assert_eq!(sse.next().await.unwrap().event, "queued");
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.shared.watchers(&id) == 1
        })
        .await
    );
    app.finish_job(&id).await;
    while sse.next().await.is_some() {}
    // Within the grace window the result can still be fetched.
    let res = c
        .get(app.url(&format!("/v1/jobs/{id}/result")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(app.stored_files().len(), 2);
    // Then everything is gone.
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.job_rows().await == 0 && app.stored_files().is_empty()
        })
        .await,
        "files {:?}",
        app.stored_files()
    );
    let res = c
        .get(app.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn a_watcher_returning_within_the_grace_window_restarts_it() {
    let app = spawn_app(&[("BACKLESS_GRACE", "1s")]).await;
    let c = browser();
    let id = app.create_job(&c).await;
    app.finish_job(&id).await;
    let watch_once = || async {
        let res = c
            .get(app.url(&format!("/v1/jobs/{id}/events")))
            .send()
            .await
            .unwrap();
        let mut sse = SseReader::new(res);
        assert_eq!(sse.next().await.unwrap().event, "done");
        assert!(sse.next().await.is_none());
    };
    watch_once().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    watch_once().await; // back within the grace window
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The first window has passed, but the second watcher restarted it.
    assert_eq!(app.job_rows().await, 1);
    let res = c
        .get(app.url(&format!("/v1/jobs/{id}/result")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.job_rows().await == 0 && app.stored_files().is_empty()
        })
        .await
    );
}

#[tokio::test]
async fn client_leaving_before_the_job_finishes_means_deletion_when_it_finishes() {
    let app = spawn_app(&[("BACKLESS_GRACE", "300ms")]).await;
    let c = browser();
    let id = app.create_job(&c).await;
    {
        let _sse = app.watch(&c, &id, "", "queued").await;
    } // the client goes away
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.shared.watchers(&id) == 0
        })
        .await,
        "the server notices the closed connection"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        app.job_rows().await,
        1,
        "not deleted while the job is unfinished"
    );
    app.finish_job(&id).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.job_rows().await == 0 && app.stored_files().is_empty()
        })
        .await
    );
}

#[tokio::test]
async fn jobs_never_watched_are_swept_after_the_ttl() {
    let app = spawn_app(&[
        ("BACKLESS_UNWATCHED_TTL", "2s"),
        ("BACKLESS_SWEEP_INTERVAL", "100ms"),
    ])
    .await;
    let c = browser();
    let started = std::time::Instant::now();
    let id = app.create_job(&c).await;
    if started.elapsed() < Duration::from_millis(1500) {
        assert_eq!(app.stored_files().len(), 1, "not swept before the TTL");
        assert_eq!(app.job_rows().await, 1);
    }
    let swept = eventually(Duration::from_secs(10), || async {
        app.job_rows().await == 0 && app.stored_files().is_empty()
    })
    .await;
    assert!(
        swept,
        "rows {} files {:?}",
        app.job_rows().await,
        app.stored_files()
    );
    let res = c
        .get(app.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn failed_enqueue_leaves_the_job_queued_for_the_outbox() {
    // The tasks endpoint is a closed port: creating the task fails.
    let app = spawn_app(&[]).await;
    let c = browser();
    let id = app.create_job(&c).await;
    let res = c
        .get(app.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap();
    let job: serde_json::Value = res.json().await.unwrap();
    assert_eq!(job["state"], "queued");
    let row = app.shared.db.get(&id).await.unwrap().unwrap();
    assert!(!row.enqueued);
    // The outbox keeps retrying and keeps failing without losing the job.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.shared.run_outbox_once().await, 0);
    let pending = app.shared.db.pending_enqueue(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, id);
}

#[tokio::test]
async fn a_held_stream_keeps_a_finished_job_until_the_client_leaves() {
    let app = spawn_app(&[("BACKLESS_GRACE", "300ms")]).await;
    let c = browser();
    let id = app.create_job(&c).await;
    {
        let mut sse = app.watch(&c, &id, "?hold=true", "queued").await;
        app.finish_job(&id).await;
        let mut last = String::new();
        while last != "done" {
            last = sse.next().await.unwrap().event;
        }
        // The stream stays open after `done` (keep-alives only), so the grace window does not
        // start: the job outlives it several times over.
        let more = tokio::time::timeout(Duration::from_millis(1200), sse.next()).await;
        assert!(more.is_err(), "the held stream ended or sent {more:?}");
        assert_eq!(app.shared.watchers(&id), 1);
        assert_eq!(app.job_rows().await, 1);
        assert_eq!(app.stored_files().len(), 2);
    } // the page is closed
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.job_rows().await == 0 && app.stored_files().is_empty()
        })
        .await,
        "deleted a grace window after the held stream closed"
    );
}

#[tokio::test]
async fn a_held_stream_reconnecting_after_the_end_gets_nothing_and_stays_open() {
    let app = spawn_app(&[("BACKLESS_GRACE", "60s")]).await;
    let c = browser();
    let id = app.create_job(&c).await;
    app.finish_job(&id).await;
    // EventSource reconnecting with the last id it saw (7 = done).
    let res = c
        .get(app.url(&format!("/v1/jobs/{id}/events?hold=true")))
        .header("Last-Event-ID", "41")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut sse = SseReader::new(res);
    let more = tokio::time::timeout(Duration::from_millis(800), sse.next()).await;
    assert!(more.is_err(), "expected an open, silent stream: {more:?}");
    assert_eq!(app.shared.watchers(&id), 1);
    // Without hold the same request ends at once, as before.
    let res = c
        .get(app.url(&format!("/v1/jobs/{id}/events")))
        .header("Last-Event-ID", "41")
        .send()
        .await
        .unwrap();
    assert!(SseReader::new(res).next().await.is_none());
}

#[tokio::test]
async fn a_job_another_replica_deleted_is_forgotten_here() {
    let app = spawn_app(&[("BACKLESS_GRACE", "300ms")]).await;
    let c = browser();
    let id = app.create_job(&c).await;
    {
        let _sse = app.watch(&c, &id, "", "queued").await;
    }
    // The client left before the job finished: a reaper waits for it here. Another replica
    // deletes the job (files and record) without any event reaching this one.
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.shared.watchers(&id) == 0
        })
        .await
    );
    assert_eq!(app.shared.tracked_jobs(), 1);
    app.shared.storage.delete_job(&id).await.unwrap();
    assert!(app.shared.db.delete(&id).await.unwrap());
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.shared.tracked_jobs() == 0 && app.shared.watcher.watched() == 0
        })
        .await,
        "the watch entry and the state subscription are gone"
    );
}

#[tokio::test]
async fn an_upload_whose_original_cannot_be_stored_leaves_no_row_and_no_object() {
    let dir = tempfile::tempdir().unwrap();
    let store = faulty_store(dir.path());
    store.fail_puts("originals/", 1);
    let app = spawn_app_on(&[], Some((dir, store.clone()))).await;
    let c = browser();
    let (status, body) = app.upload(&c, png_bytes(64, 48), "cat.png").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(store.faults_left(), 0);
    assert_eq!(app.job_rows().await, 0, "the row written first is gone");
    assert!(app.stored_files().is_empty());
    // The next upload is unaffected.
    let id = app.create_job(&c).await;
    assert_eq!(app.stored_files().len(), 1);
    let job: serde_json::Value = c
        .get(app.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["state"], "queued");
}

#[tokio::test]
async fn a_delete_that_cannot_remove_the_files_keeps_the_row_until_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let store = faulty_store(dir.path());
    let app = spawn_app_on(&[], Some((dir, store.clone()))).await;
    let c = browser();
    let id = app.create_job(&c).await;
    store.fail_deletes(1);
    let url = app.url(&format!("/v1/jobs/{id}"));
    assert_eq!(c.delete(&url).send().await.unwrap().status(), 503);
    // The row is deleted last, so the job (and its files) can still be found and deleted.
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(app.stored_files().len(), 1);
    assert_eq!(c.delete(&url).send().await.unwrap().status(), 204);
    assert_eq!(app.job_rows().await, 0);
    assert!(app.stored_files().is_empty());
}

#[tokio::test]
async fn a_crash_between_row_and_original_leaves_a_row_the_sweep_deletes() {
    let app = spawn_app(&[
        ("BACKLESS_UNWATCHED_TTL", "1s"),
        ("BACKLESS_SWEEP_INTERVAL", "1h"),
        ("BACKLESS_OUTBOX_INTERVAL", "100ms"),
    ])
    .await;
    let c = browser();
    let id = app.create_job(&c).await;
    let owner = app.shared.db.get(&id).await.unwrap().unwrap().owner;
    // What an upload that died after writing its row leaves: a row, no original.
    let crashed = backless_common::db::new_job_id();
    app.shared
        .db
        .insert(backless_common::db::NewJob {
            id: crashed.clone(),
            owner,
            name: "crashed".into(),
            options: Default::default(),
            original_content_type: "image/png".into(),
            width: 64,
            height: 48,
            client_addr: None,
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let row = app.shared.db.get(&crashed).await.unwrap().unwrap();
    assert!(
        !row.enqueued,
        "the outbox never enqueues a job without its original"
    );
    let listed: serde_json::Value = c
        .get(app.url("/v1/jobs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [id.as_str()], "the owner never sees it");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.shared.sweep_once().await, 2);
    assert_eq!(app.job_rows().await, 0);
    assert!(app.stored_files().is_empty());
}

#[tokio::test]
async fn the_sweep_pages_past_watched_jobs() {
    let app = spawn_app(&[
        ("BACKLESS_UNWATCHED_TTL", "0s"),
        ("BACKLESS_SWEEP_INTERVAL", "1h"),
    ])
    .await;
    // 500 old jobs everyone watches (a page's worth), then one nobody does.
    let mut guards = Vec::new();
    for i in 0..501 {
        let id = backless_common::db::new_job_id();
        app.shared
            .db
            .insert(backless_common::db::NewJob {
                id: id.clone(),
                owner: "someone".into(),
                name: format!("job {i}"),
                options: Default::default(),
                original_content_type: "image/png".into(),
                width: 1,
                height: 1,
                client_addr: None,
            })
            .await
            .unwrap();
        if i < 500 {
            guards.push(app.shared.watch(&id));
        }
    }
    assert_eq!(
        app.shared.sweep_once().await,
        1,
        "the unwatched job behind them"
    );
    assert_eq!(app.job_rows().await, 500);
    drop(guards);
}

#[tokio::test]
async fn objects_without_a_row_are_swept_once_older_than_the_grace() {
    let app = spawn_app(&[("BACKLESS_ORPHAN_SWEEP_INTERVAL", "1h")]).await;
    let c = browser();
    let id = app.create_job(&c).await;
    let orphan = backless_common::db::new_job_id();
    app.shared
        .storage
        .put_result(&orphan, png_bytes(4, 4).into())
        .await
        .unwrap();
    // A background image left by a remove.bg request is an orphan too.
    let lone_background = backless_common::db::new_job_id();
    let key = backless_common::storage::background_key(&lone_background);
    app.shared
        .storage
        .put(&key, png_bytes(4, 4).into())
        .await
        .unwrap();
    assert_eq!(app.stored_files().len(), 3);
    assert_eq!(
        app.shared
            .sweep_orphans_once(Duration::from_secs(3600))
            .await,
        0,
        "too young to be an orphan"
    );
    assert_eq!(
        app.shared.sweep_orphans_once(Duration::ZERO).await,
        2,
        "only the objects without a row"
    );
    let left = app.stored_files();
    assert_eq!(left.len(), 1);
    assert!(left[0].ends_with(&id));
}

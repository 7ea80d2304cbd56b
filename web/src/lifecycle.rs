//! Job lifetime: who is watching, when files are deleted, the outbox and the sweeper.
//!
//! - Each SSE connection holds a [`WatchGuard`]. When a job's last watcher leaves, a reaper waits
//!   until the job is final (if it is not yet), then the grace window, and deletes original, result
//!   and record unless someone started watching again meanwhile.
//! - Jobs never watched (or left behind by a restart) are swept once older than the TTL.
//! - The outbox creates the Cloud Tasks task for jobs whose enqueue failed at upload.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backless_common::db::Db;
use backless_common::events::{Events, JobEvent, Stage};
use backless_common::storage::Storage;
use backless_common::tasks::TaskQueue;
use futures::StreamExt;
use tokio::sync::Notify;
use tracing::Instrument;

use crate::error::WebError;
use crate::watcher::{StateWatcher, elapsed_ms};

#[derive(Debug, Default)]
struct Watch {
    count: usize,
    generation: u64,
}

/// Everything the request handlers and background loops share.
#[derive(Debug)]
pub struct Shared {
    pub db: Db,
    pub storage: Storage,
    pub events: Arc<dyn Events>,
    pub tasks: Arc<TaskQueue>,
    pub grace: Duration,
    pub unwatched_ttl: Duration,
    /// How often the state watcher re-reads the watched jobs (covers events lost between
    /// processes).
    pub poll: Duration,
    watchers: Mutex<HashMap<String, Watch>>,
    generations: AtomicU64,
    /// Reads every watched, unfinished job in one query per `poll`.
    pub watcher: Arc<StateWatcher>,
    pub outbox_wake: Notify,
    pub metrics: crate::metrics::Metrics,
}

impl Shared {
    pub fn new(
        db: Db,
        storage: Storage,
        events: Arc<dyn Events>,
        tasks: Arc<TaskQueue>,
        grace: Duration,
        unwatched_ttl: Duration,
        poll: Duration,
    ) -> Self {
        let metrics = crate::metrics::Metrics::new();
        let queries = metrics.db_queries.clone();
        let db = db.observed(Arc::new(move |kind| {
            queries.with_label_values(&[kind]).inc()
        }));
        let watcher = Arc::new(StateWatcher::new(db.clone(), poll));
        Self {
            db,
            storage,
            events,
            tasks,
            grace,
            unwatched_ttl,
            poll,
            watchers: Mutex::default(),
            generations: AtomicU64::new(0),
            watcher,
            outbox_wake: Notify::new(),
            metrics,
        }
    }

    /// Start watching a job; drop the guard when the connection ends.
    pub fn watch(self: &Arc<Self>, job_id: &str) -> WatchGuard {
        let mut w = self.watchers.lock().expect("watchers lock");
        let watch = w.entry(job_id.to_string()).or_default();
        watch.count += 1;
        // Process-wide, so a forgotten and re-created entry never repeats a generation an older
        // reaper still waits with.
        watch.generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        self.metrics.sse_connections.inc();
        if watch.count == 1 {
            self.events.set_watched(job_id, true);
        }
        WatchGuard {
            shared: Arc::clone(self),
            job_id: job_id.to_string(),
        }
    }

    /// Current watcher count (tests, diagnostics).
    pub fn watchers(&self, job_id: &str) -> usize {
        self.watchers
            .lock()
            .expect("watchers lock")
            .get(job_id)
            .map_or(0, |w| w.count)
    }

    /// Jobs this replica keeps watch state for (diagnostics; an entry outlives its last watcher
    /// only until its reaper ends).
    pub fn tracked_jobs(&self) -> usize {
        self.watchers.lock().expect("watchers lock").len()
    }

    fn generation(&self, job_id: &str) -> Option<u64> {
        let w = self.watchers.lock().expect("watchers lock");
        w.get(job_id).filter(|w| w.count == 0).map(|w| w.generation)
    }

    /// Delete a job's files and record now (`reason` labels the metric: api, grace, sweep). Live
    /// watchers are told it is gone.
    #[tracing::instrument(skip_all, fields(job_id))]
    pub async fn delete_job(&self, job_id: &str, reason: &str) -> Result<bool, WebError> {
        self.storage.delete_job(job_id).await?;
        let existed = self.db.delete(job_id).await?;
        self.watchers
            .lock()
            .expect("watchers lock")
            .retain(|k, w| k != job_id || w.count > 0);
        if existed {
            tracing::info!(reason, "job deleted");
            self.metrics.deletions.with_label_values(&[reason]).inc();
            let _ = self
                .events
                .publish(
                    job_id,
                    JobEvent::failed("deleted", "The photo was deleted.", 0),
                )
                .await;
        }
        Ok(existed)
    }

    /// Undo an upload that failed after its row was written: objects first, then the row, each
    /// best effort (what is left, the sweeps delete).
    pub async fn forget_upload(&self, job_id: &str) {
        if let Err(e) = self.storage.delete_job(job_id).await {
            tracing::warn!(error = %e, "cannot delete a failed upload's objects; the orphan sweep will");
        }
        if let Err(e) = self.db.delete(job_id).await {
            tracing::warn!(error = %e, "cannot delete a failed upload's row; the sweep will");
        }
    }

    /// After the last watcher left: wait for the job to finish, then the grace window, then delete
    /// unless someone is watching again. Whatever happens, the job's entry in the watcher map is
    /// forgotten if nobody watches it by then.
    async fn reap_when_finished(self: Arc<Self>, job_id: String, generation: u64) {
        self.reap(&job_id, generation).await;
        let mut w = self.watchers.lock().expect("watchers lock");
        if w.get(&job_id)
            .is_some_and(|w| w.count == 0 && w.generation == generation)
        {
            w.remove(&job_id);
        }
    }

    async fn reap(self: &Arc<Self>, job_id: &str, generation: u64) {
        let still_unwatched = |s: &Self| s.generation(job_id) == Some(generation);
        let live = match self.events.subscribe(job_id).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe; reading the record only");
                futures::stream::pending().boxed()
            }
        };
        // Subscribed before the read, so an end between the two is not missed.
        let mut changes = futures::stream::select(live, self.watcher.state_changes(job_id));
        match self.db.get(job_id).await {
            Ok(Some(job)) if job.state.is_final() => {}
            Ok(None) => return,
            Ok(Some(_)) | Err(_) => loop {
                if !still_unwatched(self) {
                    return;
                }
                match tokio::time::timeout(self.poll, changes.next()).await {
                    Ok(Some(ev)) if ev.stage.is_final() => break,
                    Ok(None) => return,
                    _ => {}
                }
            },
        }
        drop(changes);
        tokio::time::sleep(self.grace).await;
        if !still_unwatched(self) || self.watched_elsewhere(job_id).await {
            return;
        }
        if let Err(e) = self.delete_job(job_id, "grace").await {
            tracing::warn!(error = %e, "reaper could not delete job");
        }
    }

    /// Whether another replica has watchers of the job. If that cannot be known (Redis down),
    /// assume it has: the sweeper removes the job after the TTL instead.
    async fn watched_elsewhere(&self, job_id: &str) -> bool {
        self.events
            .watched_elsewhere(job_id)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot check other replicas' watchers; keeping the job");
                true
            })
    }

    /// Create tasks for queued jobs whose enqueue failed. Stops at the first failure (the queue is
    /// probably down; the next round retries). Returns how many were enqueued.
    pub async fn run_outbox_once(&self) -> usize {
        let pending = match self.db.pending_enqueue(100).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "outbox cannot read jobs");
                return 0;
            }
        };
        if pending.is_empty() {
            return 0;
        }
        if self.tasks.config().ensure_queue
            && let Err(e) = self.tasks.ensure_queue().await
        {
            tracing::warn!(error = %e, "outbox cannot ensure the queue");
            return 0;
        }
        let mut done = 0;
        for job in pending {
            match self.enqueue(&job.id, job.created_at).await {
                Ok(()) => done += 1,
                Err(e) => {
                    tracing::warn!(job_id = %job.id, error = %e, "outbox enqueue failed; will retry");
                    break;
                }
            }
        }
        done
    }

    /// The second half of an upload, once its row is written and its quotas passed: store the
    /// original and record it, announce the job and enqueue it (the outbox retries a failed
    /// enqueue). If the original cannot be stored, the upload is forgotten (row and objects) and
    /// the error returned.
    pub async fn store_and_enqueue(
        &self,
        job: &mut backless_common::db::Job,
        data: bytes::Bytes,
        background: Option<bytes::Bytes>,
    ) -> Result<(), WebError> {
        let size = data.len() as u64;
        let stored = async {
            // The background first: once the original is marked stored, the outbox may queue
            // the job.
            if let Some(bg) = background {
                let key = backless_common::storage::background_key(&job.id);
                self.storage.put(&key, bg).await?;
            }
            self.storage.put_original(&job.id, data).await?;
            if !self.db.mark_stored(&job.id, size).await? {
                // Deleted meanwhile (it was never listed): what was just stored goes too.
                return Err(WebError::NotFound);
            }
            Ok(())
        };
        if let Err(e) = stored.await {
            self.forget_upload(&job.id).await;
            return Err(e);
        }
        job.original_bytes = i64::try_from(size).ok();
        tracing::info!(width = job.width, height = job.height, "job created");
        self.metrics.jobs_created.inc();
        let _ = self
            .events
            .publish(&job.id, JobEvent::new(Stage::Uploaded, 0))
            .await;
        match self.enqueue(&job.id, job.created_at).await {
            Ok(()) => job.enqueued = true,
            Err(e) => {
                tracing::warn!(error = %e, "enqueue failed; the outbox will retry");
                self.outbox_wake.notify_one();
            }
        }
        Ok(())
    }

    /// Create the job's task and record that it exists.
    pub async fn enqueue(
        &self,
        job_id: &str,
        created_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), backless_common::tasks::TasksError> {
        if let Err(e) = self.tasks.enqueue_job(job_id).await {
            self.metrics.enqueue_errors.inc();
            return Err(e);
        }
        if let Err(e) = self.db.mark_enqueued(job_id).await {
            // The task exists; the outbox will retry and get AlreadyExists, which is fine.
            tracing::warn!(error = %e, "cannot mark job enqueued");
        }
        let _ = self
            .events
            .publish(job_id, JobEvent::new(Stage::Queued, elapsed_ms(created_at)))
            .await;
        Ok(())
    }

    /// Delete unwatched jobs older than the TTL, paging through all of them (watched ones are
    /// passed over, never in the way of the rest). Returns how many were deleted.
    pub async fn sweep_once(&self) -> usize {
        const PAGE: u64 = 500;
        let ttl = chrono::Duration::from_std(self.unwatched_ttl).unwrap_or(chrono::Duration::MAX);
        let cutoff = chrono::Utc::now() - ttl;
        let mut after = None;
        let mut n = 0;
        loop {
            let page = match self.db.created_before(cutoff, after.as_ref(), PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "sweeper cannot read jobs");
                    return n;
                }
            };
            for job in &page {
                if self.watchers(&job.id) > 0 || self.watched_elsewhere(&job.id).await {
                    continue;
                }
                match self.delete_job(&job.id, "sweep").await {
                    Ok(true) => n += 1,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(job_id = %job.id, error = %e, "sweep delete failed"),
                }
            }
            if (page.len() as u64) < PAGE {
                return n;
            }
            after = page.last().cloned();
        }
    }

    /// Delete stored objects, older than `grace`, whose job has no row (left by a crash between
    /// steps, or by a worker that stored a result for a job deleted meanwhile). Returns how many
    /// jobs' objects were deleted.
    pub async fn sweep_orphans_once(&self, grace: Duration) -> usize {
        let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        let before = chrono::Utc::now() - grace;
        let ids = match self.storage.job_ids_written_before(before).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "orphan sweep cannot list storage");
                return 0;
            }
        };
        let mut n = 0;
        for batch in ids.chunks(500) {
            let rows: std::collections::HashSet<String> = match self.db.get_many(batch).await {
                Ok(jobs) => jobs.into_iter().map(|j| j.id).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "orphan sweep cannot read jobs");
                    return n;
                }
            };
            for id in batch.iter().filter(|id| !rows.contains(*id)) {
                match self.storage.delete_job(id).await {
                    Ok(()) => {
                        tracing::info!(job_id = %id, "orphaned objects deleted");
                        self.metrics.deletions.with_label_values(&["orphan"]).inc();
                        n += 1;
                    }
                    Err(e) => tracing::warn!(job_id = %id, error = %e, "orphan delete failed"),
                }
            }
        }
        n
    }
}

/// Held by each SSE connection.
#[derive(Debug)]
pub struct WatchGuard {
    shared: Arc<Shared>,
    job_id: String,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.shared.metrics.sse_connections.dec();
        let generation = {
            let mut w = self.shared.watchers.lock().expect("watchers lock");
            let Some(watch) = w.get_mut(&self.job_id) else {
                return;
            };
            watch.count = watch.count.saturating_sub(1);
            if watch.count > 0 {
                return;
            }
            watch.generation
        };
        self.shared.events.set_watched(&self.job_id, false);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let shared = Arc::clone(&self.shared);
            let job_id = self.job_id.clone();
            let span = tracing::info_span!("reaper", job_id = %job_id);
            handle.spawn(
                shared
                    .reap_when_finished(job_id, generation)
                    .instrument(span),
            );
        }
    }
}

/// How often the background loops run.
#[derive(Debug, Clone, Copy)]
pub struct LoopTimes {
    pub outbox: Duration,
    pub sweep: Duration,
    pub orphan_sweep: Duration,
    /// Objects younger than this are never orphans.
    pub orphan_grace: Duration,
}

/// The outbox, sweeper and orphan-sweeper loops (separate tasks, so a slow queue never delays a
/// sweep), until `stop` fires.
pub async fn background_loops(
    shared: Arc<Shared>,
    times: LoopTimes,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let (outbox_every, sweep_every) = (times.outbox, times.sweep);
    let outbox = {
        let shared = Arc::clone(&shared);
        let mut stop = stop.clone();
        tokio::spawn(
            async move {
                let mut tick = tokio::time::interval(outbox_every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tick.tick() => {}
                        _ = shared.outbox_wake.notified() => {}
                    }
                    shared.run_outbox_once().await;
                }
            }
            .instrument(tracing::info_span!("outbox")),
        )
    };
    let orphans = {
        let shared = Arc::clone(&shared);
        let mut stop = stop.clone();
        tokio::spawn(
            async move {
                let mut tick = tokio::time::interval(times.orphan_sweep);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tick.tick() => {}
                    }
                    shared.sweep_orphans_once(times.orphan_grace).await;
                }
            }
            .instrument(tracing::info_span!("orphan-sweeper")),
        )
    };
    let sweeper = {
        let mut stop = stop;
        tokio::spawn(
            async move {
                let mut tick = tokio::time::interval(sweep_every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tick.tick() => {}
                    }
                    shared.sweep_once().await;
                }
            }
            .instrument(tracing::info_span!("sweeper")),
        )
    };
    let _ = tokio::join!(outbox, sweeper, orphans);
}

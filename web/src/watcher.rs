//! One reader of job records for the whole process.
//!
//! Events normally arrive on the event bus; the record is read as well because an event can be lost
//! between processes (a worker without Redis, a bus outage). Instead of every open stream reading
//! its own job every interval, streams and reapers subscribe here, and one loop reads all the
//! watched jobs in one query per interval and tells each subscriber its job's state. A job nobody
//! subscribes to costs nothing: a stream of a finished job never subscribes, and the loop stops
//! when the last subscriber leaves (the next subscriber starts it again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use backless_common::db::{Db, Job};
use backless_common::events::{JobEvent, Stage};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::broadcast;
use tracing::Instrument;

/// Jobs read per query.
const BATCH: usize = 500;

#[derive(Debug, Default)]
struct Inner {
    jobs: HashMap<String, broadcast::Sender<JobEvent>>,
    running: bool,
}

/// The subscriptions, whether the loop runs, and what it reads with.
#[derive(Debug)]
pub struct StateWatcher {
    inner: Mutex<Inner>,
    db: Db,
    /// How often the loop reads the watched jobs.
    poll: Duration,
}

impl StateWatcher {
    pub fn new(db: Db, poll: Duration) -> Self {
        Self {
            inner: Mutex::default(),
            db,
            poll,
        }
    }

    /// Jobs with at least one subscriber (tests, diagnostics).
    pub fn watched(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .jobs
            .values()
            .filter(|tx| tx.receiver_count() > 0)
            .count()
    }

    /// The watched job ids, forgetting those nobody subscribes to any more; `None` (and the loop
    /// marked stopped) when there are none.
    fn take_round(&self) -> Option<Vec<String>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.jobs.retain(|_, tx| tx.receiver_count() > 0);
        if inner.jobs.is_empty() {
            inner.running = false;
            return None;
        }
        Some(inner.jobs.keys().cloned().collect())
    }

    fn tell(&self, id: &str, ev: JobEvent) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = inner.jobs.get(id) {
            let _ = tx.send(ev);
        }
    }
}

impl StateWatcher {
    /// The job's stored state, as an event, once per interval from now on (the first after one
    /// interval); a job that no longer exists is told as `failed` with code `deleted`. Dropping the
    /// stream unsubscribes.
    pub fn state_changes(self: &Arc<Self>, job_id: &str) -> BoxStream<'static, JobEvent> {
        let rx = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let rx = inner
                .jobs
                .entry(job_id.to_string())
                .or_insert_with(|| broadcast::channel(4).0)
                .subscribe();
            if !inner.running {
                inner.running = true;
                let watcher = Arc::clone(self);
                tokio::spawn(run(watcher).instrument(tracing::info_span!("state-watcher")));
            }
            rx
        };
        futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => return Some((ev, rx)),
                    // Only the latest state matters; a slow reader skips to it.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }
}

/// Every interval, read every watched job in batches and tell its subscribers; stop when nobody
/// subscribes.
async fn run(watcher: Arc<StateWatcher>) {
    loop {
        tokio::time::sleep(watcher.poll).await;
        let Some(ids) = watcher.take_round() else {
            return;
        };
        for batch in ids.chunks(BATCH) {
            let jobs: HashMap<String, Job> = match watcher.db.get_many(batch).await {
                Ok(jobs) => jobs.into_iter().map(|j| (j.id.clone(), j)).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read watched jobs");
                    continue;
                }
            };
            for id in batch {
                let ev = match jobs.get(id) {
                    Some(job) => state_event(job),
                    None => JobEvent::failed("deleted", "The photo was deleted.", 0),
                };
                watcher.tell(id, ev);
            }
        }
    }
}

/// What a watcher is told of a stored job: its state as an event.
pub fn state_event(job: &backless_common::db::Job) -> JobEvent {
    use backless_common::db::JobState;
    let elapsed = match job.finished_at {
        Some(f) => u64::try_from((f - job.created_at).num_milliseconds()).unwrap_or(0),
        None => elapsed_ms(job.created_at),
    };
    match job.state {
        JobState::Failed => JobEvent::failed(
            job.error_code.clone().unwrap_or_else(|| "failed".into()),
            job.error_message
                .clone()
                .unwrap_or_else(|| "Processing failed.".into()),
            elapsed,
        ),
        s => JobEvent::new(Stage::from(s), elapsed),
    }
}

/// Milliseconds since `t`.
pub fn elapsed_ms(t: chrono::DateTime<chrono::Utc>) -> u64 {
    u64::try_from((chrono::Utc::now() - t).num_milliseconds()).unwrap_or(0)
}

//! Job progress events: the worker publishes, web fans them out to every SSE connection.
//!
//! [`InProcessEvents`] (a tokio broadcast channel per job) is the embedded default: web and an
//! embedded worker share one `Arc<dyn Events>`. Across processes [`RedisEvents`] relays through
//! Redis pub/sub and also keeps track of which processes have watchers (presence), so that with
//! several web replicas the last watcher anywhere decides when a job's files are deleted.
//!
//! An event's `seq` is its stage's position in the pipeline, so it is the same whichever process
//! publishes it and a re-delivered task re-emits the same ids: SSE `Last-Event-ID` works without
//! shared counters, and a consumer drops anything not newer than what it already sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use crate::config::EventsConfig;

mod redis;
pub use redis::{RedisEvents, RedisOptions};

pub use crate::job::{OPS_SEQ, Stage};

/// One progress event, as JSON on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    /// `stage.seq()`: monotone within a job, the SSE `id:`.
    pub seq: u64,
    pub stage: Stage,
    /// Milliseconds since the job was created.
    pub elapsed_ms: u64,
    /// Human-readable detail, safe to show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Stable machine-readable code when `stage` is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

impl JobEvent {
    pub fn new(stage: Stage, elapsed_ms: u64) -> Self {
        Self {
            seq: stage.seq(),
            stage,
            elapsed_ms,
            message: None,
            error_code: None,
        }
    }

    /// A stage of the job's operation number `index` (0-based): ids stay increasing whatever
    /// the operations are, and a redelivered task re-emits the same ids.
    pub fn operation(stage: Stage, index: usize, elapsed_ms: u64) -> Self {
        let seq = stage.seq() + 2 * index as u64;
        debug_assert!(seq < Stage::Stored.seq(), "more operations than event ids");
        Self {
            seq,
            ..Self::new(stage, elapsed_ms)
        }
    }

    pub fn failed(code: impl Into<String>, message: impl Into<String>, elapsed_ms: u64) -> Self {
        Self {
            error_code: Some(code.into()),
            message: Some(message.into()),
            ..Self::new(Stage::Failed, elapsed_ms)
        }
    }

    #[must_use]
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
}

/// A job's live events, from subscription on.
pub type JobEventStream = BoxStream<'static, JobEvent>;

/// Event bus failures.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("event backend {0} is not available in this build")]
    Unsupported(&'static str),
    #[error("event backend error: {0}")]
    Backend(String),
}

/// Publish / subscribe per job.
#[async_trait::async_trait]
pub trait Events: Send + Sync + std::fmt::Debug + 'static {
    /// Deliver `event` to every current subscriber of `job_id` (none is fine).
    async fn publish(&self, job_id: &str, event: JobEvent) -> Result<(), EventsError>;

    /// Events published for `job_id` from now on. Subscribe *before* reading the job's stored
    /// state so nothing falls between the two.
    async fn subscribe(&self, job_id: &str) -> Result<JobEventStream, EventsError>;

    /// Announce that this process now has (or no longer has) live watchers of `job_id`. A
    /// single-process bus has nobody to tell.
    fn set_watched(&self, _job_id: &str, _watched: bool) {}

    /// Whether another process has announced live watchers of `job_id` (and is still alive).
    async fn watched_elsewhere(&self, _job_id: &str) -> Result<bool, EventsError> {
        Ok(false)
    }
}

/// Open the configured bus (connecting to Redis if configured).
pub async fn from_config(cfg: &EventsConfig) -> Result<Arc<dyn Events>, EventsError> {
    match cfg {
        EventsConfig::InProcess => Ok(Arc::new(InProcessEvents::default())),
        EventsConfig::Redis { url } => Ok(Arc::new(
            RedisEvents::connect(url, RedisOptions::default()).await?,
        )),
    }
}

type Channels = Mutex<HashMap<String, broadcast::Sender<JobEvent>>>;

/// Tokio broadcast channel per job, created on first subscription, removed with its last
/// subscriber.
#[derive(Debug, Clone)]
pub struct InProcessEvents {
    channels: Arc<Channels>,
    capacity: usize,
}

impl Default for InProcessEvents {
    fn default() -> Self {
        Self::new(64)
    }
}

impl InProcessEvents {
    pub fn new(capacity: usize) -> Self {
        Self {
            channels: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    /// Jobs with at least one live subscriber (diagnostics and tests).
    pub fn active_jobs(&self) -> usize {
        self.channels.lock().expect("events lock").len()
    }
}

#[async_trait::async_trait]
impl Events for InProcessEvents {
    async fn publish(&self, job_id: &str, event: JobEvent) -> Result<(), EventsError> {
        let channels = self.channels.lock().expect("events lock");
        if let Some(tx) = channels.get(job_id) {
            // An error only means every receiver has gone; the last one removes the entry.
            let _ = tx.send(event);
        }
        Ok(())
    }

    async fn subscribe(&self, job_id: &str) -> Result<JobEventStream, EventsError> {
        let rx = {
            let mut channels = self.channels.lock().expect("events lock");
            channels
                .entry(job_id.to_string())
                .or_insert_with(|| broadcast::channel(self.capacity).0)
                .subscribe()
        };
        let stream = Subscription {
            inner: Some(BroadcastStream::new(rx)),
            channels: Arc::downgrade(&self.channels),
            job_id: job_id.to_string(),
        };
        // A lagging subscriber skips what it missed; seq lets the consumer notice.
        Ok(stream.filter_map(|r| async move { r.ok() }).boxed())
    }
}

struct Subscription {
    inner: Option<BroadcastStream<JobEvent>>,
    channels: Weak<Channels>,
    job_id: String,
}

impl Stream for Subscription {
    type Item = Result<JobEvent, tokio_stream::wrappers::errors::BroadcastStreamRecvError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        match self.inner.as_mut() {
            Some(s) => s.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.inner.take());
        if let Some(channels) = self.channels.upgrade() {
            let mut channels = channels.lock().expect("events lock");
            if channels
                .get(&self.job_id)
                .is_some_and(|tx| tx.receiver_count() == 0)
            {
                channels.remove(&self.job_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fan_out_to_every_subscriber_and_clean_up() {
        let bus = InProcessEvents::default();
        bus.publish("j", JobEvent::new(Stage::Queued, 0))
            .await
            .unwrap();
        let mut a = bus.subscribe("j").await.unwrap();
        let mut b = bus.subscribe("j").await.unwrap();
        let mut other = bus.subscribe("k").await.unwrap();
        assert_eq!(bus.active_jobs(), 2);
        bus.publish("j", JobEvent::new(Stage::Segmenting, 5))
            .await
            .unwrap();
        bus.publish("j", JobEvent::failed("decode_failed", "bad", 9))
            .await
            .unwrap();
        for s in [&mut a, &mut b] {
            assert_eq!(s.next().await.unwrap().stage, Stage::Segmenting);
            let e = s.next().await.unwrap();
            assert_eq!(e.stage, Stage::Failed);
            assert_eq!(e.seq, 41);
            assert_eq!(e.error_code.as_deref(), Some("decode_failed"));
        }
        bus.publish("k", JobEvent::new(Stage::Done, 1))
            .await
            .unwrap();
        assert_eq!(other.next().await.unwrap().stage, Stage::Done);
        drop(a);
        assert_eq!(bus.active_jobs(), 2);
        drop(b);
        drop(other);
        assert_eq!(bus.active_jobs(), 0);
    }

    #[test]
    fn json_shape() {
        let e = JobEvent::new(Stage::Compositing, 42);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"seq": 11, "stage": "compositing", "elapsed_ms": 42})
        );
        let back: JobEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        assert!(Stage::Uploaded.seq() < Stage::Done.seq());
        // Eight operations (the most a pipeline has) fit below `stored`.
        let last = JobEvent::operation(Stage::Compositing, crate::job::MAX_OPERATIONS - 1, 0);
        assert!(Stage::Received.seq() < JobEvent::operation(Stage::Resizing, 0, 0).seq);
        assert!(last.seq < Stage::Stored.seq(), "{}", last.seq);
        assert_eq!(Stage::from(crate::db::JobState::Done), Stage::Done);
    }
}

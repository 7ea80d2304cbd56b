//! The events bus across processes: Redis pub/sub (through `fred`) plus presence.
//!
//! - Publishing is a `PUBLISH {prefix}events:{job}` of the event's JSON.
//! - Each process holds one pattern subscription (`{prefix}events:*`) and relays what arrives into
//!   a local [`InProcessEvents`], which its SSE streams subscribe to. One subscription per process
//!   (not per job) means nothing to add or remove per watcher, and after a reconnect `fred`
//!   restores the single pattern by itself. Events published while Redis was unreachable are gone;
//!   web's streams re-read the job from the database on a timer, so a watcher still gets the final
//!   state.
//! - Presence: a process with live watchers of a job keeps itself in the sorted set
//!   `{prefix}watchers:{job}`, scored by an expiry time it refreshes every `presence_ttl / 3`. A
//!   process that crashed drops out once its entries expire.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{Events, EventsError, InProcessEvents, JobEvent, JobEventStream};

/// Tuning for [`RedisEvents`].
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Prefix of every key and channel, so several deployments can share one Redis.
    pub prefix: String,
    /// How long a process's presence entry lives without a refresh.
    pub presence_ttl: Duration,
    /// Upper bound on one Redis command (a publish must not hold a job up while Redis is down).
    pub command_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            prefix: "backless:".into(),
            presence_ttl: Duration::from_secs(30),
            command_timeout: Duration::from_secs(2),
        }
    }
}

/// [`Events`] over Redis.
pub struct RedisEvents {
    publisher: Client,
    subscriber: SubscriberClient,
    local: InProcessEvents,
    opts: RedisOptions,
    /// This process in presence sets.
    replica: String,
    /// Jobs this process has watchers of (synchronised to Redis by the presence task).
    watched: Arc<Mutex<HashSet<String>>>,
    presence_wake: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RedisEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEvents")
            .field("replica", &self.replica)
            .field("prefix", &self.opts.prefix)
            .finish_non_exhaustive()
    }
}

fn backend(e: impl std::fmt::Display) -> EventsError {
    EventsError::Backend(e.to_string())
}

fn now_ms() -> f64 {
    // Scores are f64; milliseconds since the epoch are exact in it for the next 280,000 years.
    chrono::Utc::now().timestamp_millis() as f64
}

impl RedisEvents {
    /// Connect (failing if Redis cannot be reached now), subscribe, and start the relay and
    /// presence tasks. Later disconnects are retried for ever with backoff.
    pub async fn connect(url: &str, opts: RedisOptions) -> Result<Self, EventsError> {
        let config = Config::from_url(url).map_err(backend)?;
        let mut builder = Builder::from_config(config);
        builder
            .with_performance_config(|p| {
                p.default_command_timeout = opts.command_timeout;
                p.broadcast_channel_capacity = 1024;
            })
            .with_connection_config(|c| {
                c.connection_timeout = opts.command_timeout;
                c.internal_command_timeout = opts.command_timeout;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
        let publisher = builder.build().map_err(backend)?;
        let subscriber = builder.build_subscriber_client().map_err(backend)?;
        publisher.init().await.map_err(backend)?;
        subscriber.init().await.map_err(backend)?;

        let local = InProcessEvents::new(256);
        let channel_prefix = format!("{}events:", opts.prefix);
        // Start reading before subscribing so nothing published right after is missed.
        let relay = {
            let mut rx = subscriber.message_rx();
            let local = local.clone();
            let channel_prefix = channel_prefix.clone();
            tokio::spawn(async move {
                loop {
                    let msg = match rx.recv().await {
                        Ok(m) => m,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(skipped = n, "redis relay fell behind");
                            continue;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    };
                    let Some(job_id) = msg.channel.strip_prefix(channel_prefix.as_str()) else {
                        continue;
                    };
                    let Some(text) = msg.value.as_str() else {
                        continue;
                    };
                    match serde_json::from_str::<JobEvent>(&text) {
                        Ok(ev) => {
                            let _ = local.publish(job_id, ev).await;
                        }
                        Err(e) => tracing::warn!(error = %e, "unreadable event on redis"),
                    }
                }
            })
        };
        let resubscribe = subscriber.manage_subscriptions();
        subscriber
            .psubscribe(format!("{channel_prefix}*"))
            .await
            .map_err(backend)?;

        let mut this = Self {
            publisher,
            subscriber,
            local,
            replica: hex::encode(rand::random::<[u8; 8]>()),
            watched: Arc::default(),
            presence_wake: Arc::new(Notify::new()),
            tasks: vec![relay, resubscribe],
            opts,
        };
        let presence = tokio::spawn(this.presence_loop());
        this.tasks.push(presence);
        Ok(this)
    }

    /// This process's id in presence sets.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    fn watchers_key(prefix: &str, job_id: &str) -> String {
        format!("{prefix}watchers:{job_id}")
    }

    /// Keep this process's presence entries in step with `watched`: refresh every entry each
    /// `ttl / 3` (or when woken) and remove those no longer watched.
    fn presence_loop(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let client = self.publisher.clone();
        let watched = Arc::clone(&self.watched);
        let wake = Arc::clone(&self.presence_wake);
        let replica = self.replica.clone();
        let prefix = self.opts.prefix.clone();
        let ttl = self.opts.presence_ttl;
        async move {
            let mut announced: HashSet<String> = HashSet::new();
            loop {
                let current = watched.lock().expect("presence lock").clone();
                let expiry = now_ms() + ttl.as_millis() as f64;
                let mut failed = false;
                for job in &current {
                    let key = Self::watchers_key(&prefix, job);
                    let added: Result<(), _> = client
                        .zadd(&key, None, None, false, false, (expiry, replica.as_str()))
                        .await;
                    let expired: Result<(), _> = client
                        .expire(&key, (ttl.as_secs() * 2).max(1) as i64, None)
                        .await;
                    failed |= added.is_err() || expired.is_err();
                }
                for job in announced.difference(&current) {
                    let key = Self::watchers_key(&prefix, job);
                    let removed: Result<(), _> = client.zrem(&key, replica.as_str()).await;
                    failed |= removed.is_err();
                }
                if failed {
                    tracing::debug!("presence not fully synchronised; retrying");
                    // Keep what may still be announced so its removal is retried.
                    announced.extend(current);
                } else {
                    announced = current;
                }
                let _ = tokio::time::timeout(ttl / 3, wake.notified()).await;
            }
        }
    }
}

impl Drop for RedisEvents {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (p, s) = (self.publisher.clone(), self.subscriber.clone());
            handle.spawn(async move {
                let _ = s.quit().await;
                let _ = p.quit().await;
            });
        }
    }
}

#[async_trait::async_trait]
impl Events for RedisEvents {
    async fn publish(&self, job_id: &str, event: JobEvent) -> Result<(), EventsError> {
        let body = serde_json::to_string(&event).map_err(backend)?;
        let channel = format!("{}events:{job_id}", self.opts.prefix);
        let _receivers: i64 = self
            .publisher
            .publish(channel, body)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn subscribe(&self, job_id: &str) -> Result<JobEventStream, EventsError> {
        self.local.subscribe(job_id).await
    }

    fn set_watched(&self, job_id: &str, watched: bool) {
        let mut set = self.watched.lock().expect("presence lock");
        let changed = if watched {
            set.insert(job_id.to_string())
        } else {
            set.remove(job_id)
        };
        if changed {
            self.presence_wake.notify_one();
        }
    }

    async fn watched_elsewhere(&self, job_id: &str) -> Result<bool, EventsError> {
        let key = Self::watchers_key(&self.opts.prefix, job_id);
        let live: Vec<String> = self
            .publisher
            .zrangebyscore(&key, now_ms() as i64, "+inf", false, None)
            .await
            .map_err(backend)?;
        Ok(live.iter().any(|r| r != &self.replica))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Stage;
    use crate::testing::RedisServer;
    use futures::StreamExt;

    async fn next(s: &mut JobEventStream) -> JobEvent {
        tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("event within 10 s")
            .expect("stream open")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relays_between_processes_and_survives_a_restart() {
        let mut redis = RedisServer::start();
        let web = RedisEvents::connect(&redis.url(), RedisOptions::default())
            .await
            .unwrap();
        let worker = RedisEvents::connect(&redis.url(), RedisOptions::default())
            .await
            .unwrap();
        let mut sub = web.subscribe("job1").await.unwrap();
        let mut other = web.subscribe("job2").await.unwrap();
        worker
            .publish("job1", JobEvent::new(Stage::Segmenting, 5))
            .await
            .unwrap();
        worker
            .publish("job2", JobEvent::failed("decode_failed", "bad", 9))
            .await
            .unwrap();
        assert_eq!(next(&mut sub).await.stage, Stage::Segmenting);
        let failed = next(&mut other).await;
        assert_eq!(failed.error_code.as_deref(), Some("decode_failed"));

        // While Redis is away a publish fails fast (bounded by the command timeout) rather than
        // hanging the job; once it is back, both sides reconnect and the pattern is re-subscribed.
        redis.restart();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let _ = worker
                .publish("job1", JobEvent::new(Stage::Stored, 7))
                .await;
            match tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
                Ok(Some(ev)) => {
                    assert_eq!(ev.stage, Stage::Stored);
                    break;
                }
                Ok(None) => panic!("stream ended"),
                Err(_) => assert!(
                    std::time::Instant::now() < deadline,
                    "no event relayed after the Redis restart"
                ),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn presence_is_seen_by_other_processes_and_expires() {
        let redis = RedisServer::start();
        let short = RedisOptions {
            presence_ttl: Duration::from_millis(900),
            ..RedisOptions::default()
        };
        let a = RedisEvents::connect(&redis.url(), short.clone())
            .await
            .unwrap();
        let b = RedisEvents::connect(&redis.url(), short).await.unwrap();
        assert!(!b.watched_elsewhere("j").await.unwrap());
        a.set_watched("j", true);
        wait_for(&b, "j", true).await;
        // A process never counts itself.
        assert!(!a.watched_elsewhere("j").await.unwrap());
        a.set_watched("j", false);
        wait_for(&b, "j", false).await;

        // A process that dies without saying goodbye drops out when its entry expires.
        a.set_watched("k", true);
        wait_for(&b, "k", true).await;
        for t in &a.tasks {
            t.abort(); // no more refreshes, no removal: as if killed
        }
        wait_for(&b, "k", false).await;
    }

    async fn wait_for(events: &RedisEvents, job: &str, want: bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while events.watched_elsewhere(job).await.unwrap() != want {
            assert!(
                std::time::Instant::now() < deadline,
                "watched_elsewhere({job}) never became {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

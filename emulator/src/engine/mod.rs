//! The engine: queues and tasks, the scheduler that hands due tasks to dispatch under
//! each queue's rate limits, and the bookkeeping after every attempt (retries with the
//! service's backoff, tombstones). Front ends call its methods with prost types.

mod queues;
mod schedule;
mod tasks;

use self::queues::default_queue;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::ApiError;
use crate::model::{self, epoch_nanos, from_ts, pb};
use crate::names;
use crate::oidc::OidcKey;
use crate::store::{Store, StoredTask};

const QUEUE_NOT_FOUND: &str = "Queue does not exist. If you just created the queue, wait at least a minute for the queue to initialize.";
const ENTITY_NOT_FOUND: &str = "Requested entity was not found.";
const TASK_TOMBSTONED: &str = "The task no longer exists, though a task with this name existed recently. The task either successfully completed or was deleted.";
const TASK_TOO_RECENT: &str = "The task cannot be created because a task with this name existed too recently. For more information about task de-duplication see https://cloud.google.com/tasks/docs/reference/rest/v2/projects.locations.queues.tasks/create#body.request_body.FIELDS.task.";

/// What the engine needs beyond its store.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// How long a finished or deleted task's name stays taken (the service: 24 h).
    pub tombstone_ttl: Duration,
    /// Whether queues' `max_dispatches_per_second` is enforced (off for benchmarks).
    pub enforce_rate_limits: bool,
    /// The `iss` of OIDC tokens.
    pub issuer: String,
    /// Queues (full names) created at start and after a reset.
    pub initial_queues: Vec<String>,
}

/// A token bucket: `rate` tokens a second, at most `burst` saved.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(burst: f64) -> Self {
        Self {
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                ((1.0 - self.tokens) / rate).max(0.001),
            ))
        }
    }
}

#[derive(Debug)]
struct TaskEntry {
    stored: StoredTask,
    /// The id of the attempt in flight, if any.
    dispatching: Option<u64>,
}

#[derive(Debug)]
struct QueueState {
    queue: pb::Queue,
    tasks: BTreeMap<String, TaskEntry>,
    /// Waiting tasks by (schedule time in epoch ns, name).
    ready: BTreeSet<(i128, String)>,
    running: usize,
    bucket: Bucket,
}

impl QueueState {
    fn new(queue: pb::Queue) -> Self {
        let burst = queue.rate_limits.as_ref().map_or(100, |r| r.max_burst_size);
        Self {
            queue,
            tasks: BTreeMap::new(),
            ready: BTreeSet::new(),
            running: 0,
            bucket: Bucket::new(f64::from(burst)),
        }
    }

    fn is_running(&self) -> bool {
        self.queue.state == pb::queue::State::Running as i32
    }
}

#[derive(Debug, Default)]
struct State {
    queues: BTreeMap<String, QueueState>,
    tombstones: HashMap<String, SystemTime>,
    next_dispatch_id: u64,
    in_flight: usize,
}

impl State {
    fn tombstoned(&self, name: &str, now: SystemTime) -> bool {
        self.tombstones.get(name).is_some_and(|until| *until > now)
    }
}

/// The Cloud Tasks engine, shared by the front ends and the scheduler.
pub struct Engine {
    state: Mutex<State>,
    store: Box<dyn Store>,
    settings: EngineSettings,
    key: OidcKey,
    http: reqwest::Client,
    /// Wakes the scheduler.
    wake: Notify,
    /// Signalled whenever a task finishes or leaves, for `wait_idle`.
    changed: Notify,
    /// Stops the scheduler (no new dispatches).
    stop: CancellationToken,
    /// Abandons dispatches in flight (they are put back).
    abort: CancellationToken,
    dispatches: TaskTracker,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Builds the engine from what the store holds (plus the initial queues).
    pub fn new(
        store: Box<dyn Store>,
        settings: EngineSettings,
        key: OidcKey,
    ) -> Result<Arc<Self>, ApiError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(1024)
            .build()
            .map_err(|e| ApiError::internal(format!("building the HTTP client: {e}")))?;
        let snapshot = store.load()?;
        let mut state = State::default();
        for q in snapshot.queues {
            state.queues.insert(q.name.clone(), QueueState::new(q));
        }
        for t in snapshot.tasks {
            let Some(qs) = state.queues.get_mut(&t.queue) else {
                continue;
            };
            let at = t
                .task
                .schedule_time
                .as_ref()
                .map_or(0, |s| epoch_nanos(from_ts(s)));
            qs.ready.insert((at, t.task.name.clone()));
            qs.tasks.insert(
                t.task.name.clone(),
                TaskEntry {
                    stored: t,
                    dispatching: None,
                },
            );
        }
        let now = SystemTime::now();
        for (name, until) in snapshot.tombstones {
            let until = std::time::UNIX_EPOCH + Duration::from_nanos(until.max(0) as u64);
            if until > now {
                state.tombstones.insert(name, until);
            }
        }
        let engine = Arc::new(Self {
            state: Mutex::new(state),
            store,
            settings,
            key,
            http,
            wake: Notify::new(),
            changed: Notify::new(),
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
            dispatches: TaskTracker::new(),
        });
        engine.create_initial_queues()?;
        Ok(engine)
    }

    fn create_initial_queues(&self) -> Result<(), ApiError> {
        for name in &self.settings.initial_queues {
            let q = names::parse_queue_name(name)?;
            let mut st = self.lock();
            if st.queues.contains_key(&q.full()) {
                continue;
            }
            let mut queue = default_queue(&q.full());
            model::normalize_queue(&mut queue)?;
            self.store.put_queue(&queue)?;
            st.queues.insert(queue.name.clone(), QueueState::new(queue));
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    pub fn key(&self) -> &OidcKey {
        &self.key
    }
}

fn encode_token(name: &str) -> String {
    B64URL.encode(name)
}

fn decode_token(token: &str) -> Result<Option<String>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    B64URL
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .map(Some)
        .ok_or_else(|| ApiError::invalid("Invalid page_token"))
}

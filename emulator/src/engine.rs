//! The engine: queues and tasks, the scheduler that hands due tasks to dispatch under
//! each queue's rate limits, and the bookkeeping after every attempt (retries with the
//! service's backoff, tombstones). Front ends call its methods with prost types.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dispatch::{self, Attempt, Outcome};
use crate::error::{ApiError, Code};
use crate::model::{self, RetryPolicy, epoch_nanos, from_ts, pb, ts};
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

fn view_of(task: &pb::Task, view: i32) -> pb::Task {
    let mut t = task.clone();
    let full = view == pb::task::View::Full as i32;
    t.view = if full {
        pb::task::View::Full as i32
    } else {
        pb::task::View::Basic as i32
    };
    if !full && let Some(pb::task::MessageType::HttpRequest(r)) = t.message_type.as_mut() {
        r.body.clear();
    }
    t
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

fn default_queue(name: &str) -> pb::Queue {
    pb::Queue {
        name: name.to_owned(),
        ..Default::default()
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

    // ---- queues ------------------------------------------------------------------------

    pub fn create_queue(
        &self,
        parent: &str,
        queue: Option<pb::Queue>,
    ) -> Result<pb::Queue, ApiError> {
        names::parse_location(parent, "cloudtasks.queues.create")?;
        let mut queue = queue.unwrap_or_default();
        let qn = names::parse_new_queue_name(parent, &queue.name)?;
        queue.name = qn.full();
        queue.state = pb::queue::State::Running as i32;
        queue.purge_time = None;
        model::normalize_queue(&mut queue)?;
        let mut st = self.lock();
        if st.queues.contains_key(&queue.name) {
            return Err(ApiError::new(Code::AlreadyExists, "Queue already exists"));
        }
        self.store.put_queue(&queue)?;
        st.queues
            .insert(queue.name.clone(), QueueState::new(queue.clone()));
        Ok(queue)
    }

    pub fn get_queue(&self, name: &str) -> Result<pb::Queue, ApiError> {
        let qn = names::parse_queue_name(name)?;
        let st = self.lock();
        st.queues
            .get(&qn.full())
            .map(|q| q.queue.clone())
            .ok_or_else(|| ApiError::not_found(QUEUE_NOT_FOUND))
    }

    pub fn list_queues(
        &self,
        parent: &str,
        filter: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<pb::Queue>, String), ApiError> {
        let (project, location) = names::parse_location(parent, "cloudtasks.queues.list")?;
        if page_size < 0 {
            return Err(ApiError::invalid(
                "ListQueuesRequest.pageSize cannot be negative.",
            ));
        }
        let state_filter = parse_queue_filter(filter)?;
        let after = decode_token(page_token)?;
        let size = if page_size == 0 {
            9800
        } else {
            page_size.min(9800)
        } as usize;
        let prefix = format!("projects/{project}/locations/{location}/queues/");
        let st = self.lock();
        let mut out = Vec::new();
        let mut more = false;
        for (name, q) in st.queues.range(after.clone().unwrap_or_default()..) {
            if !name.starts_with(&prefix) || after.as_deref() == Some(name.as_str()) {
                continue;
            }
            if state_filter.is_some_and(|s| s != q.queue.state) {
                continue;
            }
            if out.len() == size {
                more = true;
                break;
            }
            out.push(q.queue.clone());
        }
        let next = if more {
            out.last()
                .map(|q| encode_token(&q.name))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((out, next))
    }

    /// UpdateQueue: creates the queue when missing; with a mask, changes only those fields.
    pub fn update_queue(
        &self,
        queue: Option<pb::Queue>,
        mask: Option<Vec<String>>,
    ) -> Result<pb::Queue, ApiError> {
        let Some(update) = queue else {
            return Err(ApiError::invalid(
                "Invalid resource field value in the request.",
            ));
        };
        let qn = names::parse_queue_name(&update.name)?;
        let name = qn.full();
        let mut st = self.lock();
        let existing = st.queues.get(&name).map(|q| q.queue.clone());
        let mut q = existing.clone().unwrap_or_else(|| default_queue(&name));
        match mask {
            Some(paths) if !paths.is_empty() => {
                for path in paths {
                    apply_mask_path(&mut q, &update, &path)?;
                }
            }
            Some(_) if existing.is_some() => {}
            _ => {
                q.rate_limits = update.rate_limits;
                q.retry_config = update.retry_config;
                q.stackdriver_logging_config = update.stackdriver_logging_config;
                q.app_engine_routing_override = update.app_engine_routing_override.clone();
            }
        }
        if let Some(rl) = q.rate_limits.as_mut() {
            rl.max_burst_size = 0;
        }
        model::normalize_queue(&mut q)?;
        self.store.put_queue(&q)?;
        match st.queues.get_mut(&name) {
            Some(qs) => qs.queue = q.clone(),
            None => {
                st.queues.insert(name, QueueState::new(q.clone()));
            }
        }
        drop(st);
        self.wake.notify_one();
        Ok(q)
    }

    pub fn delete_queue(&self, name: &str) -> Result<(), ApiError> {
        let qn = names::parse_queue_name(name)?;
        let mut st = self.lock();
        if st.queues.remove(&qn.full()).is_none() {
            return Err(ApiError::not_found(ENTITY_NOT_FOUND));
        }
        self.store.delete_queue(&qn.full())?;
        drop(st);
        self.changed.notify_waiters();
        Ok(())
    }

    pub fn purge_queue(&self, name: &str) -> Result<pb::Queue, ApiError> {
        let qn = names::parse_queue_name(name)?;
        let now = SystemTime::now();
        let until = now + self.settings.tombstone_ttl;
        let mut st = self.lock();
        let qs = st
            .queues
            .get_mut(&qn.full())
            .ok_or_else(|| ApiError::not_found(QUEUE_NOT_FOUND))?;
        let names: Vec<String> = qs.tasks.keys().cloned().collect();
        qs.tasks.clear();
        qs.ready.clear();
        qs.queue.purge_time = Some(ts(now));
        let queue = qs.queue.clone();
        self.store.put_queue(&queue)?;
        for n in &names {
            self.store.delete_task(n, self.tombstone_until(until))?;
        }
        if !self.settings.tombstone_ttl.is_zero() {
            for n in names {
                st.tombstones.insert(n, until);
            }
        }
        drop(st);
        self.changed.notify_waiters();
        Ok(queue)
    }

    fn set_state(&self, name: &str, state: pb::queue::State) -> Result<pb::Queue, ApiError> {
        let qn = names::parse_queue_name(name)?;
        let mut st = self.lock();
        let qs = st
            .queues
            .get_mut(&qn.full())
            .ok_or_else(|| ApiError::not_found(QUEUE_NOT_FOUND))?;
        qs.queue.state = state as i32;
        let queue = qs.queue.clone();
        self.store.put_queue(&queue)?;
        drop(st);
        self.wake.notify_one();
        self.changed.notify_waiters();
        Ok(queue)
    }

    pub fn pause_queue(&self, name: &str) -> Result<pb::Queue, ApiError> {
        self.set_state(name, pb::queue::State::Paused)
    }

    pub fn resume_queue(&self, name: &str) -> Result<pb::Queue, ApiError> {
        self.set_state(name, pb::queue::State::Running)
    }

    // ---- tasks -------------------------------------------------------------------------

    fn tombstone_until(&self, until: SystemTime) -> Option<SystemTime> {
        (!self.settings.tombstone_ttl.is_zero()).then_some(until)
    }

    pub fn create_task(
        &self,
        parent: &str,
        task: Option<pb::Task>,
        view: i32,
    ) -> Result<pb::Task, ApiError> {
        let qn = names::parse_queue_parent(parent, "cloudtasks.tasks.create")?;
        let mut task = task.unwrap_or_default();
        let now = SystemTime::now();
        task.name = if task.name.is_empty() {
            format!("{}/tasks/{}", qn.full(), model::generate_task_id())
        } else {
            names::parse_new_task_name(&qn, &task.name)?.full()
        };
        model::normalize_http_task(&mut task)?;
        let schedule = match &task.schedule_time {
            Some(t) => model::check_schedule_time(t, now)?,
            None => now,
        };
        if prost::Message::encoded_len(&task) > model::MAX_TASK_SIZE {
            return Err(ApiError::invalid("Task size too large"));
        }
        task.schedule_time = Some(ts(schedule));
        task.create_time = Some(model::Timestamp {
            seconds: ts(now).seconds,
            nanos: 0,
        });
        task.dispatch_count = 0;
        task.response_count = 0;
        task.first_attempt = None;
        task.last_attempt = None;
        task.view = 0;
        let queue_name = qn.full();
        let mut st = self.lock();
        let tombstoned = st.tombstoned(&task.name, now);
        let qs = st
            .queues
            .get_mut(&queue_name)
            .ok_or_else(|| ApiError::not_found(QUEUE_NOT_FOUND))?;
        if qs.tasks.contains_key(&task.name) {
            return Err(ApiError::new(
                Code::AlreadyExists,
                "Requested entity already exists",
            ));
        }
        if tombstoned {
            return Err(ApiError::new(Code::AlreadyExists, TASK_TOO_RECENT));
        }
        let stored = StoredTask {
            queue: queue_name,
            task: task.clone(),
            execution_count: 0,
            previous_response: None,
        };
        self.store.put_task(&stored)?;
        qs.ready.insert((epoch_nanos(schedule), task.name.clone()));
        qs.tasks.insert(
            task.name.clone(),
            TaskEntry {
                stored,
                dispatching: None,
            },
        );
        drop(st);
        self.wake.notify_one();
        Ok(view_of(&task, view))
    }

    fn find<'a>(
        st: &'a mut State,
        name: &str,
        now: SystemTime,
    ) -> Result<(&'a mut QueueState, String), ApiError> {
        let tn = names::parse_task_name(name)?;
        let full = tn.full();
        let tombstoned = st.tombstoned(&full, now);
        let qs = st
            .queues
            .get_mut(&tn.queue.full())
            .ok_or_else(|| ApiError::not_found(QUEUE_NOT_FOUND))?;
        if !qs.tasks.contains_key(&full) {
            return Err(ApiError::not_found(if tombstoned {
                TASK_TOMBSTONED
            } else {
                ENTITY_NOT_FOUND
            }));
        }
        Ok((qs, full))
    }

    pub fn get_task(&self, name: &str, view: i32) -> Result<pb::Task, ApiError> {
        let mut st = self.lock();
        let (qs, full) = Self::find(&mut st, name, SystemTime::now())?;
        Ok(view_of(&qs.tasks[&full].stored.task, view))
    }

    pub fn list_tasks(
        &self,
        parent: &str,
        view: i32,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<pb::Task>, String), ApiError> {
        let qn = names::parse_queue_parent(parent, "cloudtasks.tasks.list")?;
        if page_size < 0 {
            return Err(ApiError::invalid(
                "ListTasksRequest.pageSize cannot be negative.",
            ));
        }
        let after = decode_token(page_token)?;
        let size = if page_size == 0 {
            1000
        } else {
            page_size.min(1000)
        } as usize;
        let st = self.lock();
        let qs = st
            .queues
            .get(&qn.full())
            .ok_or_else(|| ApiError::not_found(QUEUE_NOT_FOUND))?;
        let mut out = Vec::new();
        let mut more = false;
        for (name, entry) in qs.tasks.range(after.clone().unwrap_or_default()..) {
            if after.as_deref() == Some(name.as_str()) {
                continue;
            }
            if out.len() == size {
                more = true;
                break;
            }
            out.push(view_of(&entry.stored.task, view));
        }
        let next = if more {
            out.last()
                .map(|t| encode_token(&t.name))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((out, next))
    }

    pub fn delete_task(&self, name: &str) -> Result<(), ApiError> {
        let now = SystemTime::now();
        let until = now + self.settings.tombstone_ttl;
        let mut st = self.lock();
        let (qs, full) = Self::find(&mut st, name, now)?;
        let entry = qs.tasks.remove(&full).expect("found above");
        if let Some(at) = entry.stored.task.schedule_time.as_ref() {
            qs.ready.remove(&(epoch_nanos(from_ts(at)), full.clone()));
        }
        self.store.delete_task(&full, self.tombstone_until(until))?;
        if !self.settings.tombstone_ttl.is_zero() {
            st.tombstones.insert(full, until);
        }
        drop(st);
        self.changed.notify_waiters();
        Ok(())
    }

    /// RunTask: dispatches now, whatever the queue's state and rate limits.
    pub fn run_task(self: &Arc<Self>, name: &str, view: i32) -> Result<pb::Task, ApiError> {
        let mut st = self.lock();
        st.next_dispatch_id += 1;
        let id = st.next_dispatch_id;
        let (qs, full) = Self::find(&mut st, name, SystemTime::now())?;
        let entry = qs.tasks.get(&full).expect("found above");
        let mut shown = entry.stored.task.clone();
        if entry.dispatching.is_none() {
            let attempt = Self::start_attempt(qs, &full, id);
            st.in_flight += 1;
            drop(st);
            self.spawn_dispatch(attempt);
        }
        shown.dispatch_count += 1;
        shown.last_attempt = Some(pb::Attempt {
            schedule_time: shown.schedule_time,
            ..Default::default()
        });
        Ok(view_of(&shown, view))
    }

    // ---- scheduling and dispatch -------------------------------------------------------

    /// Marks a task as dispatching and copies out what the attempt needs.
    fn start_attempt(qs: &mut QueueState, name: &str, id: u64) -> Attempt {
        let entry = qs.tasks.get_mut(name).expect("task exists");
        entry.dispatching = Some(id);
        let t = &entry.stored.task;
        if let Some(at) = t.schedule_time.as_ref() {
            qs.ready
                .remove(&(epoch_nanos(from_ts(at)), name.to_owned()));
        }
        qs.running += 1;
        let request = match &t.message_type {
            Some(pb::task::MessageType::HttpRequest(r)) => r.clone(),
            _ => pb::HttpRequest::default(),
        };
        Attempt {
            queue: qs.queue.name.clone(),
            task: name.to_owned(),
            dispatch_id: id,
            queue_id: qs
                .queue
                .name
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned(),
            task_id: name.rsplit('/').next().unwrap_or_default().to_owned(),
            request,
            deadline: t
                .dispatch_deadline
                .as_ref()
                .and_then(model::std_duration)
                .unwrap_or(model::DEFAULT_DISPATCH_DEADLINE),
            schedule_time: t.schedule_time.unwrap_or_default(),
            retry_count: t.dispatch_count,
            execution_count: entry.stored.execution_count,
            previous_response: entry.stored.previous_response,
        }
    }

    fn spawn_dispatch(self: &Arc<Self>, attempt: Attempt) {
        let engine = Arc::clone(self);
        self.dispatches.spawn(async move {
            let started = SystemTime::now();
            let clock = Instant::now();
            let headers = dispatch::headers(&attempt, &engine.key, &engine.settings.issuer, started);
            let outcome = dispatch::send(&engine.http, &attempt, headers, &engine.abort).await;
            let latency = clock.elapsed();
            match outcome.status() {
                Some(status) => tracing::info!(
                    task = %attempt.task,
                    url = %attempt.request.url,
                    status,
                    latency_ms = latency.as_secs_f64() * 1e3,
                    retry = attempt.retry_count,
                    "dispatched"
                ),
                None => tracing::info!(task = %attempt.task, "dispatch abandoned at shutdown; task kept"),
            }
            engine.finish(&attempt, outcome, started);
        });
    }

    /// Hands every due task to dispatch; returns how long until the next one may be due.
    fn schedule(self: &Arc<Self>) -> Option<Duration> {
        let now = SystemTime::now();
        let now_ns = epoch_nanos(now);
        let clock = Instant::now();
        let enforce = self.settings.enforce_rate_limits;
        let mut next: Option<Duration> = None;
        let mut soonest = |d: Duration| next = Some(next.map_or(d, |n| n.min(d)));
        let mut launches = Vec::new();
        {
            let mut st = self.lock();
            let mut id = st.next_dispatch_id;
            let mut started = 0;
            for qs in st.queues.values_mut() {
                if !qs.is_running() {
                    continue;
                }
                let rl = qs.queue.rate_limits.unwrap_or_default();
                let max_running = rl.max_concurrent_dispatches.max(1) as usize;
                while let Some((at, name)) = qs.ready.first().cloned() {
                    if at > now_ns {
                        soonest(Duration::from_nanos((at - now_ns) as u64));
                        break;
                    }
                    if qs.running >= max_running {
                        break;
                    }
                    if enforce
                        && let Err(wait) = qs.bucket.take(
                            rl.max_dispatches_per_second,
                            f64::from(rl.max_burst_size.max(1)),
                            clock,
                        )
                    {
                        soonest(wait);
                        break;
                    }
                    id += 1;
                    started += 1;
                    launches.push(Self::start_attempt(qs, &name, id));
                }
            }
            st.next_dispatch_id = id;
            st.in_flight += started;
        }
        for attempt in launches {
            self.spawn_dispatch(attempt);
        }
        next
    }

    /// Records an attempt's outcome: success deletes the task, failure schedules the
    /// retry (or deletes the task when both retry limits are spent).
    fn finish(&self, a: &Attempt, outcome: Outcome, started: SystemTime) {
        let now = SystemTime::now();
        let until = now + self.settings.tombstone_ttl;
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        let ttl_on = !self.settings.tombstone_ttl.is_zero();
        let mut tombstone = None;
        if let Some(qs) = st.queues.get_mut(&a.queue) {
            qs.running = qs.running.saturating_sub(1);
            let policy = RetryPolicy::of(&qs.queue);
            let current = qs
                .tasks
                .get(&a.task)
                .is_some_and(|e| e.dispatching == Some(a.dispatch_id));
            if current {
                let entry = qs.tasks.get_mut(&a.task).expect("checked");
                entry.dispatching = None;
                match outcome.status() {
                    None => {
                        let at = entry
                            .stored
                            .task
                            .schedule_time
                            .as_ref()
                            .map_or(0, |s| epoch_nanos(from_ts(s)));
                        qs.ready.insert((at, a.task.clone()));
                    }
                    Some(status) => {
                        let responded = matches!(outcome, Outcome::Response { .. });
                        let t = &mut entry.stored.task;
                        t.dispatch_count += 1;
                        if responded {
                            t.response_count += 1;
                        }
                        let attempt = pb::Attempt {
                            schedule_time: t.schedule_time,
                            dispatch_time: Some(ts(started)),
                            response_time: Some(ts(now)),
                            response_status: Some(model::response_status(status)),
                        };
                        if t.first_attempt.is_none() {
                            // The service keeps only the dispatch time of the first attempt.
                            t.first_attempt = Some(pb::Attempt {
                                dispatch_time: Some(ts(started)),
                                ..Default::default()
                            });
                        }
                        t.last_attempt = Some(attempt);
                        let first = t
                            .first_attempt
                            .as_ref()
                            .and_then(|f| f.dispatch_time.as_ref())
                            .map_or(started, from_ts);
                        let done = (200..300).contains(&status)
                            || policy.exhausted(t.dispatch_count, first, now);
                        if done {
                            if !(200..300).contains(&status) {
                                tracing::warn!(task = %a.task, attempts = t.dispatch_count, status, "task failed permanently; deleted");
                            }
                            qs.tasks.remove(&a.task);
                            if let Err(e) = self.store.delete_task(&a.task, ttl_on.then_some(until))
                            {
                                tracing::error!(error = %e, "state store failed");
                            }
                            tombstone = ttl_on.then(|| a.task.clone());
                        } else {
                            if responded && status < 500 {
                                entry.stored.execution_count += 1;
                            }
                            entry.stored.previous_response = Some(status);
                            let t = &mut entry.stored.task;
                            let mut backoff = policy.backoff((t.dispatch_count - 1).max(0) as u32);
                            if let Outcome::Response {
                                status: 429 | 503,
                                retry_after: Some(after),
                            } = outcome
                            {
                                backoff = backoff.max(after);
                            }
                            let next = now + backoff;
                            t.schedule_time = Some(ts(next));
                            qs.ready.insert((epoch_nanos(next), a.task.clone()));
                            if let Err(e) = self.store.put_task(&entry.stored) {
                                tracing::error!(error = %e, "state store failed");
                            }
                        }
                    }
                }
            }
        }
        if let Some(name) = tombstone {
            st.tombstones.insert(name, until);
        }
        drop(st);
        self.wake.notify_one();
        self.changed.notify_waiters();
    }

    /// The scheduler loop; returns when `stop` fires.
    pub async fn run_scheduler(self: Arc<Self>) {
        loop {
            let wait = self.schedule().unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn is_idle(&self) -> bool {
        let st = self.lock();
        st.in_flight == 0
            && st
                .queues
                .values()
                .all(|q| !q.is_running() || q.tasks.is_empty())
    }

    /// Waits until no dispatch is in flight and every running queue is empty (tasks in
    /// paused queues are not waited for).
    pub async fn wait_idle(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_idle() {
                return;
            }
            changed.await;
        }
    }

    /// Tasks held, in all queues (dispatching ones included).
    pub fn task_count(&self) -> usize {
        self.lock().queues.values().map(|q| q.tasks.len()).sum()
    }

    /// Forgets every queue, task and tombstone, then creates the initial queues again.
    /// Dispatches in flight finish, but their results are dropped.
    pub fn reset(&self) -> Result<(), ApiError> {
        {
            let mut st = self.lock();
            st.queues.clear();
            st.tombstones.clear();
            self.store.clear()?;
        }
        self.create_initial_queues()?;
        self.changed.notify_waiters();
        Ok(())
    }

    /// Stops starting dispatches, lets those in flight finish for up to `grace`, then
    /// abandons the rest (their tasks stay queued, in the store too).
    pub async fn shutdown(&self, grace: Duration) {
        self.stop.cancel();
        self.dispatches.close();
        if tokio::time::timeout(grace, self.dispatches.wait())
            .await
            .is_err()
        {
            tracing::warn!("dispatches still running after the grace period; putting them back");
            self.abort.cancel();
            self.dispatches.wait().await;
        }
    }
}

fn parse_queue_filter(filter: &str) -> Result<Option<i32>, ApiError> {
    let f = filter.trim();
    if f.is_empty() {
        return Ok(None);
    }
    let rest = f.strip_prefix("state").map(str::trim_start);
    let value = rest
        .and_then(|r| r.strip_prefix('=').or_else(|| r.strip_prefix(':')))
        .map(str::trim);
    match value.and_then(pb::queue::State::from_str_name) {
        Some(s) => Ok(Some(s as i32)),
        None => Err(ApiError::new(
            Code::Unimplemented,
            format!(
                "ListQueues filter \"{filter}\" is not supported by the emulator; only `state = STATE` is."
            ),
        )),
    }
}

fn apply_mask_path(q: &mut pb::Queue, u: &pb::Queue, path: &str) -> Result<(), ApiError> {
    let snake: String = path
        .trim()
        .chars()
        .flat_map(|c| {
            if c.is_ascii_uppercase() {
                vec!['_', c.to_ascii_lowercase()]
            } else {
                vec![c]
            }
        })
        .collect();
    let rl = || u.rate_limits.unwrap_or_default();
    let rc = || u.retry_config.unwrap_or_default();
    match snake.as_str() {
        "name" | "state" | "purge_time" | "rate_limits.max_burst_size" => {}
        "rate_limits" => q.rate_limits = u.rate_limits,
        "rate_limits.max_dispatches_per_second" => {
            q.rate_limits
                .get_or_insert_default()
                .max_dispatches_per_second = rl().max_dispatches_per_second
        }
        "rate_limits.max_concurrent_dispatches" => {
            q.rate_limits
                .get_or_insert_default()
                .max_concurrent_dispatches = rl().max_concurrent_dispatches
        }
        "retry_config" => q.retry_config = u.retry_config,
        "retry_config.max_attempts" => {
            q.retry_config.get_or_insert_default().max_attempts = rc().max_attempts
        }
        "retry_config.max_retry_duration" => {
            q.retry_config.get_or_insert_default().max_retry_duration = rc().max_retry_duration
        }
        "retry_config.min_backoff" => {
            q.retry_config.get_or_insert_default().min_backoff = rc().min_backoff
        }
        "retry_config.max_backoff" => {
            q.retry_config.get_or_insert_default().max_backoff = rc().max_backoff
        }
        "retry_config.max_doublings" => {
            q.retry_config.get_or_insert_default().max_doublings = rc().max_doublings
        }
        "stackdriver_logging_config" | "stackdriver_logging_config.sampling_ratio" => {
            q.stackdriver_logging_config = u.stackdriver_logging_config
        }
        "app_engine_routing_override" => {
            q.app_engine_routing_override = u.app_engine_routing_override.clone()
        }
        _ => {
            return Err(ApiError::invalid(format!(
                "Unknown field mask path \"{path}\" for google.cloud.tasks.v2.Queue."
            )));
        }
    }
    Ok(())
}

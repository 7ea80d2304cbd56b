//! The push target: Cloud Tasks (or our emulator) POSTs `{"job_id": ...}` here, and the worker
//! turns the stored original into the stored result.
//!
//! The contract with the queue (delivery is at least once):
//! - 2xx when the job is finished, whether it succeeded or failed for a reason retrying cannot
//!   fix (corrupt image, over limits): the failure is recorded on the job.
//! - 503 with `Retry-After` when retrying can help: database or storage unavailable, models
//!   still loading past the wait bound, or another delivery of the same job holding it.
//! - Idempotent: a finished job answers 2xx at once; the database claim (a lease) makes sure two
//!   concurrent deliveries never both run the model, and a worker killed mid-job loses its lease so
//!   the queue's retry takes the job over.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backless_common::db::{Db, Job, is_valid_job_id};
use backless_common::events::{Events, JobEvent, Stage};
use backless_common::job::{MODELS, Pipeline};
use backless_common::limits::ImageLimits;
use backless_common::serve::Listener;
use backless_common::startup::Backends;
use backless_common::storage::{Storage, StorageError, background_key, result_key};
use poem::http::{HeaderMap, StatusCode};
use poem::web::{Data, Json};
use poem::{EndpointExt, IntoResponse, Response, Route, handler, post};
use serde::Deserialize;
use tokio::sync::{Semaphore, watch};
use tracing::Instrument;

use crate::auth::PushAuth;
use crate::budget::MemoryBudget;
use crate::config::WorkerConfig;
use crate::model::{Segmenter, default_device};
use crate::ops::{self, Progress};

pub use backless_common::startup::{Components, StartError};

/// Loaded models by name, or why loading failed.
type Models = Result<Arc<HashMap<String, Arc<Segmenter>>>, String>;

/// What every request handler shares.
pub struct State {
    db: Db,
    storage: Storage,
    events: Arc<dyn Events>,
    limits: ImageLimits,
    lease: Duration,
    /// Deliveries that may claim one job (see [`JobsConfig::max_attempts`]).
    ///
    /// [`JobsConfig::max_attempts`]: backless_common::config::JobsConfig::max_attempts
    max_attempts: u32,
    models: watch::Receiver<Option<Models>>,
    inference: Semaphore,
    /// What the images in flight may hold together; each reserves its plan's estimate before
    /// it is decoded, so concurrency follows memory as well as [`WorkerConfig::concurrency`].
    budget: MemoryBudget,
    /// Pushes admitted at once; beyond it 503 + Retry-After.
    admission: Semaphore,
    /// Model runs so far (tests check duplicate deliveries do not add one).
    runs: std::sync::atomic::AtomicU64,
    /// Jobs finished so far, watched by [`trim_when_idle`].
    jobs_done: watch::Sender<u64>,
    /// Inference permits (all free = no job running).
    concurrency: usize,
    auth: PushAuth,
    metrics: crate::metrics::Metrics,
}

impl State {
    /// This worker's metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Model runs started since start-up.
    pub fn model_runs(&self) -> u64 {
        self.runs.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Wait (bounded) for the models to finish loading: a push arriving during start-up waits.
    async fn models(&self, wait: Duration) -> Option<Models> {
        let mut rx = self.models.clone();
        let ready = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await;
        match ready {
            Ok(Ok(m)) => m.clone(),
            _ => None,
        }
    }
}

/// A bound, not yet serving, worker.
pub struct App {
    listener: Listener,
    addr: SocketAddr,
    state: Arc<State>,
    loader: tokio::task::JoinHandle<()>,
    http: backless_common::serve::HttpLimits,
}

impl App {
    pub async fn build(config: WorkerConfig) -> Result<Self, StartError> {
        Self::build_with(config, Components::default()).await
    }

    /// Bind, connect, and start loading the models in the background (`/readyz` answers 503
    /// until they are loaded).
    pub async fn build_with(
        config: WorkerConfig,
        components: Components,
    ) -> Result<Self, StartError> {
        Self::build_gated(config, components, None).await
    }

    /// As [`App::build_with`], but the models start loading only once `gate` receives (or its
    /// sender is dropped): tests hold it to see what the worker does while models load.
    pub async fn build_gated(
        config: WorkerConfig,
        components: Components,
        gate: Option<std::sync::mpsc::Receiver<()>>,
    ) -> Result<Self, StartError> {
        let c = &config.common;
        let Backends {
            db,
            storage,
            events,
        } = components.resolve(c).await?;
        let (tx, rx) = watch::channel(None);
        let (dir, names) = (config.models_dir.clone(), config.models.clone());
        let loader = tokio::task::spawn_blocking(move || {
            if let Some(gate) = gate {
                let _ = gate.recv();
            }
            let started = Instant::now();
            let loaded = load_models(&dir, &names);
            match &loaded {
                Ok(_) => {
                    tracing::info!(models = ?names, ms = started.elapsed().as_millis() as u64, "models loaded")
                }
                Err(e) => tracing::error!(error = %e, "models failed to load"),
            }
            let _ = tx.send(Some(loaded));
        });
        let listener = Listener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr();
        let state = Arc::new(State {
            db,
            storage,
            events,
            limits: c.limits,
            lease: c.jobs.claim_lease,
            max_attempts: c.jobs.max_attempts,
            models: rx,
            inference: Semaphore::new(config.concurrency.max(1)),
            budget: MemoryBudget::new(config.memory_budget),
            admission: Semaphore::new(config.max_in_flight.max(1)),
            runs: Default::default(),
            jobs_done: watch::Sender::new(0),
            concurrency: config.concurrency.max(1),
            auth: PushAuth::new(config.push_auth.clone()),
            metrics: crate::metrics::Metrics::new(),
        });
        if !state.auth.config().enabled() && !addr.ip().is_loopback() {
            tracing::warn!(%addr, "push endpoint accepts unauthenticated requests; set BACKLESS_PUSH_OIDC_AUDIENCE or BACKLESS_PUSH_SECRET");
        }
        Ok(Self {
            listener,
            addr,
            state,
            loader,
            http: c.http,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> Arc<State> {
        Arc::clone(&self.state)
    }

    /// Serve until `shutdown` resolves, then let in-flight pushes finish (bounded).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let routes = Route::new()
            .at("/v1/tasks/remove-background", post(remove_background))
            .at("/healthz", poem::get(healthz))
            .at("/readyz", poem::get(readyz))
            .at("/metrics", poem::get(metrics))
            .data(Arc::clone(&self.state))
            .with(poem::middleware::Tracing);
        tracing::info!(addr = %self.addr, "worker listening");
        let trimmer = tokio::spawn(trim_when_idle(Arc::clone(&self.state)));
        let res = self
            .listener
            .serve(routes, self.http, shutdown, Duration::from_secs(60))
            .await;
        self.loader.abort();
        trimmer.abort();
        res
    }
}

/// How long the worker waits after a job for the next before giving its memory back.
const IDLE_TRIM: Duration = Duration::from_secs(2);

/// Once no job has finished for [`IDLE_TRIM`] and none is running, free the convolution
/// workspace and hand free heap pages back to the kernel (`memory::release_free_memory`), so an
/// idle worker holds only its models. Not after every job: the next image would fault the same
/// pages in again (U²-NetP: ~45,000 page faults, tens of ms), so back-to-back jobs reuse them and
/// the peak stays one image's working set.
async fn trim_when_idle(state: Arc<State>) {
    let mut done = state.jobs_done.subscribe();
    while done.changed().await.is_ok() {
        loop {
            match tokio::time::timeout(IDLE_TRIM, done.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return,
                Err(_) => break,
            }
        }
        if state.inference.available_permits() == state.concurrency {
            let _ = tokio::task::spawn_blocking(crate::memory::release_free_memory).await;
            state.metrics.memory_trims.inc();
        }
    }
}

fn load_models(dir: &std::path::Path, names: &[String]) -> Models {
    let device = default_device().map_err(|e| e.to_string())?;
    let mut models = HashMap::new();
    for name in names {
        let seg = Segmenter::load(dir, name, &device).map_err(|e| e.to_string())?;
        // Ready means ready: the first push should not pay for the first inference's set-up.
        seg.warm_up().map_err(|e| e.to_string())?;
        models.insert(name.clone(), Arc::new(seg));
    }
    Ok(Arc::new(models))
}

#[handler]
fn healthz() -> &'static str {
    "ok"
}

#[handler]
async fn readyz(Data(state): Data<&Arc<State>>) -> Response {
    let models_ready = matches!(*state.models.borrow(), Some(Ok(_)));
    let db_ready = state.db.ping().await.is_ok();
    if models_ready && db_ready {
        "ready".into_response()
    } else {
        let body = format!("not ready: models loaded {models_ready}, database {db_ready}");
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

#[handler]
fn metrics(Data(state): Data<&Arc<State>>) -> Response {
    let gauge = |bytes: u64| i64::try_from(bytes).unwrap_or(i64::MAX);
    let m = &state.metrics;
    m.memory_budget_bytes.set(gauge(state.budget.total()));
    m.memory_reserved_bytes.set(gauge(state.budget.used()));
    m.response()
}

#[derive(Debug, Deserialize)]
struct TaskBody {
    job_id: String,
}

/// How a push ended, as the queue must hear it.
enum Outcome {
    /// Finished (done, failed for good, or nothing to do): 200.
    Finished(&'static str),
    /// Worth retrying: 503 with Retry-After seconds.
    Retry(&'static str, u64),
    /// Not from the queue: 401.
    Unauthenticated,
}

impl Outcome {
    /// The `outcome` label in `backless_worker_pushes_total`.
    fn label(&self) -> String {
        match self {
            Outcome::Finished(what) => what.replace(' ', "_"),
            Outcome::Retry(..) => "retry".into(),
            Outcome::Unauthenticated => "unauthenticated".into(),
        }
    }
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        match self {
            Outcome::Finished(what) => Json(serde_json::json!({ "status": what })).into_response(),
            Outcome::Retry(why, after) => Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .header("Retry-After", after.to_string())
                .content_type("application/json")
                .body(serde_json::json!({ "status": "retry", "reason": why }).to_string()),
            Outcome::Unauthenticated => Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header("WWW-Authenticate", "Bearer")
                .content_type("application/json")
                .body(r#"{"status":"unauthenticated"}"#),
        }
    }
}

#[handler]
async fn remove_background(
    Data(state): Data<&Arc<State>>,
    headers: &HeaderMap,
    body: poem::Body,
) -> Outcome {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let span = tracing::info_span!(
        "push",
        job_id = tracing::field::Empty,
        task = %header("x-cloudtasks-taskname"),
        retry = %header("x-cloudtasks-taskretrycount"),
    );
    let outcome = async move {
        if let Err(e) = state.auth.check(headers).await {
            tracing::warn!(reason = %e, "push refused");
            return Outcome::Unauthenticated;
        }
        let Ok(_admitted) = state.admission.try_acquire() else {
            tracing::info!("at capacity; asking the queue to retry");
            return Outcome::Retry("busy", 5);
        };
        // The body is trusted for nothing but the job id.
        let bytes = body.into_bytes_limit(4096).await.unwrap_or_default();
        let Ok(TaskBody { job_id }) = serde_json::from_slice::<TaskBody>(&bytes) else {
            tracing::warn!("push without a readable job id; dropping it");
            return Outcome::Finished("ignored");
        };
        if !is_valid_job_id(&job_id) {
            tracing::warn!("push with a malformed job id; dropping it");
            return Outcome::Finished("ignored");
        }
        tracing::Span::current().record("job_id", job_id.as_str());
        let outcome = process(state, &job_id).await;
        tracing::info!(outcome = %outcome.label(), "push handled");
        outcome
    }
    .instrument(span)
    .await;
    state
        .metrics
        .pushes
        .with_label_values(&[outcome.label().as_str()])
        .inc();
    outcome
}

fn elapsed_ms(job: &Job) -> u64 {
    (chrono::Utc::now() - job.created_at)
        .num_milliseconds()
        .max(0) as u64
}

async fn publish(state: &State, job: &Job, stage: Stage) {
    publish_event(state, job, JobEvent::new(stage, elapsed_ms(job))).await;
}

async fn publish_event(state: &State, job: &Job, event: JobEvent) {
    let stage = event.stage;
    if let Err(e) = state.events.publish(&job.id, event).await {
        // Progress is best effort: the final state is in the database either way.
        tracing::warn!(error = %e, ?stage, "cannot publish progress");
    }
}

fn observe_stage(state: &State, name: &str, took: Duration) {
    state
        .metrics
        .stage_seconds
        .with_label_values(&[name])
        .observe(took.as_secs_f64());
}

/// Record a permanent failure and tell the watchers.
async fn fail(state: &State, job: &Job, code: &str, message: &str) -> Outcome {
    match state.db.mark_failed(&job.id, code, message).await {
        Ok(_) => {
            let event = JobEvent::failed(code, message, elapsed_ms(job));
            if let Err(e) = state.events.publish(&job.id, event).await {
                tracing::warn!(error = %e, "cannot publish failure");
            }
            tracing::info!(code, "job failed permanently");
            Outcome::Finished("failed")
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot record failure");
            Outcome::Retry("database", 5)
        }
    }
}

/// Give the job back and ask the queue to retry.
async fn retry(state: &State, job: &Job, why: &'static str) -> Outcome {
    if let Err(e) = state.db.release(&job.id).await {
        tracing::warn!(error = %e, "cannot release the claim; it expires with its lease");
    }
    Outcome::Retry(why, 5)
}

async fn process(state: &Arc<State>, job_id: &str) -> Outcome {
    let job = match state.db.get(job_id).await {
        Ok(Some(job)) => job,
        Ok(None) => return Outcome::Finished("gone"),
        Err(e) => {
            tracing::warn!(error = %e, "database unavailable");
            return Outcome::Retry("database", 5);
        }
    };
    if job.state.is_final() {
        return Outcome::Finished("already finished");
    }
    // Only a pipeline that removes the background waits for the models: a thumbnail runs at
    // once even while they load.
    let pipeline = job.options.pipeline();
    let models = match pipeline.model() {
        None => None,
        Some(_) => match state.models(Duration::from_secs(30)).await {
            None => return Outcome::Retry("models loading", 5),
            Some(Err(_)) => return Outcome::Retry("models unavailable", 30),
            Some(Ok(m)) => Some(m),
        },
    };
    match state.db.try_claim(job_id, state.lease).await {
        Ok(true) => {}
        Ok(false) => {
            // Finished meanwhile, or another delivery holds a live lease: come back later.
            return match state.db.get(job_id).await {
                Ok(Some(j)) if j.state.is_final() => Outcome::Finished("already finished"),
                Ok(None) => Outcome::Finished("gone"),
                _ => Outcome::Retry("another delivery is processing this job", 10),
            };
        }
        Err(e) => {
            tracing::warn!(error = %e, "database unavailable");
            return Outcome::Retry("database", 5);
        }
    }
    // The claim counted this delivery. Deliveries that hit a transient failure give their claim
    // back, so a job claimed this often has died with its worker each time: fail it, answering
    // 2xx, so the queue stops redelivering it into the same crash.
    let attempt = i64::from(job.attempts) + 1;
    if attempt > i64::from(state.max_attempts) {
        tracing::warn!(attempt, "job delivered too often; failing it");
        let msg = format!(
            "the job was attempted {} times without finishing",
            attempt - 1
        );
        return fail(state, &job, "too_many_attempts", &msg).await;
    }
    // The record is trusted no more than the push: a pipeline web never validated (a job planted
    // in the database, a record from an older version) is checked again.
    let known: Vec<String> = MODELS.iter().map(|m| m.to_string()).collect();
    if let Err(e) = Pipeline::new(pipeline.operations().to_vec(), &known) {
        return fail(state, &job, e.code(), &e.to_string()).await;
    }
    publish(state, &job, Stage::Received).await;
    let segmenter = match (pipeline.model(), &models) {
        (Some(name), Some(models)) => match models.get(name) {
            Some(seg) => Some(Arc::clone(seg)),
            None => {
                let msg = format!("the model {name:?} is not available on this worker");
                return fail(state, &job, "model_unavailable", &msg).await;
            }
        },
        _ => None,
    };
    let original = match state.storage.get_original(job_id).await {
        Ok(bytes) => bytes,
        Err(StorageError::NotFound(_)) => {
            return fail(
                state,
                &job,
                "original_missing",
                "the uploaded image is gone",
            )
            .await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "storage unavailable");
            return retry(state, &job, "storage").await;
        }
    };
    let background = if pipeline.needs_background() {
        match state.storage.get(&background_key(job_id)).await {
            Ok(bytes) => Some(bytes),
            Err(StorageError::NotFound(_)) => {
                let e = crate::pipeline::PipelineError::BackgroundMissing;
                return fail(state, &job, e.code(), &e.to_string()).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "storage unavailable");
                return retry(state, &job, "storage").await;
            }
        }
    } else {
        None
    };
    let Ok(_permit) = state.inference.acquire().await else {
        return retry(state, &job, "shutting down").await;
    };
    if segmenter.is_some() {
        state.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        state.metrics.model_runs.inc();
    }

    // Progress is heard on the blocking thread and forwarded from here.
    let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel();
    let limits = state.limits;
    let ops = pipeline.operations().to_vec();
    let budget = state.budget.clone();
    let run = tokio::task::spawn_blocking(move || {
        let out = ops::run_within(
            Some(&budget),
            &ops,
            &original,
            background.as_deref(),
            &limits,
            segmenter.as_deref(),
            |p| {
                let _ = progress_tx.send(p);
            },
        );
        drop(original);
        out
    });
    let ops = pipeline.operations();
    while let Some(p) = progress_rx.recv().await {
        match p {
            Progress::Decoded(took) => observe_stage(state, "decode", took),
            Progress::Started(i) => {
                let event = JobEvent::operation(ops[i].stage(), i, elapsed_ms(&job));
                publish_event(state, &job, event).await;
            }
            Progress::Segmented(took) => {
                let model = pipeline.model().unwrap_or_default();
                state
                    .metrics
                    .inference_seconds
                    .with_label_values(&[model])
                    .observe(took.as_secs_f64());
                let i = ops.iter().position(|op| op.name() == "remove_background");
                let event =
                    JobEvent::operation(Stage::Compositing, i.unwrap_or(0), elapsed_ms(&job));
                publish_event(state, &job, event).await;
            }
            Progress::Finished(i, took) => {
                tracing::info!(
                    op = ops[i].name(),
                    ms = took.as_millis() as u64,
                    "operation finished"
                );
                observe_stage(state, ops[i].name(), took);
            }
        }
    }
    let output = run.await;
    // The image's buffers are freed by now; `trim_when_idle` hands the pages back once no job
    // has finished for a while.
    state.jobs_done.send_modify(|n| *n += 1);
    let output = match output {
        Ok(Ok(out)) => out,
        Ok(Err(e)) if e.is_permanent() => return fail(state, &job, e.code(), &e.to_string()).await,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "processing failed");
            return retry(state, &job, "inference").await;
        }
        Err(e) => {
            tracing::error!(error = %e, "processing panicked");
            return fail(state, &job, "internal", "the image could not be processed").await;
        }
    };
    let content_type = output.content_type;
    if let Err(e) = state.storage.put_result(job_id, output.bytes.into()).await {
        tracing::warn!(error = %e, "cannot store the result");
        return retry(state, &job, "storage").await;
    }
    publish(state, &job, Stage::Stored).await;
    match state
        .db
        .mark_done(job_id, &result_key(job_id), content_type)
        .await
    {
        Ok(true) => {
            publish(state, &job, Stage::Done).await;
            tracing::info!("job done");
            Outcome::Finished("done")
        }
        // Not processing any more. Deleted while we worked: what we just stored goes too. Already
        // finished by another delivery (its lease ran out, and both ran): that job's files are
        // its result, and nothing is deleted.
        Ok(false) => match state.db.exists(job_id).await {
            Ok(false) => {
                if let Err(e) = state.storage.delete_job(job_id).await {
                    tracing::warn!(error = %e, "cannot delete a deleted job's result; the orphan sweep will");
                }
                Outcome::Finished("gone")
            }
            Ok(true) => {
                tracing::info!("another delivery finished the job first");
                Outcome::Finished("already finished")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell a deleted job from a finished one; keeping its files");
                Outcome::Finished("kept")
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot record the result");
            retry(state, &job, "database").await
        }
    }
}

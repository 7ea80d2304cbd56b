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

mod health;
mod job;
mod outcome;
mod push;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backless_common::db::Db;
use backless_common::events::Events;
use backless_common::limits::ImageLimits;
use backless_common::serve::Listener;
use backless_common::startup::Backends;
use backless_common::storage::Storage;
use poem::{EndpointExt, Route, post};
use tokio::sync::{Semaphore, watch};

use crate::auth::PushAuth;
use crate::budget::MemoryBudget;
use crate::config::WorkerConfig;
use crate::model::{Segmenter, default_device};

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
            .at("/v1/tasks/remove-background", post(push::remove_background))
            .at("/healthz", poem::get(health::healthz))
            .at("/readyz", poem::get(health::readyz))
            .at("/metrics", poem::get(health::metrics))
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

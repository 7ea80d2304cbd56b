//! BackLess's Cloud Tasks emulator: REST (for `google-cloud-tasks-v2`) and gRPC (for the
//! official Python/Go/Node clients) on one port, dispatch with the real service's
//! semantics (backoff, rate limits, deadlines, headers, OIDC), optionally durable in SQLite,
//! and embeddable in another process.
//!
//! ```no_run
//! # async fn demo() -> Result<(), backless_emulator::StartError> {
//! use backless_emulator::{Emulator, EmulatorConfig};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let config = EmulatorConfig {
//!     initial_queues: vec!["projects/dev/locations/local/queues/jobs".into()],
//!     ..EmulatorConfig::default()
//! };
//! let emulator = Emulator::start(listener, config).await?;
//! println!("Cloud Tasks at {}", emulator.url());
//! emulator.wait_idle().await;
//! emulator.shutdown().await;
//! # Ok(()) }
//! ```

pub mod api;
pub mod dispatch;
pub mod engine;
pub mod error;
pub mod model;
pub mod names;
pub mod oidc;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::engine::Engine;
pub use crate::error::{ApiError, Code};
pub use crate::oidc::OidcKey;

/// The emulator's configuration; `Default` runs locally with no setup.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Host to bind by [`Emulator::bind`] (default `127.0.0.1`).
    pub host: String,
    /// Port to bind by [`Emulator::bind`] (default 8123; 0 picks a free one).
    pub port: u16,
    /// Full queue names (`projects/P/locations/L/queues/Q`) created at start and on reset.
    pub initial_queues: Vec<String>,
    /// The OIDC issuer (`iss`, discovery document). Default: `http://<bound address>`.
    pub issuer: Option<String>,
    /// A SQLite file that keeps queues, queued tasks and tombstones across restarts.
    /// `None` keeps everything in memory.
    pub state_path: Option<PathBuf>,
    /// How long a finished or deleted task's name cannot be reused (the service: 24 h;
    /// zero disables de-duplication after completion).
    pub tombstone_ttl: Duration,
    /// Enforce `max_dispatches_per_second` (on, as the service; off for benchmarks).
    pub enforce_rate_limits: bool,
    /// A PEM RSA private key for OIDC tokens; `None` generates one at start.
    pub key_file: Option<PathBuf>,
    /// An already loaded key (takes precedence over `key_file`; tests share one).
    pub key: Option<OidcKey>,
    /// How long shutdown waits for in-flight dispatches before putting them back.
    pub shutdown_grace: Duration,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8123,
            initial_queues: Vec::new(),
            issuer: None,
            state_path: None,
            tombstone_ttl: Duration::from_secs(24 * 3600),
            enforce_rate_limits: true,
            key_file: None,
            key: None,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding the listener: {0}")]
    Bind(#[from] std::io::Error),
    #[error("OIDC key: {0}")]
    Key(#[from] oidc::OidcError),
    #[error("state store: {0}")]
    Store(#[from] store::StoreError),
    #[error("configuration: {0}")]
    Config(#[from] ApiError),
}

/// Starts emulators.
#[derive(Debug)]
pub struct Emulator;

impl Emulator {
    /// Binds `config.host:config.port` and starts.
    pub async fn bind(config: EmulatorConfig) -> Result<EmulatorHandle, StartError> {
        let listener = TcpListener::bind((config.host.as_str(), config.port)).await?;
        Self::start(listener, config).await
    }

    /// Starts serving REST and gRPC on `listener` and dispatching, inside this process.
    pub async fn start(
        listener: TcpListener,
        config: EmulatorConfig,
    ) -> Result<EmulatorHandle, StartError> {
        let addr = listener.local_addr()?;
        let key = match (config.key.clone(), config.key_file.clone()) {
            (Some(k), _) => k,
            (None, Some(path)) => OidcKey::from_pem_file(&path)?,
            (None, None) => tokio::task::spawn_blocking(OidcKey::generate)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))??,
        };
        let store: Box<dyn store::Store> = match &config.state_path {
            Some(path) => Box::new(store::SqliteStore::open(path)?),
            None => Box::new(store::MemoryStore),
        };
        let settings = engine::EngineSettings {
            tombstone_ttl: config.tombstone_ttl,
            enforce_rate_limits: config.enforce_rate_limits,
            issuer: config
                .issuer
                .clone()
                .unwrap_or_else(|| format!("http://{addr}")),
            initial_queues: config.initial_queues.clone(),
        };
        let engine = Engine::new(store, settings, key)?;
        let scheduler = tokio::spawn(Arc::clone(&engine).run_scheduler());
        let app = api::router(Arc::clone(&engine));
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "emulator server failed");
            }
        });
        tracing::info!(%addr, issuer = %engine.settings().issuer, durable = config.state_path.is_some(), "Cloud Tasks emulator listening (REST and gRPC)");
        Ok(EmulatorHandle {
            addr,
            engine,
            stop,
            server,
            scheduler,
            grace: config.shutdown_grace,
        })
    }
}

/// A running emulator.
#[derive(Debug)]
pub struct EmulatorHandle {
    addr: SocketAddr,
    engine: Arc<Engine>,
    stop: CancellationToken,
    server: JoinHandle<()>,
    scheduler: JoinHandle<()>,
    grace: Duration,
}

impl EmulatorHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`: the endpoint for clients (REST and gRPC).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The OIDC issuer; its discovery document is `<issuer>/.well-known/openid-configuration`.
    pub fn issuer(&self) -> &str {
        &self.engine.settings().issuer
    }

    /// The engine, for direct calls.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Waits until no dispatch is in flight and every running queue is empty.
    pub async fn wait_idle(&self) {
        self.engine.wait_idle().await
    }

    /// Drops every queue, task and tombstone and creates the initial queues again.
    pub fn reset(&self) -> Result<(), ApiError> {
        self.engine.reset()
    }

    /// Serves until `signal` completes, then shuts down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        signal.await;
        self.shutdown().await
    }

    /// The one shutdown path: stop accepting requests, stop scheduling, let in-flight
    /// dispatches finish within the grace period and put the others back.
    pub async fn shutdown(self) {
        tracing::info!("emulator shutting down");
        self.stop.cancel();
        self.engine.shutdown(self.grace).await;
        let _ = self.scheduler.await;
        let mut server = self.server;
        if tokio::time::timeout(self.grace, &mut server).await.is_err() {
            server.abort();
        }
        tracing::info!("emulator stopped");
    }
}

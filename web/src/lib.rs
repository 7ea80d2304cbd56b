//! BackLess web: upload pages, the REST API under `/v1` and live progress over SSE.
//!
//! [`App::build`] wires configuration to components and binds the listener (port 0 in tests);
//! [`App::run_until_stopped`] serves until the shutdown future resolves, then drains.

pub mod api;
pub mod config;
pub mod error;
pub mod identity;
pub mod keys;
pub mod lifecycle;
pub mod metrics;
pub mod pages;
pub mod ratelimit;
pub mod removebg;
pub mod security;
pub mod upload;
pub mod watcher;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use backless_common::serve::Listener;
use backless_common::startup::Backends;
use backless_common::tasks::TaskQueue;
use poem::middleware::Tracing;
use poem::{EndpointExt, Route};
use poem_openapi::OpenApiService;
use tracing::Instrument;

pub use backless_common::startup::{Components, StartError};
pub use config::WebConfig;

use crate::api::config::ConfigApi;
use crate::api::health::HealthApi;
use crate::api::jobs::JobsApi;
use crate::identity::Signer;
use crate::lifecycle::Shared;

/// A bound, not yet serving, web app.
pub struct App {
    listener: Listener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    config: WebConfig,
    signer: Signer,
    keys: Arc<keys::Keys>,
}

/// How often web hands freed heap pages back to the system.
const HEAP_TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// How long in-flight requests (SSE streams included) get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(10);

impl App {
    pub async fn build(config: WebConfig) -> Result<Self, StartError> {
        Self::build_with(config, Components::default()).await
    }

    pub async fn build_with(config: WebConfig, components: Components) -> Result<Self, StartError> {
        let c = &config.common;
        let Backends {
            db,
            storage,
            events,
        } = components.resolve(c).await?;
        if matches!(
            config.result_delivery,
            config::ResultDelivery::Redirect { .. }
        ) && !storage.can_sign()
        {
            // Refuse to start rather than fail every download later.
            return Err(StartError::Storage(
                backless_common::storage::StorageError::CannotSign(storage.url().to_string()),
            ));
        }
        let tasks = Arc::new(TaskQueue::new(c.tasks.clone()));
        if c.tasks.ensure_queue
            && let Err(e) = tasks.ensure_queue().await
        {
            tracing::warn!(error = %e, "cannot ensure the task queue yet; the outbox will retry");
        }
        let shared = Arc::new(Shared::new(
            db,
            storage,
            events,
            tasks,
            c.jobs.grace,
            c.jobs.unwatched_ttl,
            config.sse_poll,
        ));
        let signer = Signer::new(config.cookie_secret.clone(), config.cookie_secure);
        let keys = Arc::new(keys::Keys::new(
            shared.db.clone(),
            &config.api.env_keys,
            config.api.env_key_quota,
        ));
        let listener = Listener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr();
        Ok(Self {
            listener,
            addr,
            shared,
            config,
            signer,
            keys,
        })
    }

    /// The bound address (the real port when configured with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Database, storage, events and queue, as the app uses them.
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    fn routes(&self) -> impl poem::Endpoint + 'static {
        let c = &self.config;
        let api = OpenApiService::new(
            (
                JobsApi {
                    shared: Arc::clone(&self.shared),
                    signer: self.signer.clone(),
                    limits: c.common.limits,
                    max_live_per_client: c.common.jobs.max_live_per_client,
                    keep_alive: c.sse_keep_alive,
                    max_stream_lifetime: c.sse_max_lifetime,
                    result_delivery: c.result_delivery,
                    addr_quotas: c.addr_quotas,
                    max_live_per_key: c.api.max_live_per_key,
                    models: c.models.clone(),
                },
                ConfigApi {
                    limits: c.common.limits,
                    models: c.models.clone(),
                    max_live_per_client: c.common.jobs.max_live_per_client,
                    grace: c.common.jobs.grace,
                },
                HealthApi {
                    shared: Arc::clone(&self.shared),
                },
                removebg::RemoveBgApi {
                    shared: Arc::clone(&self.shared),
                    limits: c.common.limits,
                    api: c.api.clone(),
                    fetcher: removebg::fetch::Fetcher::new(
                        c.api.url_allow_hosts.clone(),
                        c.api.url_timeout,
                        c.common.limits.max_bytes,
                    ),
                    model: if c
                        .models
                        .iter()
                        .any(|m| m == backless_common::job::DEFAULT_MODEL)
                        || c.models.is_empty()
                    {
                        backless_common::job::DEFAULT_MODEL.to_string()
                    } else {
                        c.models[0].clone()
                    },
                    models: c.models.clone(),
                },
            ),
            "BackLess",
            env!("CARGO_PKG_VERSION"),
        )
        .description("Remove the background from a photo: upload, watch progress live, download.");
        let spec = api.spec_endpoint();
        let ui_html = api.swagger_ui_html();
        let ui = poem::endpoint::make_sync(move |_| poem::web::Html(ui_html.clone()));
        // Multipart framing on top of the largest accepted file; base64 bodies of the remove.bg
        // API are a third larger.
        let max = c.common.limits.max_bytes;
        let body_limit = max.saturating_add(1024 * 1024);
        let removebg_limit = (max / 3).saturating_mul(4).saturating_add(2 * 1024 * 1024);
        let limiter = ratelimit::Limiter::new(c.rate_limits.clone(), self.signer.clone());
        let api = Arc::new(poem::IntoEndpoint::into_endpoint(api));
        let with_keys = |ep: Arc<poem::endpoint::BoxEndpoint<'static>>| {
            let (keys, signer, limiter) = (
                Arc::clone(&self.keys),
                self.signer.clone(),
                Arc::clone(&limiter),
            );
            EndpointExt::around(ep, move |ep, req| {
                ratelimit::limit(ep, req, Arc::clone(&limiter))
            })
            .around(move |ep, req| keys::authenticate(ep, req, Arc::clone(&keys), signer.clone()))
        };
        let bounded = |limit: u64, removebg: bool| {
            Arc::new(
                EndpointExt::around(Arc::clone(&api), move |ep, req| {
                    limit_body(ep, req, limit, removebg)
                })
                .boxed(),
            )
        };
        let plain = bounded(body_limit, false);
        let rbg = bounded(removebg_limit, true);
        pages::mount(Route::new())
            .at("/docs", ui)
            .at("/openapi.json", spec)
            .at("/healthz", Arc::clone(&plain))
            .at("/readyz", Arc::clone(&plain))
            .at(
                "/metrics",
                poem::get(metrics_endpoint).data(Arc::clone(&self.shared)),
            )
            .nest_no_strip("/v1", with_keys(plain))
            .nest_no_strip("/v1.0", with_keys(rbg))
            .around(security::protect)
            .with(Tracing)
    }

    /// Serve until `shutdown` resolves; then stop accepting, let in-flight requests finish (bounded)
    /// and stop the background loops.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // Freed memory back to the system after bursts (streams opening, uploads): see
        // `backless_common::memory`.
        let trim = tokio::spawn(backless_common::memory::trim_periodically(
            HEAP_TRIM_INTERVAL,
            stop_rx.clone(),
        ));
        let loops = if self.config.background_loops {
            let shared = Arc::clone(&self.shared);
            let times = lifecycle::LoopTimes {
                outbox: self.config.outbox_interval,
                sweep: self.config.sweep_interval,
                orphan_sweep: self.config.orphan_sweep_interval,
                orphan_grace: self.config.orphan_grace,
            };
            Some(tokio::spawn(
                lifecycle::background_loops(shared, times, stop_rx)
                    .instrument(tracing::info_span!("web-background")),
            ))
        } else {
            None
        };
        let routes = self.routes();
        tracing::info!(addr = %self.addr, "web listening");
        let res = self
            .listener
            .serve(routes, self.config.common.http, shutdown, DRAIN)
            .await;
        let _ = stop_tx.send(true);
        if let Some(h) = loops {
            let _ = h.await;
        }
        let _ = trim.await;
        res
    }
}

/// 413 before reading a body that declares more than `limit` bytes; a body without a length is
/// counted as it streams through (never buffered here) and cut off past the limit, answered 413.
async fn limit_body<E: poem::Endpoint>(
    ep: Arc<E>,
    mut req: poem::Request,
    limit: u64,
    removebg: bool,
) -> poem::Result<poem::Response> {
    use futures::StreamExt;
    use poem::IntoResponse;
    use std::sync::atomic::{AtomicBool, Ordering};
    let declared = req
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        let e = error::WebError::FileTooLarge {
            max_bytes: limit.saturating_sub(1024 * 1024),
        };
        if removebg {
            removebg::ApiError::from(e).into_response()
        } else {
            error::ErrorResponse::from(e).into_response()
        }
    };
    let exceeded = Arc::new(AtomicBool::new(false));
    match declared {
        Some(n) if n > limit => return Ok(too_large()),
        Some(_) => {}
        None => {
            let flag = Arc::clone(&exceeded);
            let mut seen = 0u64;
            let body = req.take_body().into_bytes_stream().map(move |chunk| {
                let chunk = chunk?;
                seen = seen.saturating_add(chunk.len() as u64);
                if seen > limit {
                    flag.store(true, Ordering::Relaxed);
                    return Err(std::io::Error::other("request body over the size limit"));
                }
                Ok(chunk)
            });
            req.set_body(poem::Body::from_bytes_stream(body));
        }
    }
    let resp = ep.call(req).await;
    if exceeded.load(Ordering::Relaxed) {
        return Ok(too_large());
    }
    Ok(resp?.into_response())
}

/// `GET /metrics`: Prometheus text; jobs by state are read from the database now.
#[poem::handler]
async fn metrics_endpoint(shared: poem::web::Data<&Arc<Shared>>) -> poem::Response {
    use backless_common::db::JobState;
    for state in [
        JobState::Queued,
        JobState::Processing,
        JobState::Done,
        JobState::Failed,
    ] {
        if let Ok(n) = shared.db.count_in_state(state).await {
            let label = serde_json::to_value(state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            shared
                .metrics
                .jobs
                .with_label_values(&[label.as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    shared.metrics.response()
}

//! `backless-dev`: the whole service on embedded defaults in one process — the Cloud Tasks
//! emulator, the worker and web, sharing one in-process event bus, with SQLite and a local
//! storage folder. What the README's first command runs. A crate of its own, so that no service
//! depends on another: each service's binary carries only itself.

use std::sync::Arc;

use backless_common::config::{FromSettings, Settings};
use backless_common::events::{Events, InProcessEvents};
use backless_emulator::{Emulator, EmulatorConfig};

use backless_worker::config::WorkerConfig;

/// The service account the dev queue's tokens name, and their audience.
const DEV_SERVICE_ACCOUNT: &str = "backless-dev@dev.iam.gserviceaccount.com";
const DEV_AUDIENCE: &str = "backless-worker";

/// Start the three services and serve until ctrl-c / SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    // The emulator first: web's tasks go there and its dispatches come to the worker.
    let emu_port: u16 = settings
        .get("BACKLESS_EMULATOR_PORT")
        .map_or(Ok(8123), str::parse)
        .map_err(|e| anyhow::anyhow!("BACKLESS_EMULATOR_PORT: {e}"))?;
    let emulator = Emulator::bind(EmulatorConfig {
        port: emu_port,
        state_path: settings.get("BACKLESS_EMULATOR_STATE").map(Into::into),
        ..EmulatorConfig::default()
    })
    .await?;

    // Pushes carry OIDC tokens signed by the emulator, and the worker verifies them against the
    // emulator's JWKS: the same path as Cloud Tasks → Cloud Run, on loopback.
    let settings = settings
        .with_default("BACKLESS_TASKS_SERVICE_ACCOUNT", DEV_SERVICE_ACCOUNT)
        .with_default("BACKLESS_TASKS_AUDIENCE", DEV_AUDIENCE)
        .with_default("BACKLESS_PUSH_OIDC_AUDIENCE", DEV_AUDIENCE)
        .with_default("BACKLESS_PUSH_OIDC_EMAIL", DEV_SERVICE_ACCOUNT)
        .with_default("BACKLESS_PUSH_OIDC_ISSUER", emulator.issuer());
    let events: Arc<dyn Events> = Arc::new(InProcessEvents::default());
    let worker_cfg = WorkerConfig::from_settings(&settings)?;
    let worker = backless_worker::server::App::build_with(
        worker_cfg,
        backless_worker::server::Components {
            events: Some(Arc::clone(&events)),
            ..Default::default()
        },
    )
    .await?;

    // Web enqueues to the emulator, targeting the worker just bound.
    let web_settings = settings
        .with("BACKLESS_TASKS_ENDPOINT", emulator.url())
        .with("BACKLESS_WORKER_URL", format!("http://{}", worker.addr()))
        .with_default("BACKLESS_TASKS_ENSURE_QUEUE", "true");
    let web_cfg = backless_web::WebConfig::from_settings(&web_settings)?;
    let web = backless_web::App::build_with(
        web_cfg,
        backless_web::Components {
            events: Some(events),
            ..Default::default()
        },
    )
    .await?;

    let url = format!("http://{}", web.addr());
    eprintln!(
        "\n  BackLess is running: open {url}\n  (worker {}, Cloud Tasks emulator {})\n",
        worker.addr(),
        emulator.url()
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let worker_task = tokio::spawn(worker.run_until_stopped(stopped(stop_rx.clone())));
    let web_task = tokio::spawn(web.run_until_stopped(stopped(stop_rx)));
    backless_common::shutdown::signal().await;
    eprintln!("shutting down");
    let _ = stop_tx.send(true);
    let _ = web_task.await;
    let _ = worker_task.await;
    emulator.shutdown().await;
    Ok(())
}

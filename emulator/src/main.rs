//! The emulator binary: a shim over the library. Accepts the Go emulator's flags
//! (`-host`, `-port`, `-queue`, `-openid-issuer`) and environment variables too.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use backless_emulator::{Emulator, EmulatorConfig};
use clap::Parser;

/// Cloud Tasks emulator: REST and gRPC on one port.
#[derive(Debug, Parser)]
#[command(name = "backless-emulator", version)]
struct Cli {
    /// Host to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (REST and gRPC).
    #[arg(long, env = "PORT", default_value_t = 8123)]
    port: u16,
    /// A queue to create at start (full name); repeatable. `-initial-queue` too.
    #[arg(
        long = "queue",
        alias = "initial-queue",
        env = "INITIAL_QUEUE",
        value_delimiter = ','
    )]
    queues: Vec<String>,
    /// OIDC issuer URL (default: http://<host>:<port>).
    #[arg(long = "openid-issuer", env = "OPENID_ISSUER")]
    openid_issuer: Option<String>,
    /// SQLite file keeping queues, queued tasks and tombstones across restarts.
    #[arg(long = "state", env = "EMULATOR_STATE")]
    state: Option<PathBuf>,
    /// Seconds a finished or deleted task's name stays taken (0: no de-duplication).
    #[arg(
        long = "tombstone-ttl",
        env = "EMULATOR_TOMBSTONE_TTL",
        default_value_t = 86_400
    )]
    tombstone_ttl: u64,
    /// PEM RSA private key for OIDC tokens (default: a new key each start).
    #[arg(long = "oidc-key", env = "EMULATOR_OIDC_KEY")]
    oidc_key: Option<PathBuf>,
    /// Do not enforce queues' max_dispatches_per_second (benchmarks).
    #[arg(long = "no-rate-limits", env = "EMULATOR_NO_RATE_LIMITS")]
    no_rate_limits: bool,
    /// Seconds shutdown waits for in-flight dispatches before putting them back.
    #[arg(
        long = "shutdown-grace",
        env = "EMULATOR_SHUTDOWN_GRACE",
        default_value_t = 10
    )]
    shutdown_grace: u64,
    /// Accepted for compatibility with the Go emulator; purge always deletes every task.
    #[arg(long = "hard-reset-on-purge-queue", hide = true)]
    hard_reset_on_purge_queue: bool,
}

/// Turns Go-style single-dash long flags (`-port 8123`) into `--port 8123`.
fn go_style_args(args: impl Iterator<Item = String>) -> Vec<String> {
    args.enumerate()
        .map(|(i, a)| {
            let long = a.len() > 2 && a.starts_with('-') && !a.starts_with("--");
            if i > 0 && long { format!("-{a}") } else { a }
        })
        .collect()
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,backless_emulator=info".into()),
        )
        .init();
    let cli = Cli::parse_from(go_style_args(std::env::args()));
    let config = EmulatorConfig {
        host: cli.host,
        port: cli.port,
        initial_queues: cli.queues.into_iter().filter(|q| !q.is_empty()).collect(),
        issuer: cli.openid_issuer,
        state_path: cli.state,
        tombstone_ttl: Duration::from_secs(cli.tombstone_ttl),
        enforce_rate_limits: !cli.no_rate_limits,
        key_file: cli.oidc_key,
        key: None,
        shutdown_grace: Duration::from_secs(cli.shutdown_grace),
    };
    let _ = cli.hard_reset_on_purge_queue;
    let emulator = Emulator::bind(config)
        .await
        .context("starting the emulator")?;
    emulator.run_until(shutdown_signal()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_go_emulator_flags() {
        let args = [
            "emu",
            "-host",
            "0.0.0.0",
            "-port",
            "9000",
            "-queue",
            "projects/p/locations/l/queues/a",
            "-queue",
            "projects/p/locations/l/queues/b",
            "-openid-issuer",
            "http://x",
        ];
        let cli = Cli::parse_from(go_style_args(args.iter().map(|s| s.to_string())));
        assert_eq!(cli.host, "0.0.0.0");
        assert_eq!(cli.port, 9000);
        assert_eq!(cli.queues.len(), 2);
        assert_eq!(cli.openid_issuer.as_deref(), Some("http://x"));
    }
}

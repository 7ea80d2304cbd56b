//! `web`: the BackLess web service. All start-up logic lives in the library.
//!
//! `web` (or `web serve`) serves; `web migrate` runs the pending database migrations and exits;
//! `web keys create|list|revoke` manages API keys.

use anyhow::Context;
use backless_common::config::FromSettings;
use backless_web::{App, WebConfig};

const USAGE: &str = "usage: web [serve | migrate | keys create --name NAME [--quota-per-day N] | keys list | keys revoke NAME]
(configured by BACKLESS_* variables)";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    backless_common::telemetry::init("info");
    let command = std::env::args().nth(1);
    match command.as_deref() {
        None | Some("serve") => serve().await,
        Some("migrate") => migrate().await,
        Some("keys") => {
            let config = WebConfig::from_env().context("reading configuration")?;
            let args: Vec<String> = std::env::args().skip(2).collect();
            let out = backless_web::keys::command(&config, &args)
                .await
                .map_err(|e| anyhow::anyhow!("{e}\n{USAGE}"))?;
            print!("{out}");
            Ok(())
        }
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => anyhow::bail!("unknown command {other:?}\n{USAGE}"),
    }
}

async fn serve() -> anyhow::Result<()> {
    let config = WebConfig::from_env().context("reading configuration")?;
    let app = App::build(config).await.context("starting web")?;
    app.run_until_stopped(backless_common::shutdown::signal())
        .await?;
    Ok(())
}

async fn migrate() -> anyhow::Result<()> {
    let config = WebConfig::from_env().context("reading configuration")?;
    let applied = backless_common::db::migrate(&config.common.database)
        .await
        .context("migrating the database")?;
    backless_common::db::report_migrations(&applied);
    Ok(())
}

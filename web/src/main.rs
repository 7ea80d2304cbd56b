//! `web`: the BackLess web service. All start-up logic lives in the library.

use anyhow::Context;
use backless_web::{App, WebConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    backless_common::telemetry::init("info");
    let config = WebConfig::from_env().context("reading configuration")?;
    let app = App::build(config).await.context("starting web")?;
    app.run_until_stopped(backless_common::shutdown::signal())
        .await?;
    Ok(())
}

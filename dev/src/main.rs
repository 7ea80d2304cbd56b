use std::process::ExitCode;

/// `backless-dev`: the whole service on embedded defaults (see the crate docs); settings are
/// `BACKLESS_*` variables, as for each service.
fn main() -> ExitCode {
    backless_common::telemetry::init("info");
    backless_worker::memory::tune_malloc();
    let run = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(backless_dev::run(
                backless_common::config::Settings::from_env(),
            ))
        });
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

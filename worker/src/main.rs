use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    backless_common::telemetry::init("info");
    backless_worker::memory::tune_malloc();
    match backless_worker::cli::run(backless_worker::cli::Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

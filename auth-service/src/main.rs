//! Entry point: parse the command line, set up logging, run.

use clap::Parser as _;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = auth_service::cli::Cli::parse();
    shared::telemetry::init(cli.config.log_format, "info,sqlx=warn");
    match auth_service::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

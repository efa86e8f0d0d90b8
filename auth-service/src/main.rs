//! Entry point: parse the command line, set up logging, run.

use clap::Parser as _;
use std::process::ExitCode;

/// mimalloc instead of the system allocator: request handling allocates many
/// small, short-lived objects across threads, and glibc's malloc was a
/// visible share of auth-service's CPU in `perf` profiles of minting.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A single-threaded runtime: this thread is one of the serving threads, and
/// `Application::run_until_stopped` starts the others, each with its own.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = auth_service::cli::Cli::parse();
    shared::telemetry::init(cli.config.common.log_format, "info,sqlx=warn");
    match auth_service::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

//! Entry point: parse configuration, set up logging, serve until SIGTERM.

use clap::Parser as _;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = ws_node::config::Config::parse();
    shared::telemetry::init(config.log_format, "info");
    // Every socket is a file descriptor: use all the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let result = async {
        let app = ws_node::Application::build(config).await?;
        app.run_until_stopped(shared::net::shutdown_signal()).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

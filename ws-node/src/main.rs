//! Entry point: parse configuration, set up logging, serve until SIGTERM.

use clap::Parser as _;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = ws_node::config::Config::parse();
    shared::telemetry::init(config.log_format, "info");
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

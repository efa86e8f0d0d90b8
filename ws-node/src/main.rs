//! Entry point: parse configuration, set up logging, serve until SIGTERM.

use clap::Parser as _;
use std::process::ExitCode;

/// jemalloc instead of glibc's malloc: accepting a WebSocket allocates and
/// frees many small objects across the runtime's threads, and glibc's
/// malloc/free took ~8 % of the machine in handshake profiles. With jemalloc,
/// ws-node spent ~21 % less CPU over the handshake scenario (accepting and
/// closing 24 000 connections) and as much as before over fan-out, with the
/// same RSS per idle connection (~5.6 KiB). mimalloc, tried before, raised that to ~7.2 KiB
/// (BENCHMARKS.md has the runs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = ws_node::config::Config::parse();
    shared::telemetry::init(config.common.log_format, "info");
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

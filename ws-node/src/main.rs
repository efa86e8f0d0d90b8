//! Entry point: parse configuration, set up logging, serve until SIGTERM.

use clap::Parser as _;
use std::process::ExitCode;

/// jemalloc instead of glibc's malloc: accepting a WebSocket allocates and
/// frees many small objects across the runtime's threads, where glibc's
/// malloc/free stood out in `perf` profiles of the handshake scenario. With
/// jemalloc, ws-node spent clearly less CPU there, as much as before on
/// fan-out, and the same memory per idle connection; mimalloc, tried too,
/// raised the memory per idle connection (alternating runs of the benchmark's
/// handshake, fan-out and idle scenarios decided it).
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

//! `tessera-bench`: starts a local stack (auth-service, ws-node × K, on the
//! machine's Postgres and Redis), drives it through its public interfaces only
//! (API key → ticket → WebSocket, protocol frames, HTTP), and writes a report.
//!
//! One process cannot hold more than ~20 000 sockets here, so the connections
//! are opened by client *worker* processes: this same binary, started with the
//! hidden `worker` subcommand, each on its own 127.0.0.x source address.
//! `main` only parses the command line and dispatches.

mod client;
mod endpoints;
mod hist;
mod plan;
mod proc;
mod reference;
mod report;
mod scenarios;
mod stack;
mod worker;

use clap::{Args, Parser, Subcommand};

/// The workers allocate and free a buffer set per connection and per frame;
/// glibc malloc spent more CPU on that than the servers spent on the work.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "tessera-bench",
    version,
    about = "Benchmark harness for tessera: starts the stack, runs load scenarios, writes a report"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the stack locally, run the scenarios, write `<out>/report.{json,md}`.
    Run(RunArgs),
    /// Internal: one client process of a scenario (job as JSON, events as JSON lines on stdout).
    #[command(hide = true)]
    Worker {
        /// The job, as JSON (see `worker::Job`).
        #[arg(long)]
        job: String,
    },
    /// Internal: the reference broadcast server the stack is measured against.
    #[command(hide = true)]
    Reference {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

/// Options of `run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// About one minute in total: small counts, short windows; figures are indicative only.
    #[arg(long, conflicts_with_all = ["full", "smoke"])]
    pub quick: bool,
    /// The real figures, at the sizes the targets are stated for (the default).
    #[arg(long, conflicts_with_all = ["quick", "smoke"])]
    pub full: bool,
    /// Tiny sizes for CI: a few hundred connections, a few seconds per scenario.
    #[arg(long, conflicts_with_all = ["quick", "full"])]
    pub smoke: bool,
    /// Run only these scenarios (comma-separated): handshake, fanout, latency, rooms, idle, mint, login-storm, credential-flood.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<scenarios::ScenarioKind>,
    /// Where report.json, report.md and the services' logs are written.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Directory holding the `auth-service` and `ws-node` binaries
    /// (default: the directory of this executable if they are there, else
    /// `target/release` of the workspace).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Postgres server (no database name): a throwaway database is created on it and dropped.
    #[arg(
        long,
        env = "BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub postgres_url: String,
    /// Redis server; every key the run creates carries a unique prefix and is deleted afterwards.
    #[arg(
        long,
        env = "BENCH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Extra environment for auth-service, `KEY=VALUE`, repeatable; applied
    /// after the bench's own settings (e.g. `--auth-env HASH_CONCURRENCY=1`).
    #[arg(long = "auth-env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub auth_env: Vec<(String, String)>,
    /// Extra environment for every ws-node, `KEY=VALUE`, repeatable.
    #[arg(long = "node-env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub node_env: Vec<(String, String)>,
    /// Mint load generator: `wrk` (if installed; leanest, so the server gets the CPU), `rust`, or `auto`.
    #[arg(long, default_value = "auto")]
    pub mint_client: scenarios::mint::MintClient,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    say(format!("cannot start the runtime: {e}"));
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(scenarios::run(args)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(2),
                Err(e) => {
                    say(format!("error: {e:#}"));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Reference { listen } => match reference::main(listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                say(format!("reference server error: {e:#}"));
                ExitCode::FAILURE
            }
        },
        Command::Worker { job } => match worker::main(&job) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                say(format!("worker error: {e:#}"));
                ExitCode::FAILURE
            }
        },
    }
}

/// Progress for the person running the bench; stdout is reserved for data
/// (the workers' JSON lines).
#[allow(clippy::print_stderr)]
pub fn say(message: impl std::fmt::Display) {
    eprintln!("[tessera-bench] {message}");
}

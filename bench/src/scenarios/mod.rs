//! The scenarios and the `run` command that strings them together: start the
//! stack, run each scenario (each on freshly started nodes, bounded in time,
//! its failure recorded rather than fatal), stop everything, write the report.

pub mod fanout;
pub mod flood;
pub mod handshake;
pub mod idle;
pub mod mint;
pub mod shards;

use crate::RunArgs;
use crate::plan::{Plan, Size};
use crate::report::{Report, ScenarioReport};
use crate::say;
use crate::stack::Stack;
use anyhow::Context as _;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioKind {
    Handshake,
    Fanout,
    Latency,
    Rooms,
    Shards,
    Idle,
    Mint,
    LoginStorm,
    CredentialFlood,
}

const ALL: [ScenarioKind; 9] = [
    ScenarioKind::Handshake,
    ScenarioKind::Fanout,
    ScenarioKind::Latency,
    ScenarioKind::Rooms,
    ScenarioKind::Shards,
    ScenarioKind::Idle,
    ScenarioKind::Mint,
    ScenarioKind::LoginStorm,
    ScenarioKind::CredentialFlood,
];

/// The workspace the bench was built from: for `git` and the default `--bin-dir`.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// This executable's directory if the services were built next to it (a
/// release build of the workspace), else the workspace's `target/release`.
fn default_bin_dir() -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .filter(|dir| dir.join("auth-service").is_file() && dir.join("ws-node").is_file());
    beside.unwrap_or_else(|| workspace_root().join("target").join("release"))
}

/// The longest one scenario may take before it is abandoned.
fn scenario_limit(size: Size) -> Duration {
    Duration::from_secs(match size {
        Size::Smoke => 90,
        Size::Quick => 180,
        Size::Full => 900,
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `tessera-bench run`. `Ok(true)` when every scenario produced its figures
/// (whether or not they met their targets).
pub async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let size = if args.quick {
        Size::Quick
    } else if args.smoke {
        Size::Smoke
    } else {
        Size::Full
    };
    let plan = Plan::new(size);
    let kinds: Vec<ScenarioKind> = if args.only.is_empty() {
        ALL.to_vec()
    } else {
        ALL.into_iter().filter(|k| args.only.contains(k)).collect()
    };
    let bin_dir = args.bin_dir.clone().unwrap_or_else(default_bin_dir);
    let log_dir = args.out.join("logs");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    // The parent holds the publisher's and HTTP clients' sockets.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let command_line = std::env::args()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ");
    say(format!(
        "size {size:?}, scenarios {kinds:?}, binaries from {}",
        bin_dir.display()
    ));

    let busy_before = crate::proc::machine_busy_percent(Duration::from_secs(1)).await;
    if busy_before > 25.0 {
        say(format!(
            "warning: the CPUs were {busy_before:.0} % busy before the run; figures will be low"
        ));
    }
    // Read now, not after the run: the commit and work tree are what the
    // binaries were built from, and the date is when the run began.
    let machine = crate::proc::machine_info(&workspace_root(), busy_before);
    let started = Instant::now();
    let mut stack = Stack::new(
        bin_dir,
        log_dir,
        args.postgres_url.clone(),
        args.redis_url.clone(),
        args.auth_env.clone(),
        args.node_env.clone(),
    )?;
    let mut reports = Vec::new();
    let outcome = tokio::select! {
        result = run_scenarios(&mut stack, &plan, &kinds, &args, &mut reports) => result,
        () = interrupted() => Err(anyhow::anyhow!("interrupted")),
    };
    say("stopping the stack");
    stack.shutdown().await;

    let report = Report {
        size,
        command_line,
        machine,
        stack: stack.info(),
        total_seconds: started.elapsed().as_secs_f64(),
        scenarios: reports,
    };
    report.write(&args.out)?;
    print_summary(&report, &args.out);
    outcome?;
    Ok(report.scenarios.iter().all(|s| s.error.is_none()))
}

#[allow(clippy::print_stdout)]
fn print_summary(report: &Report, out: &Path) {
    println!("\n{}", report.summary_table());
    println!(
        "Report written to {} and {}",
        out.join("report.md").display(),
        out.join("report.json").display()
    );
}

/// A scenario starts once the CPUs are less busy than this (%), over a quarter
/// of a second, or after [`quiet_within`] in any case.
const QUIET_BELOW_PERCENT: f64 = 15.0;

/// How long a scenario waits for quiet CPUs at most. A smoke run's figures
/// are indicative only, and it runs beside the other tests in CI, whose CPUs
/// are never quiet: it waits briefly, so it stays well inside its time limit.
fn quiet_within(size: Size) -> Duration {
    match size {
        Size::Smoke => Duration::from_secs(2),
        Size::Quick | Size::Full => Duration::from_secs(30),
    }
}
/// `a ÷ b`, when both were measured and `b` is not zero: how tessera's
/// figure compares with the reference's (or the Node peer's) in the same run.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Between the two runs of one scenario (reference, then tessera): waits
/// for quiet CPUs, at most as long as the scenario's window and 10 s.
pub async fn settle(window_secs: u64) {
    let within = Duration::from_secs(window_secs.clamp(1, 10));
    crate::proc::wait_until_quiet(QUIET_BELOW_PERCENT, within).await;
}

/// The figure recording how long that took.
pub const QUIET_WAIT: &str = "waited for the CPUs to be quiet";

/// The figure every scenario starts with: [`crate::proc::loopback_messages_per_sec`].
pub const MACHINE_GAUGE: &str = "machine gauge: loopback messages/s just before";

/// Runs one scenario body with a time limit; its error, if any, goes into its report.
async fn scenario<F>(name: &str, size: Size, mut report: ScenarioReport, body: F) -> ScenarioReport
where
    F: AsyncFnOnce(&mut ScenarioReport) -> anyhow::Result<()>,
{
    let limit = scenario_limit(size);
    let quiet_within = quiet_within(size);
    let waited = crate::proc::wait_until_quiet(QUIET_BELOW_PERCENT, quiet_within).await;
    if waited >= quiet_within {
        say(format!(
            "scenario {name}: the CPUs are still busy after {waited:?}; starting anyway"
        ));
    }
    report.metric(QUIET_WAIT, waited.as_secs_f64(), "s");
    say(format!("scenario {name}: starting"));
    let gauge = tokio::task::spawn_blocking(|| {
        crate::proc::loopback_messages_per_sec(Duration::from_millis(500))
    })
    .await;
    if let Ok(Ok(messages)) = gauge {
        report.metric(MACHINE_GAUGE, messages, "/s");
    }
    let began = Instant::now();
    let result = tokio::time::timeout(limit, body(&mut report)).await;
    report.seconds = began.elapsed().as_secs_f64();
    match result {
        Ok(Ok(())) => say(format!("scenario {name}: done in {:.1} s", report.seconds)),
        Ok(Err(e)) => {
            say(format!("scenario {name} failed: {e:#}"));
            report.error = Some(format!("{e:#}"));
        }
        Err(_) => {
            say(format!("scenario {name} timed out after {limit:?}"));
            report.error = Some(format!("timed out after {limit:?}"));
        }
    }
    report
}

async fn run_scenarios(
    stack: &mut Stack,
    plan: &Plan,
    kinds: &[ScenarioKind],
    args: &RunArgs,
    reports: &mut Vec<ScenarioReport>,
) -> anyhow::Result<()> {
    stack.start().await?;
    let size = plan.size;
    for kind in kinds {
        match kind {
            ScenarioKind::Handshake => {
                let p = &plan.handshake;
                let r = ScenarioReport::new("handshake", p);
                reports.push(
                    scenario("handshake", size, r, async |r| {
                        handshake::run(stack, p, r).await
                    })
                    .await,
                );
            }
            ScenarioKind::Fanout | ScenarioKind::Latency | ScenarioKind::Rooms => {
                let plans = match kind {
                    ScenarioKind::Fanout => &plan.fanout[..],
                    ScenarioKind::Latency => &plan.latency[..],
                    _ => std::slice::from_ref(&plan.rooms),
                };
                for p in plans {
                    let r = ScenarioReport::new(&p.label, p);
                    reports.push(
                        scenario(&p.label, size, r, async |r| fanout::run(stack, p, r).await).await,
                    );
                }
            }
            ScenarioKind::Shards => {
                let p = &plan.shards;
                let r = ScenarioReport::new(&p.label, p);
                reports.push(
                    scenario(&p.label, size, r, async |r| shards::run(stack, p, r).await).await,
                );
            }
            ScenarioKind::Idle => {
                let p = &plan.idle;
                let r = ScenarioReport::new("idle", p);
                reports
                    .push(scenario("idle", size, r, async |r| idle::run(stack, p, r).await).await);
            }
            ScenarioKind::Mint => {
                let p = &plan.mint;
                let r = ScenarioReport::new("mint", p);
                reports.push(
                    scenario("mint", size, r, async |r| {
                        mint::run(stack, p, args.mint_client, &args.out, r).await
                    })
                    .await,
                );
            }
            ScenarioKind::LoginStorm => {
                let p = &plan.login_storm;
                let r = ScenarioReport::new("login-storm", p);
                reports.push(
                    scenario("login-storm", size, r, async |r| {
                        mint::login_storm(stack, p, args.mint_client, &args.out, r).await
                    })
                    .await,
                );
            }
            ScenarioKind::CredentialFlood => {
                let p = &plan.credential_flood;
                let r = ScenarioReport::new("credential-flood", p);
                reports.push(
                    scenario("credential-flood", size, r, async |r| {
                        flood::run(stack, p, r).await
                    })
                    .await,
                );
            }
        }
    }
    Ok(())
}

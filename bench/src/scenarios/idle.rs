//! `idle`: N authenticated connections per node that do nothing but answer the
//! node's pings. Measures what an idle connection costs a node: resident
//! memory (VmRSS after minus before, per connection) and CPU (utime + stime
//! over a window, as a percentage of one core).

use crate::plan::{IdlePlan, MAX_SOCKETS_PER_WORKER};
use crate::proc::{self, CpuWindow};
use crate::report::{Op, ScenarioReport};
use crate::say;
use crate::stack::Stack;
use crate::worker::{Command, Job, Workers, split};
use std::collections::HashMap;
use std::time::Duration;

const TARGET_KIB_PER_CONN: f64 = 6.0;
const TARGET_CPU_PERCENT: f64 = 5.0;
/// Pause before reading RSS, so allocations of the connect burst have settled.
const SETTLE: Duration = Duration::from_secs(2);

pub async fn run(
    stack: &mut Stack,
    plan: &IdlePlan,
    report: &mut ScenarioReport,
) -> anyhow::Result<()> {
    stack.restart_nodes(plan.nodes).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let nodes: Vec<_> = stack.nodes().iter().map(|n| (n.addr, n.pid)).collect();
    let before: Vec<u64> = nodes
        .iter()
        .map(|&(_, pid)| proc::rss_kib(pid))
        .collect::<anyhow::Result<_>>()?;

    let total = plan.per_node * plan.nodes;
    let worker_count = total.div_ceil(MAX_SOCKETS_PER_WORKER).max(1);
    let addrs: Vec<_> = nodes.iter().map(|&(addr, _)| addr).collect();
    let auth_url = stack.auth_url()?;
    let api_keys = stack.api_keys();
    let assignments = split(total, worker_count, &addrs);
    let mut per_node: HashMap<_, usize> = HashMap::new();
    for target in assignments.iter().flatten() {
        *per_node.entry(target.node).or_default() += target.count;
    }
    let jobs: Vec<Job> = assignments
        .into_iter()
        .map(|targets| Job {
            auth_url: auth_url.clone(),
            api_keys: api_keys.clone(),
            source_ip: stack.next_source_ip(),
            targets,
            concurrency: 128,
            rooms: None,
            messages: 0,
            mint_at_node: false,
            premint: false,
            deadline_secs: plan.window_secs + 900,
        })
        .collect();
    let mut workers = Workers::start("idle", jobs).await?;
    let readies = workers.connect(Duration::from_secs(600)).await?;
    let connected: usize = readies.iter().map(|r| r.connected).sum();
    let failed: usize = readies.iter().map(|r| r.failed).sum();
    say(format!(
        "idle: {connected} connections open ({failed} failed); measuring for {} s",
        plan.window_secs
    ));
    tokio::time::sleep(SETTLE).await;
    let after: Vec<u64> = nodes
        .iter()
        .map(|&(_, pid)| proc::rss_kib(pid))
        .collect::<anyhow::Result<_>>()?;
    let windows: Vec<CpuWindow> = nodes
        .iter()
        .map(|&(_, pid)| CpuWindow::start(pid))
        .collect::<anyhow::Result<_>>()?;
    tokio::time::sleep(Duration::from_secs(plan.window_secs)).await;
    let ticks = proc::clock_ticks_per_sec();
    let cpu: Vec<f64> = windows
        .iter()
        .map(|w| w.percent(ticks))
        .collect::<anyhow::Result<_>>()?;
    let outcomes = workers
        .stop(Command::Close, Duration::from_secs(120))
        .await?;

    // Failed handshakes are not attributed to a node; with any, the per-node
    // count is the assignment and the figure an underestimate (noted below).
    let mut worst_kib: f64 = 0.0;
    for (i, &(addr, _)) in nodes.iter().enumerate() {
        let conns = per_node.get(&addr).copied().unwrap_or(0).max(1);
        let kib = after[i].saturating_sub(before[i]) as f64 / conns as f64;
        worst_kib = worst_kib.max(kib);
        report.metric(
            &format!("node {i} RSS before"),
            before[i] as f64 / 1024.0,
            "MiB",
        );
        report.metric(
            &format!("node {i} RSS with {conns} idle"),
            after[i] as f64 / 1024.0,
            "MiB",
        );
        report.metric(&format!("node {i} RSS per connection"), kib, "KiB");
        report.metric(&format!("node {i} idle CPU"), cpu[i], "%");
    }
    let worst_cpu = cpu.iter().copied().fold(0.0, f64::max);
    report.check(
        "RSS per connection (worst node)",
        Some(worst_kib),
        "KiB",
        Op::AtMost,
        TARGET_KIB_PER_CONN,
    );
    report.check(
        "idle CPU (worst node, % of a core)",
        Some(worst_cpu),
        "%",
        Op::AtMost,
        TARGET_CPU_PERCENT,
    );
    report.check(
        "failed connections",
        Some(failed as f64),
        "",
        Op::AtMost,
        0.0,
    );
    let dropped: usize = outcomes.iter().flat_map(|o| o.dropped.values()).sum();
    report.check(
        "connections dropped while idle",
        Some(dropped as f64),
        "",
        Op::AtMost,
        0.0,
    );
    report.metric("connections open", connected as f64, "");
    for e in readies.iter().flat_map(|r| &r.errors) {
        report.note(format!("connection error: {e}"));
    }
    if failed > 0 {
        report.note("some connections failed: RSS per connection divides by the planned count");
    }
    report.note(format!(
        "CPU window {} s; the nodes ping every connection every 20 s, so a window of 20 s or more includes a round of pings",
        plan.window_secs
    ));
    Ok(())
}

//! `handshake`: N connections, each minting its own ticket with an API key and
//! spending it on a WebSocket upgrade, counted complete at `welcome`. Measures
//! that whole client-visible path per connection, and the rate over all
//! workers (from the moment they were all told to go to the last `welcome`).

use crate::hist;
use crate::plan::HandshakePlan;
use crate::report::{Op, ScenarioReport};
use crate::stack::Stack;
use crate::worker::{Command, Job, Workers, split};
use std::time::Duration;

const TARGET_RATE: f64 = 12_000.0;
const TARGET_P99_MS: f64 = 60.0;

pub async fn run(
    stack: &mut Stack,
    plan: &HandshakePlan,
    report: &mut ScenarioReport,
) -> anyhow::Result<()> {
    stack.restart_nodes(plan.nodes).await?;
    let nodes = stack.node_addrs(&(0..plan.nodes).collect::<Vec<_>>());
    let auth_url = stack.auth_url()?;
    let api_keys = stack.api_keys();
    let jobs: Vec<Job> = split(plan.connections, plan.workers, &nodes)
        .into_iter()
        .map(|targets| Job {
            auth_url: auth_url.clone(),
            api_keys: api_keys.clone(),
            source_ip: stack.next_source_ip(),
            targets,
            concurrency: plan.concurrency,
            channel: None,
            messages: 0,
            deadline_secs: 600,
        })
        .collect();
    let mut workers = Workers::start("handshake", jobs).await?;
    let readies = workers.connect(Duration::from_secs(300)).await?;
    let outcomes = workers
        .stop(Command::Close, Duration::from_secs(60))
        .await?;

    let connected: usize = readies.iter().map(|r| r.connected).sum();
    let failed: usize = readies.iter().map(|r| r.failed).sum();
    let began = readies.iter().map(|r| r.started_ns).min().unwrap_or(0);
    let ended = readies.iter().map(|r| r.finished_ns).max().unwrap_or(0);
    let seconds = ended.saturating_sub(began) as f64 / 1e9;
    let mut latency = hist::new();
    for r in &readies {
        hist::add_wire(&mut latency, &r.handshake);
    }
    let summary = hist::summary(&latency);

    let rate = (seconds > 0.0 && connected > 0).then(|| connected as f64 / seconds);
    report.check("handshakes/s", rate, "/s", Op::AtLeast, TARGET_RATE);
    report.check(
        "handshake p99",
        summary.as_ref().map(|s| s.p99_ms),
        "ms",
        Op::AtMost,
        TARGET_P99_MS,
    );
    report.check(
        "failed handshakes",
        Some(failed as f64),
        "",
        Op::AtMost,
        0.0,
    );
    if let Some(s) = &summary {
        report.metric("handshake p50", s.p50_ms, "ms");
        report.metric("handshake p90", s.p90_ms, "ms");
        report.metric("handshake max", s.max_ms, "ms");
    }
    report.metric("connections opened", connected as f64, "");
    report.metric("wall time", seconds, "s");
    let dropped: usize = outcomes.iter().flat_map(|o| o.dropped.values()).sum();
    report.metric("connections dropped before close", dropped as f64, "");
    for r in &readies {
        for e in &r.errors {
            report.note(format!("handshake error: {e}"));
        }
    }
    report.note(
        "a handshake = POST /v1/tickets (API key) + TCP connect + WebSocket upgrade with \
         ?ticket= + the welcome frame; connections stay open until all are done",
    );
    Ok(())
}

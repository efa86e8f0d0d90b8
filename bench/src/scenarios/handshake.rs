//! `handshake`: N connections opened as fast as the workers can, each counted
//! complete at `welcome`, the rate taken over all workers (from the moment
//! they were all told to go to the last `welcome`). Two kinds, each against
//! the reference servers and then tessera in the same run:
//!
//! - **pre-minted**: every ticket is minted before the clock starts, so a
//!   handshake is TCP connect + upgrade with `?ticket=` + `welcome`;
//! - **mint + connect**: each connection first mints its own ticket
//!   (`POST /v1/tickets` with an API key), the whole path a client takes.
//!
//! A reference process holds at most one node's share of the connections
//! (the file limit), so the reference runs one process per node, each
//! minting its own tickets.

use crate::endpoints::Endpoints;
use crate::hist::{self, Summary};
use crate::plan::HandshakePlan;
use crate::report::{Op, ScenarioReport};
use crate::stack::Stack;
use crate::worker::{Command, Workers};
use std::time::Duration;

/// Pre-minted handshakes/s at least this fraction of the reference's.
const PREMINTED_RATIO: f64 = 0.9;
/// Mint + connect handshakes/s at least this fraction of the reference's.
const MINT_CONNECT_RATIO: f64 = 0.8;

pub async fn run(
    stack: &mut Stack,
    plan: &HandshakePlan,
    report: &mut ScenarioReport,
) -> anyhow::Result<()> {
    for premint in [true, false] {
        let kind = if premint {
            "pre-minted"
        } else {
            "mint + connect"
        };
        stack.stop_nodes().await;
        let servers = stack.start_references(plan.nodes).await?;
        let reference = leg(stack, plan, &Endpoints::reference(&servers), premint).await;
        futures_util::future::join_all(servers.into_iter().map(|s| s.stop())).await;
        let reference = reference?;
        super::settle(10).await;
        stack.restart_nodes(plan.nodes).await?;
        let tessera = leg(stack, plan, &Endpoints::tessera(stack)?, premint).await?;
        super::settle(10).await;

        let target = if premint {
            PREMINTED_RATIO
        } else {
            MINT_CONNECT_RATIO
        };
        report.check(
            &format!("{kind}: handshakes/s ÷ reference"),
            super::ratio(tessera.rate, reference.rate),
            "×",
            Op::AtLeast,
            target,
        );
        report.check(
            &format!("{kind}: failed handshakes"),
            Some(tessera.failed as f64),
            "",
            Op::AtMost,
            0.0,
        );
        tessera.record(report, kind);
        reference.record(report, &format!("{kind}, reference"));
        if !premint {
            node_ws(stack, plan, &tessera, report).await?;
        }
    }
    report.note(
        "pre-minted: TCP connect + WebSocket upgrade with ?ticket= + the welcome frame, \
         tickets minted before the clock starts; mint + connect: POST /v1/tickets (API key) \
         first; connections stay open until all are done. The reference mints in memory, \
         with no key to check",
    );
    Ok(())
}

/// Mint + connect against the Node.js `ws` + `ioredis` peers, same run:
/// tessera must be ahead of them.
async fn node_ws(
    stack: &mut Stack,
    plan: &HandshakePlan,
    tessera: &Leg,
    report: &mut ScenarioReport,
) -> anyhow::Result<()> {
    stack.stop_nodes().await;
    let Some(peers) = stack.start_node_peers(plan.nodes).await? else {
        report.note(
            "node-ws: not measured (needs node and `npm ci` in bench/peers/node-ws,              which scripts/bench.sh runs)",
        );
        return Ok(());
    };
    let peer = leg(stack, plan, &Endpoints::node_ws(&peers), false).await;
    futures_util::future::join_all(peers.into_iter().map(|s| s.stop())).await;
    let peer = peer?;
    super::settle(10).await;
    report.check(
        "mint + connect: handshakes/s ÷ Node ws + ioredis",
        super::ratio(tessera.rate, peer.rate),
        "×",
        Op::AtLeast,
        1.0,
    );
    peer.record(report, "mint + connect, node-ws");
    Ok(())
}

struct Leg {
    rate: Option<f64>,
    latency: Option<Summary>,
    connected: usize,
    failed: usize,
    seconds: f64,
    dropped: usize,
    errors: Vec<String>,
}

impl Leg {
    fn record(&self, report: &mut ScenarioReport, prefix: &str) {
        let mut metric =
            |n: &str, v: f64, unit: &str| report.metric(&format!("{prefix}: {n}"), v, unit);
        if let Some(rate) = self.rate {
            metric("handshakes/s", rate, "/s");
        }
        if let Some(s) = &self.latency {
            metric("handshake p50", s.p50_ms, "ms");
            metric("handshake p99", s.p99_ms, "ms");
            metric("handshake max", s.max_ms, "ms");
        }
        metric("connections opened", self.connected as f64, "");
        metric("failed handshakes", self.failed as f64, "");
        metric("wall time", self.seconds, "s");
        metric("connections dropped before close", self.dropped as f64, "");
        for e in &self.errors {
            report.note(format!("{prefix}: handshake error: {e}"));
        }
    }
}

async fn leg(
    stack: &mut Stack,
    plan: &HandshakePlan,
    endpoints: &Endpoints,
    premint: bool,
) -> anyhow::Result<Leg> {
    let nodes: Vec<usize> = (0..plan.nodes).collect();
    let jobs = endpoints.jobs(
        stack,
        plan.connections,
        plan.workers,
        &nodes,
        None,
        0,
        plan.concurrency,
        premint,
        600,
    );
    let label = format!("handshake-{}", endpoints.system.name());
    let mut workers = Workers::start(&label, jobs).await?;
    let readies = workers.connect(Duration::from_secs(300)).await?;
    let outcomes = workers
        .stop(Command::Close, Duration::from_secs(60))
        .await?;

    let connected: usize = readies.iter().map(|r| r.connected).sum();
    let began = readies.iter().map(|r| r.started_ns).min().unwrap_or(0);
    let ended = readies.iter().map(|r| r.finished_ns).max().unwrap_or(0);
    let seconds = ended.saturating_sub(began) as f64 / 1e9;
    let mut latency = hist::new();
    for r in &readies {
        hist::add_wire(&mut latency, &r.handshake);
    }
    Ok(Leg {
        rate: (seconds > 0.0 && connected > 0).then(|| connected as f64 / seconds),
        latency: hist::summary(&latency),
        connected,
        failed: readies.iter().map(|r| r.failed).sum(),
        seconds,
        dropped: outcomes.iter().flat_map(|o| o.dropped.values()).sum(),
        errors: readies.into_iter().flat_map(|r| r.errors).collect(),
    })
}

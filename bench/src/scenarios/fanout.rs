//! `fanout`, `latency` and `rooms`: subscribers spread over nodes, a
//! publisher sending `{"t": <unix ns>, "seq": n}` at a fixed rate. Each
//! subscriber checks off the sequence numbers of its channel, so "lost" is
//! exact per subscriber; latency is receive time minus `t` (sender and
//! receivers share the machine's clock).
//!
//! Every plan runs twice in the same scenario: first against the reference
//! server (`crate::reference`), then against tessera's nodes, with the same
//! clients and the same load. The targets are ratios of the two, so they mean
//! the same on a fast VM and a slow one.
//!
//! The latency scenarios put the subscribers on node 1 only, so with tessera
//! every message crosses from node A through Redis to node B. With several
//! rooms, each room's members are spread over tessera's nodes (a load
//! balancer knows nothing of rooms), while each reference process holds whole
//! rooms (its processes share nothing).

use super::ratio;
use crate::client;
use crate::endpoints::{Endpoints, System};
use crate::hist::{self, Summary};
use crate::plan::FanoutPlan;
use crate::report::{Op, ScenarioReport};
use crate::say;
use crate::stack::Stack;
use crate::worker::{Command, Rooms, Workers};
use anyhow::{Context as _, bail};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// After the last publish, how long subscribers may stay silent before the
/// rest of their messages count as lost.
const QUIET_MS: u64 = 3_000;

pub async fn run(
    stack: &mut Stack,
    plan: &FanoutPlan,
    report: &mut ScenarioReport,
) -> anyhow::Result<()> {
    // One reference process holds a channel's every member (a broadcast
    // needs them in one place); with rooms, one per node, each room on one.
    stack.stop_nodes().await;
    let processes = if plan.rooms > 1 { plan.nodes } else { 1 };
    let servers = stack.start_references(processes).await?;
    let reference = drive(stack, plan, &Endpoints::reference(&servers)).await;
    futures_util::future::join_all(servers.into_iter().map(|s| s.stop())).await;
    let reference = reference.context("the reference run")?;
    super::settle(plan.seconds).await;

    stack.restart_nodes(plan.nodes).await?;
    let endpoints = Endpoints::tessera(stack)?;
    let tessera = drive(stack, plan, &endpoints).await?;

    judge(plan, &tessera, &reference, report);
    tessera.record(report, None, plan);
    reference.record(report, Some("reference"), plan);
    report.note(format!(
        "reference: {processes} process(es) of `tessera-bench reference` (no auth, no Redis), \
         run just before tessera with the same clients and load"
    ));
    Ok(())
}

/// The targets: tessera's figures as ratios to the reference's.
fn judge(plan: &FanoutPlan, tessera: &Leg, reference: &Leg, report: &mut ScenarioReport) {
    let t = &plan.targets;
    let rate = ratio(tessera.rate, reference.rate);
    report.check_if(
        "deliveries/s ÷ reference",
        rate,
        "×",
        Op::AtLeast,
        t.min_rate_ratio,
    );
    if t.zero_lost {
        report.check("lost", Some(tessera.lost as f64), "", Op::AtMost, 0.0);
    }
    let p99 = ratio(
        tessera.latency.as_ref().map(|s| s.p99_ms),
        reference.latency.as_ref().map(|s| s.p99_ms),
    );
    report.check_if(
        "latency p99 ÷ reference",
        p99,
        "×",
        Op::AtMost,
        t.max_p99_ratio,
    );
    let cpu = ratio(
        tessera.per_million(tessera.cpu.servers),
        reference.per_million(reference.cpu.servers),
    );
    if t.max_cpu_ratio.is_some() && cpu.is_none() {
        // A run too short for the CPU clock's 10 ms ticks has nothing to compare.
        report.note("node CPU per delivery: too little CPU time to measure");
    } else {
        let name = "node CPU per delivery ÷ reference";
        report.check_if(name, cpu, "×", Op::AtMost, t.max_cpu_ratio);
    }
    let clients = ratio(
        tessera.per_million(tessera.cpu.clients),
        reference.per_million(reference.cpu.clients),
    );
    report.check_if(
        "client CPU per delivery ÷ reference",
        clients,
        "×",
        Op::AtMost,
        None,
    );
}

/// CPU seconds over a run's publishing window, by who spent them.
#[derive(Default)]
struct Cpu {
    /// The servers under test: tessera's nodes, or the reference processes.
    servers: f64,
    redis: f64,
    /// The subscribers' worker processes and the publisher.
    clients: f64,
}

/// What one system did with the plan's load.
pub(super) struct Leg {
    system: System,
    connected: usize,
    failed: usize,
    deliveries: u64,
    pub(super) lost: u64,
    duplicates: u64,
    out_of_order: u64,
    /// Deliveries per second, first publish to last delivery.
    pub(super) rate: Option<f64>,
    latency: Option<Summary>,
    published: Published,
    dropped: BTreeMap<String, usize>,
    connect_errors: Vec<String>,
    cpu: Cpu,
    /// The channels the load used.
    pub(super) rooms: Rooms,
}

impl Leg {
    /// CPU seconds per million deliveries.
    fn per_million(&self, seconds: f64) -> Option<f64> {
        (self.deliveries > 0).then(|| seconds / self.deliveries as f64 * 1e6)
    }

    /// Records the leg's figures, their names prefixed with `prefix`.
    pub(super) fn record(
        &self,
        report: &mut ScenarioReport,
        prefix: Option<&str>,
        plan: &FanoutPlan,
    ) {
        let name = |n: &str| prefix.map_or_else(|| n.to_owned(), |p| format!("{p}: {n}"));
        let mut metric = |n: &str, v: f64, unit: &str| report.metric(&name(n), v, unit);
        if let Some(rate) = self.rate {
            metric("deliveries/s", rate, "/s");
        }
        if prefix.is_some() {
            metric("lost", self.lost as f64, "");
        }
        if let Some(s) = &self.latency {
            metric("latency p50", s.p50_ms, "ms");
            metric("latency p99", s.p99_ms, "ms");
            metric("latency p99.9", s.p999_ms, "ms");
            metric("latency max", s.max_ms, "ms");
        }
        let servers = match self.system {
            System::Tessera => "node CPU s per M deliveries",
            System::Reference | System::NodeWs => "server CPU s per M deliveries",
        };
        if let Some(v) = self.per_million(self.cpu.servers) {
            metric(servers, v, "s");
        }
        if let Some(v) = self.per_million(self.cpu.redis) {
            metric("Redis CPU s per M deliveries", v, "s");
        }
        if let Some(v) = self.per_million(self.cpu.clients) {
            metric("client CPU s per M deliveries", v, "s");
        }
        metric("deliveries", self.deliveries as f64, "");
        metric(
            "offered deliveries/s",
            self.connected as f64 * plan.rate as f64 / plan.rooms.max(1) as f64,
            "/s",
        );
        metric("subscribers connected", self.connected as f64, "");
        metric("subscribers that failed to connect", self.failed as f64, "");
        metric("messages published", self.published.accepted as f64, "");
        metric("publish errors", self.published.errors as f64, "");
        metric("publish rate achieved", self.published.rate(), "/s");
        if let Some(s) = &self.published.ack_latency {
            metric("publish ack p50", s.p50_ms, "ms");
            metric("publish ack p99", s.p99_ms, "ms");
        }
        metric("duplicates", self.duplicates as f64, "");
        metric("out of order", self.out_of_order as f64, "");
        let total_dropped: usize = self.dropped.values().sum();
        metric("subscribers disconnected", total_dropped as f64, "");
        let system = self.system.name();
        if !self.dropped.is_empty() {
            report.note(format!(
                "{system}: subscribers disconnected by the server: {:?}",
                self.dropped
            ));
        }
        for e in &self.connect_errors {
            report.note(format!("{system}: subscriber error: {e}"));
        }
        for e in &self.published.error_samples {
            report.note(format!("{system}: publish error: {e}"));
        }
    }
}

/// Runs the plan's load against `endpoints` and measures it.
pub(super) async fn drive(
    stack: &mut Stack,
    plan: &FanoutPlan,
    endpoints: &Endpoints,
) -> anyhow::Result<Leg> {
    let system = endpoints.system.name();
    let rooms = Rooms {
        name: format!(
            "public:bench-{}-{}",
            plan.label,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
        count: plan.rooms.max(1),
        first: 0,
        pinned: false,
    };
    let per_room = plan.messages() / rooms.count as u64;
    let jobs = endpoints.jobs(
        stack,
        plan.subscribers,
        plan.workers,
        &plan.sub_nodes,
        Some(&rooms),
        per_room,
        64,
        false,
        plan.seconds + 600,
    );
    let label = format!("{}-{system}", plan.label);
    let mut workers = Workers::start(&label, jobs).await?;
    let readies = workers.connect(Duration::from_secs(300)).await?;
    let connected: usize = readies.iter().map(|r| r.connected).sum();
    let failed: usize = readies.iter().map(|r| r.failed).sum();
    if connected == 0 {
        bail!("{system}: no subscriber could connect");
    }
    say(format!(
        "{label}: {connected} subscribers ready; publishing {} messages at {}/s",
        plan.messages(),
        plan.rate
    ));

    let client_pids = workers.pids();
    let own_pid = std::process::id();
    let cpu_before = Cpu {
        servers: crate::proc::cpu_seconds(&endpoints.pids),
        redis: redis_cpu(stack, endpoints).await,
        clients: crate::proc::cpu_seconds(&client_pids) + crate::proc::cpu_seconds(&[own_pid]),
    };
    let published = publish(
        endpoints,
        &rooms,
        plan.publishers,
        plan.rate,
        plan.messages(),
    )
    .await?;
    let outcomes = workers
        .stop(
            Command::Finish {
                expected: published.accepted / rooms.count as u64,
                quiet_ms: QUIET_MS,
            },
            Duration::from_secs(120),
        )
        .await?;
    let ticks = crate::proc::clock_ticks_per_sec() as f64;
    let worker_cpu: f64 = outcomes.iter().map(|o| o.cpu_ticks as f64 / ticks).sum();
    let cpu = Cpu {
        servers: crate::proc::cpu_seconds(&endpoints.pids) - cpu_before.servers,
        redis: redis_cpu(stack, endpoints).await - cpu_before.redis,
        clients: worker_cpu + crate::proc::cpu_seconds(&[own_pid]) - cpu_before.clients,
    };

    let mut latency = hist::new();
    for o in &outcomes {
        hist::add_wire(&mut latency, &o.latency);
    }
    let deliveries: u64 = outcomes.iter().map(|o| o.deliveries).sum();
    let last_delivery = outcomes
        .iter()
        .map(|o| o.last_delivery_ns)
        .max()
        .unwrap_or(0);
    // From the first publish to the last delivery: if the servers fall
    // behind, the deliveries that straggle in after the publisher stopped
    // stretch the window instead of flattering the rate.
    let window = last_delivery.saturating_sub(published.started_ns) as f64 / 1e9;
    let mut dropped = BTreeMap::<String, usize>::new();
    for o in &outcomes {
        for (how, n) in &o.dropped {
            *dropped.entry(how.clone()).or_default() += n;
        }
    }
    Ok(Leg {
        system: endpoints.system,
        connected,
        failed,
        deliveries,
        lost: outcomes.iter().map(|o| o.lost).sum(),
        duplicates: outcomes.iter().map(|o| o.duplicates).sum(),
        out_of_order: outcomes.iter().map(|o| o.out_of_order).sum(),
        rate: (window > 0.0 && deliveries > 0).then(|| deliveries as f64 / window),
        latency: hist::summary(&latency),
        published,
        dropped,
        connect_errors: readies.into_iter().flat_map(|r| r.errors).collect(),
        cpu,
        rooms,
    })
}

/// Redis's CPU seconds so far (every node's, on a cluster) if the system
/// uses it, else 0.
async fn redis_cpu(stack: &Stack, endpoints: &Endpoints) -> f64 {
    if !endpoints.uses_redis {
        return 0.0;
    }
    let mut total = 0.0;
    for url in stack.redis_servers() {
        total += crate::proc::redis_cpu_seconds(&url).await.unwrap_or(0.0);
    }
    total
}

/// What the publisher did.
struct Published {
    started_ns: u64,
    finished_ns: u64,
    /// From sending each publish to reading its `ack`: where a system that
    /// falls behind queues the publishes, before any fan-out.
    ack_latency: Option<Summary>,
    accepted: u64,
    errors: u64,
    error_samples: Vec<String>,
}

impl Published {
    fn rate(&self) -> f64 {
        let seconds = self.finished_ns.saturating_sub(self.started_ns) as f64 / 1e9;
        if seconds > 0.0 {
            self.accepted as f64 / seconds
        } else {
            0.0
        }
    }
}

type Sink = SplitSink<client::Ws, Message>;

/// Publishes `count` messages at `rate`/s on a fixed schedule (message n is
/// due at n/rate; one that is late goes at once, so a slow moment is caught
/// up rather than shifting the rest), and waits for every `ack`. Message n
/// goes to room `n % rooms` with sequence number `n / rooms`, sent by
/// publisher `room % publishers`, which is connected to node `publisher`
/// (so with one publisher, to node 0; with pinned rooms the room's own
/// server, as `publishers` is a multiple of the servers).
async fn publish(
    endpoints: &Endpoints,
    rooms: &Rooms,
    publishers: usize,
    rate: u64,
    count: u64,
) -> anyhow::Result<Published> {
    let publishers = publishers.clamp(1, rooms.count.max(1));
    let room_count = rooms.count as u64;
    let publisher_of = |n: u64| usize::try_from(n % room_count).unwrap_or(0) % publishers;
    // When publish `n` (request id `n + 1`) went out, in ns since `start`.
    let sent_at: Arc<[AtomicU64]> = (0..count).map(|_| AtomicU64::new(0)).collect();
    let mut sinks: Vec<Sink> = Vec::new();
    let mut readers = Vec::new();
    for i in 0..publishers {
        let server = endpoints.node(i);
        let mint_url = if endpoints.mint_at_node {
            format!("http://{server}")
        } else {
            endpoints.auth_url.clone()
        };
        let key = &endpoints.api_keys[i % endpoints.api_keys.len()];
        let ticket = client::Minter::new(&mint_url).await?.mint(key).await?;
        let mut ws = client::connect(server, &ticket, Ipv4Addr::LOCALHOST.into()).await?;
        client::expect_welcome(&mut ws).await?;
        let (sink, stream) = ws.split();
        let expected = (0..count).filter(|&n| publisher_of(n) == i).count() as u64;
        sinks.push(sink);
        // Acks are read concurrently, so a slow ack never delays the schedule.
        readers.push(tokio::spawn(read_replies(
            stream,
            expected,
            sent_at.clone(),
        )));
    }

    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let start = Instant::now();
    let started_ns = client::unix_nanos();
    for n in 0..count {
        let due = start + period.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        let channel = rooms.channel(usize::try_from(n % room_count).unwrap_or(0));
        let frame = client::publish_frame(n + 1, &channel, n / room_count);
        sent_at[usize::try_from(n).unwrap_or(usize::MAX)]
            .store(client::unix_nanos(), Ordering::Relaxed);
        sinks[publisher_of(n)]
            .send(Message::text(frame))
            .await
            .context("publishing")?;
    }
    let finished_ns = client::unix_nanos();
    let mut published = Published {
        started_ns,
        finished_ns,
        ack_latency: None,
        accepted: 0,
        errors: 0,
        error_samples: Vec::new(),
    };
    let mut ack_latency = hist::new();
    for reader in readers {
        let replies = reader.await.context("the ack reader panicked")?;
        published.accepted += replies.accepted;
        published.errors += replies.errors;
        published.error_samples.extend(replies.error_samples);
        ack_latency
            .add(&replies.ack_latency)
            .context("merging ack latencies")?;
    }
    published.ack_latency = hist::summary(&ack_latency);
    for mut sink in sinks {
        let _ = sink.close().await;
    }
    if published.accepted + published.errors < count {
        say(format!(
            "publisher: {} publishes got no reply (connection closed or timed out)",
            count - published.accepted - published.errors
        ));
    }
    Ok(published)
}

/// What one publisher's replies said.
struct Replies {
    accepted: u64,
    errors: u64,
    error_samples: Vec<String>,
    ack_latency: hist::Hist,
}

/// Counts the `ack`s and `error`s of `expected` publishes, timing each ack
/// against its publish's entry in `sent_at`.
async fn read_replies(
    mut stream: SplitStream<client::Ws>,
    expected: u64,
    sent_at: Arc<[AtomicU64]>,
) -> Replies {
    let (mut accepted, mut errors, mut samples) = (0u64, 0u64, Vec::new());
    let mut ack_latency = hist::new();
    while accepted + errors < expected {
        let next = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
        let text = match next {
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(_))) => continue,
            _ => break,
        };
        let Ok(frame) = serde_json::from_str::<client::Frame<'_>>(text.as_str()) else {
            continue;
        };
        match &*frame.kind {
            "ack" => {
                accepted += 1;
                let sent = frame
                    .id
                    .and_then(|id| sent_at.get(usize::try_from(id.checked_sub(1)?).ok()?))
                    .map_or(0, |at| at.load(Ordering::Relaxed));
                if sent > 0 {
                    hist::record_ns(&mut ack_latency, client::unix_nanos().saturating_sub(sent));
                }
            }
            "error" => {
                errors += 1;
                if samples.len() < 5 {
                    samples.push(client::truncate(text.as_str(), 200).to_owned());
                }
            }
            _ => {}
        }
    }
    Replies {
        accepted,
        errors,
        error_samples: samples,
        ack_latency,
    }
}

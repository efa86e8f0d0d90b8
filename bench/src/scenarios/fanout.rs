//! `fanout` and `latency`: S subscribers of one `public:` channel spread over
//! nodes, one publisher on node 0 sending `{"t": <unix ns>, "seq": n}` at a
//! fixed rate. Each subscriber checks off the sequence numbers it receives,
//! so "lost" is exact per subscriber; latency is receive time minus `t`
//! (sender and receivers share the machine's clock).
//!
//! The latency scenarios are the same machinery with the subscribers on node 1
//! only, so every message crosses from node A through Redis to node B.

use crate::client;
use crate::hist;
use crate::plan::FanoutPlan;
use crate::report::{Op, ScenarioReport};
use crate::say;
use crate::stack::Stack;
use crate::worker::{Command, Job, Workers, split};
use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use std::net::{Ipv4Addr, SocketAddr};
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
    stack.restart_nodes(plan.nodes).await?;
    let channel = format!(
        "public:bench-{}-{}",
        plan.label,
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let sub_nodes = stack.node_addrs(&plan.sub_nodes);
    let auth_url = stack.auth_url()?;
    let api_keys = stack.api_keys();
    let jobs: Vec<Job> = split(plan.subscribers, plan.workers, &sub_nodes)
        .into_iter()
        .map(|targets| Job {
            auth_url: auth_url.clone(),
            api_keys: api_keys.clone(),
            source_ip: stack.next_source_ip(),
            targets,
            concurrency: 64,
            channel: Some(channel.clone()),
            messages: plan.messages(),
            deadline_secs: plan.seconds + 600,
        })
        .collect();
    let mut workers = Workers::start(&plan.label, jobs).await?;
    let readies = workers.connect(Duration::from_secs(300)).await?;
    let connected: usize = readies.iter().map(|r| r.connected).sum();
    let failed: usize = readies.iter().map(|r| r.failed).sum();
    for e in readies.iter().flat_map(|r| &r.errors) {
        report.note(format!("subscriber error: {e}"));
    }
    if connected == 0 {
        bail!("no subscriber could connect");
    }
    say(format!(
        "{}: {connected} subscribers ready; publishing {} messages at {}/s",
        plan.label,
        plan.messages(),
        plan.rate
    ));

    let publisher_node = stack.nodes()[0].addr;
    let published = publish(
        &auth_url,
        &api_keys[0],
        publisher_node,
        &channel,
        plan.rate,
        plan.messages(),
    )
    .await?;
    let outcomes = workers
        .stop(
            Command::Finish {
                expected: published.accepted,
                quiet_ms: QUIET_MS,
            },
            Duration::from_secs(120),
        )
        .await?;

    let deliveries: u64 = outcomes.iter().map(|o| o.deliveries).sum();
    let lost: u64 = outcomes.iter().map(|o| o.lost).sum();
    let duplicates: u64 = outcomes.iter().map(|o| o.duplicates).sum();
    let out_of_order: u64 = outcomes.iter().map(|o| o.out_of_order).sum();
    let last_delivery = outcomes
        .iter()
        .map(|o| o.last_delivery_ns)
        .max()
        .unwrap_or(0);
    let mut latency = hist::new();
    for o in &outcomes {
        hist::add_wire(&mut latency, &o.latency);
    }
    let summary = hist::summary(&latency);
    // From the first publish to the last delivery: if the nodes fall behind,
    // the deliveries that straggle in after the publisher stopped stretch the
    // window instead of flattering the rate.
    let window = last_delivery.saturating_sub(published.started_ns) as f64 / 1e9;
    let rate = (window > 0.0 && deliveries > 0).then(|| deliveries as f64 / window);

    let t = &plan.targets;
    if let Some(target) = t.min_deliveries_per_sec {
        report.check("deliveries/s", rate, "/s", Op::AtLeast, target);
    } else if let Some(rate) = rate {
        report.metric("deliveries/s", rate, "/s");
    }
    if t.zero_lost {
        report.check("lost", Some(lost as f64), "", Op::AtMost, 0.0);
    } else {
        report.metric("lost", lost as f64, "");
    }
    let p50 = summary.as_ref().map(|s| s.p50_ms);
    let p99 = summary.as_ref().map(|s| s.p99_ms);
    match t.max_p50_ms {
        Some(target) => report.check("latency p50", p50, "ms", Op::AtMost, target),
        None => p50
            .into_iter()
            .for_each(|v| report.metric("latency p50", v, "ms")),
    }
    match t.max_p99_ms {
        Some(target) => report.check("latency p99", p99, "ms", Op::AtMost, target),
        None => p99
            .into_iter()
            .for_each(|v| report.metric("latency p99", v, "ms")),
    }
    if let Some(s) = &summary {
        report.metric("latency p99.9", s.p999_ms, "ms");
        report.metric("latency max", s.max_ms, "ms");
    }
    report.metric("deliveries", deliveries as f64, "");
    report.metric(
        "offered deliveries/s",
        connected as f64 * plan.rate as f64,
        "/s",
    );
    report.metric("subscribers connected", connected as f64, "");
    report.metric("subscribers that failed to connect", failed as f64, "");
    report.metric("messages published", published.accepted as f64, "");
    report.metric("publish errors", published.errors as f64, "");
    report.metric("publish rate achieved", published.rate(), "/s");
    report.metric("duplicates", duplicates as f64, "");
    report.metric("out of order", out_of_order as f64, "");
    let mut dropped = std::collections::BTreeMap::<String, usize>::new();
    for o in &outcomes {
        for (how, n) in &o.dropped {
            *dropped.entry(how.clone()).or_default() += n;
        }
    }
    let total_dropped: usize = dropped.values().sum();
    report.metric("subscribers disconnected", total_dropped as f64, "");
    if !dropped.is_empty() {
        report.note(format!("subscribers disconnected by the node: {dropped:?}"));
    }
    for e in &published.error_samples {
        report.note(format!("publish error: {e}"));
    }
    Ok(())
}

/// What the publisher did.
struct Published {
    started_ns: u64,
    finished_ns: u64,
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

/// Publishes `count` messages on `channel` at `rate`/s over one WebSocket to
/// `node`, on a fixed schedule (message n is due at n/rate; one that is late
/// goes at once, so a slow moment is caught up rather than shifting the rest),
/// and waits for every `ack`.
async fn publish(
    auth_url: &str,
    api_key: &str,
    node: SocketAddr,
    channel: &str,
    rate: u64,
    count: u64,
) -> anyhow::Result<Published> {
    let ticket = client::Minter::new(auth_url).await?.mint(api_key).await?;
    let mut ws = client::connect(node, &ticket, Ipv4Addr::LOCALHOST.into()).await?;
    client::expect_welcome(&mut ws).await?;
    let (mut sink, mut stream) = ws.split();

    // Acks are read concurrently, so a slow ack never delays the schedule.
    let replies = tokio::spawn(async move {
        let (mut accepted, mut errors, mut samples) = (0u64, 0u64, Vec::new());
        while accepted + errors < count {
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
                "ack" => accepted += 1,
                "error" => {
                    errors += 1;
                    if samples.len() < 5 {
                        samples.push(client::truncate(text.as_str(), 200).to_owned());
                    }
                }
                _ => {}
            }
        }
        (accepted, errors, samples)
    });

    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let start = Instant::now();
    let started_ns = client::unix_nanos();
    for seq in 0..count {
        let due = start + period.mul_f64(seq as f64);
        tokio::time::sleep_until(due.into()).await;
        sink.send(Message::text(client::publish_frame(seq + 1, channel, seq)))
            .await
            .context("publishing")?;
    }
    let finished_ns = client::unix_nanos();
    let (accepted, errors, error_samples) = replies.await.context("the ack reader panicked")?;
    let _ = sink.close().await;
    if accepted + errors < count {
        say(format!(
            "publisher: {} publishes got no reply (connection closed or timed out)",
            count - accepted - errors
        ));
    }
    Ok(Published {
        started_ns,
        finished_ns,
        accepted,
        errors,
        error_samples,
    })
}

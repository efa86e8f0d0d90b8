//! `shards`: the many-channels load (rooms of subscribers spread over three
//! ws-nodes) first on the run's single Redis, then on a Redis Cluster of
//! three masters, each with a replica, that the bench starts on loopback
//! (`testkit::RedisCluster`).
//!
//! On a cluster, tessera publishes and subscribes with sharded pub/sub, so a
//! channel's traffic (its publish script, and the fan-out of its messages to
//! the nodes) stays on the master that owns its slot. The scenario shows it:
//! for every master it reports the messages it published (`SPUBLISH` calls,
//! from `INFO commandstats`: the publish script's, and the few presence
//! events and canaries) beside the number its own channels were sent, the
//! pub/sub messages it sent over the cluster bus (`CLUSTER INFO`: a shard
//! message goes to the shard's replica only; a classic one would go to every
//! node), and every Redis process's CPU.
//!
//! Both legs are tessera; there is no reference here. What the figures say
//! is how the same load spreads, not a race: on one machine the three
//! masters share the same cores as the single Redis did.

use super::fanout::{self, Leg};
use crate::endpoints::Endpoints;
use crate::plan::FanoutPlan;
use crate::report::{Op, ScenarioReport};
use crate::say;
use crate::stack::Stack;
use anyhow::Context as _;

pub async fn run(
    stack: &mut Stack,
    plan: &FanoutPlan,
    report: &mut ScenarioReport,
) -> anyhow::Result<()> {
    stack.restart_nodes(plan.nodes).await?;
    let single_redis = stack.redis_servers().remove(0);
    let before = ServerStats::read(&single_redis).await?;
    let single = fanout::drive(stack, plan, &Endpoints::tessera(stack)?)
        .await
        .context("the single-Redis run")?;
    let single_cpu = ServerStats::read(&single_redis).await?.cpu_seconds - before.cpu_seconds;
    stack.stop_nodes().await;
    super::settle(plan.seconds).await;

    say("shards: starting a Redis Cluster of 3 masters and 3 replicas");
    let cluster = tokio::task::spawn_blocking(testkit::RedisCluster::start)
        .await
        .context("starting the Redis Cluster")?;
    let servers = cluster.seed_urls();
    stack.switch_redis(Some(servers.clone())).await?;
    let clustered = cluster_leg(stack, plan, &cluster).await;
    // Back on the run's Redis for the scenarios after this one, whatever happened.
    stack.switch_redis(None).await?;
    drop(cluster);
    let (leg, shards) = clustered.context("the cluster run")?;

    let rate = super::ratio(leg.rate, single.rate);
    report.check_if(
        "cluster ÷ single Redis deliveries/s",
        rate,
        "×",
        Op::AtMost,
        None,
    );
    report.check(
        "lost",
        Some((single.lost + leg.lost) as f64),
        "",
        Op::AtMost,
        0.0,
    );
    // Channel traffic never goes classic: no message is copied to every node.
    let classic: u64 = shards.iter().map(|s| s.bus_classic).sum();
    report.check(
        "classic pub/sub messages over the cluster bus",
        Some(classic as f64),
        "",
        Op::AtMost,
        0.0,
    );
    let expected: u64 = shards.iter().map(|s| s.expected).sum();
    let published: u64 = shards.iter().map(|s| s.spublish).sum();
    report.check_if(
        "SPUBLISH calls on all masters ÷ messages published",
        (expected > 0).then(|| published as f64 / expected as f64),
        "×",
        Op::AtMost,
        None,
    );
    // The same window as each cluster process's: from before the
    // subscribers connect to after the last delivery.
    report.metric("single Redis: Redis CPU s", single_cpu, "s");
    for shard in &shards {
        let who = if shard.master { "master" } else { "replica" };
        let name = format!("{who} :{}", shard.port);
        report.metric(&format!("{name}: Redis CPU s"), shard.cpu_seconds, "s");
        if shard.master {
            report.metric(
                &format!("{name}: channels owned"),
                shard.channels as f64,
                "",
            );
            report.metric(
                &format!("{name}: messages its channels were sent"),
                shard.expected as f64,
                "",
            );
            report.metric(
                &format!("{name}: SPUBLISH calls"),
                shard.spublish as f64,
                "",
            );
            report.metric(
                &format!("{name}: shard messages sent over the cluster bus"),
                shard.bus_sharded as f64,
                "",
            );
        }
    }
    leg.record(report, Some("cluster"), plan);
    single.record(report, Some("single Redis"), plan);
    report.note(
        "the cluster: 3 masters with a replica each, on loopback, started by the bench; \
         both runs are tessera on the same machine, one after the other",
    );
    Ok(())
}

/// One Redis process of the cluster, over the cluster run.
struct Shard {
    port: u16,
    master: bool,
    cpu_seconds: f64,
    /// The run's channels whose slot this master owns.
    channels: usize,
    /// Messages published to the channels it owns.
    expected: u64,
    spublish: u64,
    /// Pub/sub messages it sent over the cluster bus: shard ones (to its
    /// replica), classic ones (to every node).
    bus_sharded: u64,
    bus_classic: u64,
}

async fn cluster_leg(
    stack: &mut Stack,
    plan: &FanoutPlan,
    cluster: &testkit::RedisCluster,
) -> anyhow::Result<(Leg, Vec<Shard>)> {
    let servers = cluster.seed_urls();
    stack.restart_nodes(plan.nodes).await?;
    let mut before = Vec::new();
    for url in &servers {
        before.push(ServerStats::read(url).await?);
    }
    let leg = fanout::drive(stack, plan, &Endpoints::tessera(stack)?).await?;
    let per_room = leg_publishes_per_room(&leg, plan);
    // A channel's keys and shard channel hash on its name (their hash tag).
    let channels: Vec<String> = (0..leg.rooms.count).map(|r| leg.rooms.channel(r)).collect();
    let names: Vec<&str> = channels.iter().map(String::as_str).collect();
    let owners = cluster
        .master_ports_of(&names)
        .context("reading the cluster's slot map")?;
    let mut shards = Vec::new();
    for (url, before) in servers.iter().zip(before) {
        let after = ServerStats::read(url).await?;
        let channels = owners.iter().filter(|p| **p == Some(after.port)).count();
        shards.push(Shard {
            port: after.port,
            master: after.master,
            cpu_seconds: after.cpu_seconds - before.cpu_seconds,
            channels,
            spublish: after.spublish.saturating_sub(before.spublish),
            bus_sharded: after.bus_sharded.saturating_sub(before.bus_sharded),
            bus_classic: after.bus_classic.saturating_sub(before.bus_classic),
            expected: if after.master {
                channels as u64 * per_room
            } else {
                0
            },
        });
    }
    stack.stop_nodes().await;
    Ok((leg, shards))
}

/// Messages each room was sent: message `n` goes to room `n % rooms`.
fn leg_publishes_per_room(leg: &Leg, plan: &FanoutPlan) -> u64 {
    plan.messages() / leg.rooms.count.max(1) as u64
}

/// What one Redis process says about itself.
struct ServerStats {
    port: u16,
    master: bool,
    cpu_seconds: f64,
    spublish: u64,
    bus_sharded: u64,
    bus_classic: u64,
}

impl ServerStats {
    async fn read(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut info: String = redis::cmd("INFO")
            .arg("server")
            .arg("replication")
            .arg("commandstats")
            .query_async(&mut conn)
            .await?;
        // Absent on a single Redis, which has no cluster bus.
        let cluster: Option<String> = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut conn)
            .await
            .ok();
        info.push_str(cluster.as_deref().unwrap_or_default());
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_default()
                .to_owned()
        };
        let count = |name: &str| -> u64 {
            field(name)
                .split(',')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Ok(Self {
            port: field("tcp_port:")
                .parse()
                .context("INFO without tcp_port")?,
            master: field("role:") == "master",
            cpu_seconds: crate::proc::redis_cpu_seconds(url).await?,
            spublish: count("cmdstat_spublish:calls="),
            bus_sharded: count("cluster_stats_messages_publishshard_sent:"),
            bus_classic: count("cluster_stats_messages_publish_sent:"),
        })
    }
}

//! Nothing lost silently on a Redis Cluster under its own faults, during
//! sequenced publishing: a master killed with SIGKILL (its replica takes
//! over) and the slot of a busy channel moved to another master with
//! `redis-cli --cluster reshard`. Each test starts its own cluster.
//!
//! The promise checked: every acknowledged message reaches every subscriber
//! exactly once and in order, or the subscriber is told
//! `recovered: false`. A failover can lose acknowledged writes (replication
//! is asynchronous); those must surface as that notice, never as a gap.

use crate::faults::{fast, follow_all, start_publisher, subscribed_clients};
use crate::helpers::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

async fn stack_on(cluster: &testkit::RedisCluster, nodes: usize) -> Arc<Stack> {
    Arc::new(
        Stack::start_with(StackOptions {
            nodes,
            backend: Backend::Cluster,
            redis_cluster_urls: cluster.seed_urls(),
            customise_node: Box::new(fast),
            ..StackOptions::default()
        })
        .await,
    )
}

/// Every acknowledged number arrived exactly once and in order, or the
/// follower was told that messages may be missing.
fn assert_no_silent_gap(sequence: &Sequence, acked: &[u64], who: &str) {
    assert!(
        sequence.received.windows(2).all(|w| w[0] < w[1]),
        "{who}: duplicate or out of order"
    );
    let missing: Vec<u64> = acked
        .iter()
        .filter(|n| sequence.received.binary_search(n).is_err())
        .copied()
        .collect();
    assert!(
        missing.is_empty() || sequence.recovery_failures > 0,
        "{who}: {} acknowledged messages missing (first {:?}) without a recovery notice",
        missing.len(),
        missing.first()
    );
    assert_eq!(
        sequence.reconnects, 0,
        "{who}: a Redis fault must not drop connected clients"
    );
}

/// Waits until every node answers `/readyz` with 200, all within `within`.
async fn wait_until_ready(stack: &Stack, within: Duration) {
    let deadline = Instant::now() + within;
    for node in &stack.nodes {
        let left = deadline.saturating_duration_since(Instant::now());
        let ready = |status, _: &_| status == 200;
        stack
            .await_readiness(node, left, "node not ready again", ready)
            .await;
    }
}

/// Publishes on `channel` while `fault` runs, then checks every follower.
async fn publish_through(
    stack: &Arc<Stack>,
    channel: &'static str,
    fault: impl std::future::Future<Output = ()>,
) -> (usize, usize, Vec<Sequence>) {
    let user = stack.create_user("faulty").await;
    let key = stack.api_key(&user, "connect,publish").await;
    let clients = subscribed_clients(stack, &key, 2, channel).await;
    let publisher = stack.connect(0, &key).await;
    let (last_tx, last_rx) = watch::channel(None);
    let fallback = stack.nodes[stack.nodes.len() - 1].ws_url();
    let followers = follow_all(stack, &key, clients, &fallback, channel, &last_rx);
    let (stop_tx, stop_rx) = watch::channel(false);
    let publishing = start_publisher(publisher, channel, Duration::from_millis(2), stop_rx);
    tokio::time::sleep(Duration::from_secs(1)).await;
    fault.await;
    wait_until_ready(stack, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_tx.send_replace(true);
    let (acked, refused) = publishing.await.expect("publisher");
    last_tx.send_replace(acked.last().copied());
    let mut sequences = Vec::new();
    for (i, follower) in followers.into_iter().enumerate() {
        let sequence = follower.await.expect("follower");
        assert_no_silent_gap(&sequence, &acked, &format!("client {i}"));
        sequences.push(sequence);
    }
    (acked.len(), refused.len(), sequences)
}

#[tokio::test]
async fn a_master_killed_with_sigkill_fails_over_without_a_silent_gap() {
    let mut cluster = testkit::RedisCluster::start();
    let stack = stack_on(&cluster, 2).await;
    const CHANNEL: &str = "public:failover";
    let live_key = stack.live_channel(CHANNEL);
    let victim = cluster
        .master_port_of(&live_key)
        .expect("the channel's master");
    let fault = async {
        cluster.node_on(victim).expect("victim").kill();
        let killed = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if cluster
                .master_port_of(&live_key)
                .is_some_and(|p| p != victim)
            {
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "no replica took over"
            );
        }
        eprintln!("replica promoted {:?} after the SIGKILL", killed.elapsed());
    };
    let (acked, refused, sequences) = publish_through(&stack, CHANNEL, fault).await;
    assert!(
        refused > 0,
        "publishes during the failover must fail visibly"
    );
    let notices: u32 = sequences.iter().map(|s| s.recovery_failures).sum();
    eprintln!(
        "master {victim} SIGKILLed: {acked} publishes acknowledged, {refused} refused during the failover; \
         4 clients on 2 nodes got every acknowledged one exactly once in order or a notice ({notices} notices)"
    );
}

/// A channel whose hash tag falls in slot 0, the first slot that
/// `redis-cli --cluster reshard` moves off the master that owns it.
fn channel_in_slot_zero() -> &'static str {
    use redis::cluster_routing::Slot;
    let zero = Slot::new(0).expect("slot 0");
    let name = (0u32..)
        .map(|n| format!("public:moving-{n}"))
        .find(|name| Slot::for_key(name) == zero)
        .expect("some name hashes to slot 0");
    Box::leak(name.into_boxed_str())
}

#[tokio::test]
async fn a_busy_channel_whose_slot_moves_to_another_master_loses_nothing_silently() {
    let cluster = testkit::RedisCluster::start();
    let stack = stack_on(&cluster, 2).await;
    let channel = channel_in_slot_zero();
    let live_key = stack.live_channel(channel);
    let source = cluster
        .master_port_of(&live_key)
        .expect("the channel's master");
    let topology = cluster.topology();
    let id_of = |port: u16| {
        topology
            .iter()
            .find(|n| n.port == port)
            .map(|n| n.id.clone())
            .expect("node id")
    };
    let target = topology
        .iter()
        .find(|n| n.is_master && n.slots > 0 && n.port != source)
        .map(|n| n.port)
        .expect("another master");
    let (from, to) = (id_of(source), id_of(target));
    let fault = async {
        let started = Instant::now();
        let output = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{source}")])
            .args(["--cluster-from", &from, "--cluster-to", &to])
            .args(["--cluster-slots", "1", "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli");
        assert!(
            output.status.success(),
            "reshard failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        assert_eq!(
            cluster.master_port_of(&live_key),
            Some(target),
            "the channel's slot moved"
        );
        eprintln!(
            "slot 0 moved from {source} to {target} in {:?}",
            started.elapsed()
        );
    };
    let (acked, refused, sequences) = publish_through(&stack, channel, fault).await;
    let notices: u32 = sequences.iter().map(|s| s.recovery_failures).sum();
    eprintln!(
        "slot of {channel} resharded: {acked} publishes acknowledged, {refused} refused; \
         4 clients on 2 nodes got every acknowledged one exactly once in order or a notice ({notices} notices)"
    );
}

/// Readiness reflects every shard: one master whose writes are held
/// (`CLIENT PAUSE … WRITE`: its connections answer, nothing published
/// through it gets delivered) turns the node not-ready within the canary
/// bound, although the other shards deliver.
#[tokio::test]
async fn one_shard_that_stops_delivering_turns_the_node_not_ready() {
    let cluster = testkit::RedisCluster::start();
    let stack = Stack::start_with(StackOptions {
        nodes: 1,
        backend: Backend::Cluster,
        redis_cluster_urls: cluster.seed_urls(),
        customise_node: Box::new(|c| c.canary_timeout_ms = 1_500),
        ..StackOptions::default()
    })
    .await;
    wait_until_ready(&stack, PATIENCE).await;
    let (_, body) = stack.readiness(&stack.nodes[0]).await;
    assert_eq!(body["checks"]["redis_delivery"], "ok", "{body}");

    let paused = cluster
        .topology()
        .into_iter()
        .find(|n| n.is_master && n.slots > 0)
        .expect("a master")
        .port;
    let mut admin = redis::Client::open(format!("redis://127.0.0.1:{paused}"))
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("admin");
    redis::cmd("CLIENT")
        .arg(&["PAUSE", "30000", "WRITE"])
        .query_async::<()>(&mut admin)
        .await
        .expect("pause");
    stack
        .await_readiness(
            &stack.nodes[0],
            Duration::from_secs(4),
            "readyz stayed green while one shard delivered nothing",
            |status, body| status == 503 && body["checks"]["redis_delivery"] == "late",
        )
        .await;

    redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async::<()>(&mut admin)
        .await
        .expect("unpause");
    wait_until_ready(&stack, Duration::from_secs(5)).await;
}

/// A replica lost: no subscription lives there, and the masters serve on.
/// The node stays ready (a dropped node connection, were redis-rs to report
/// one, would cost at most a short remake of the link) and delivery goes
/// on without a gap or a refusal.
#[tokio::test]
async fn a_replica_killed_costs_at_most_a_blink() {
    let mut cluster = testkit::RedisCluster::start();
    let stack = stack_on(&cluster, 1).await;
    wait_until_ready(&stack, PATIENCE).await;
    let replica = cluster
        .topology()
        .into_iter()
        .find(|n| !n.is_master)
        .expect("a replica")
        .port;
    let fault = async {
        cluster.node_on(replica).expect("replica").kill();
        let killed = Instant::now();
        let mut not_ready = Duration::ZERO;
        while killed.elapsed() < Duration::from_secs(8) {
            if stack.readiness(&stack.nodes[0]).await.0 != 200 {
                not_ready += Duration::from_millis(100);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("replica {replica} SIGKILLed: not ready for about {not_ready:?} of 8 s");
        assert!(
            not_ready <= Duration::from_secs(2),
            "not ready for {not_ready:?}"
        );
    };
    let (acked, refused, sequences) = publish_through(&stack, "public:replica-lost", fault).await;
    let notices: u32 = sequences.iter().map(|s| s.recovery_failures).sum();
    eprintln!("{acked} acknowledged, {refused} refused, {notices} notices");
    assert_eq!(refused, 0, "the masters kept serving");
}

/// A planned failover (`CLUSTER FAILOVER` on the replica, as for a rolling
/// upgrade): the old master becomes a replica while its connections stay
/// up, so nothing drops; the subscription must still follow the channel to
/// its new master, without a silent gap.
#[tokio::test]
async fn a_planned_failover_is_followed_without_a_silent_gap() {
    let cluster = testkit::RedisCluster::start();
    let stack = stack_on(&cluster, 2).await;
    const CHANNEL: &str = "public:handover";
    let live_key = stack.live_channel(CHANNEL);
    let master = cluster
        .master_port_of(&live_key)
        .expect("the channel's master");
    let topology = cluster.topology();
    let master_id = topology
        .iter()
        .find(|n| n.port == master)
        .map(|n| n.id.clone())
        .expect("master id");
    let replica = topology
        .iter()
        .find(|n| n.master_id.as_deref() == Some(master_id.as_str()))
        .map(|n| n.port)
        .expect("its replica");
    let fault = async {
        let mut admin = redis::Client::open(format!("redis://127.0.0.1:{replica}"))
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("admin");
        redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query_async::<()>(&mut admin)
            .await
            .expect("failover");
        let started = Instant::now();
        while cluster.master_port_of(&live_key) != Some(replica) {
            assert!(started.elapsed() < Duration::from_secs(15), "no handover");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "{replica} took over from {master} in {:?}",
            started.elapsed()
        );
    };
    let (acked, refused, sequences) = publish_through(&stack, CHANNEL, fault).await;
    let notices: u32 = sequences.iter().map(|s| s.recovery_failures).sum();
    eprintln!("planned failover: {acked} acknowledged, {refused} refused, {notices} notices");
}

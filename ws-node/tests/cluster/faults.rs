//! Nothing lost under real faults: Redis subscriber connections killed, Redis
//! killed and restarted (with and without persistence), a node killed with
//! SIGKILL, a node drained with SIGTERM. Each test starts its own redis-server
//! (never the machine's) or its own node processes.

use crate::helpers::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub(crate) fn fast(c: &mut ws_node::config::Config) {
    c.client_messages_per_sec = 100_000;
    c.client_message_burst = 100_000;
}

/// Publishes `{"n": 1, 2, …}` on `channel` through a socket, one every `pace`,
/// until told to stop; returns the numbers acknowledged and the numbers
/// refused (refusals must be visible, never silent).
pub(crate) fn start_publisher(
    mut publisher: Client,
    channel: &'static str,
    pace: Duration,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<(Vec<u64>, Vec<u64>)> {
    tokio::spawn(async move {
        let (mut acked, mut refused) = (Vec::new(), Vec::new());
        let mut tick = tokio::time::interval(pace);
        // A steady rate: no burst to catch up after slow (failing) publishes.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for n in 1.. {
            tick.tick().await;
            if *stop.borrow_and_update() {
                break;
            }
            let reply = publisher
                .request(
                    json!({ "action": "publish", "channel": channel, "data": { "n": n } }),
                    n,
                )
                .await;
            match reply["type"].as_str() {
                Some("ack") => acked.push(n),
                Some("error") => refused.push(n),
                other => panic!("unexpected reply {other:?}"),
            }
        }
        (acked, refused)
    })
}

/// Reads numbered messages until `last` (once known) has arrived, resuming on
/// `fallback` with `since` whenever the socket is lost.
async fn follow(
    stack: Arc<Stack>,
    key: String,
    mut client: Client,
    fallback: String,
    channel: &'static str,
    last: watch::Receiver<Option<u64>>,
) -> Sequence {
    let mut sequence = Sequence::default();
    let mut quiet = Duration::ZERO;
    loop {
        if let Some(last) = *last.borrow()
            && sequence.received.last().is_some_and(|n| *n >= last)
        {
            return sequence;
        }
        // Short waits, so that learning the last number ends the loop promptly.
        let wait = Duration::from_millis(250);
        match client.next_event(wait).await {
            Event::Frame(frame) => {
                quiet = Duration::ZERO;
                sequence.record(&frame);
            }
            lost @ (Event::Closed(_) | Event::Error(_)) => {
                eprintln!("follower lost its socket: {lost:?}");
                sequence.reconnects += 1;
                assert!(sequence.reconnects < 5, "reconnecting in a loop");
                let ticket = stack.ticket(&key).await;
                client = Client::connect(&format!("{fallback}?ticket={ticket}"), &[])
                    .await
                    .expect("reconnect to a surviving node");
                assert_eq!(client.recv().await["type"], "welcome");
                let epoch = sequence
                    .epoch
                    .clone()
                    .expect("saw messages before the fault");
                let ack = client
                    .subscribe_since(channel, &epoch, sequence.offset)
                    .await;
                assert_eq!(ack["recovered"], true, "recovery after a node loss: {ack}");
            }
            Event::Timeout => {
                quiet += wait;
                assert!(
                    quiet < Duration::from_secs(20),
                    "no message for 20 s; have {} (last {:?}), waiting for {:?}",
                    sequence.received.len(),
                    sequence.received.last(),
                    *last.borrow()
                );
            }
        }
    }
}

/// Spawns a [`follow`] for each of `clients`, resuming on `fallback`.
pub(crate) fn follow_all(
    stack: &Arc<Stack>,
    key: &str,
    clients: Vec<Client>,
    fallback: &str,
    channel: &'static str,
    last: &watch::Receiver<Option<u64>>,
) -> Vec<tokio::task::JoinHandle<Sequence>> {
    clients
        .into_iter()
        .map(|c| {
            tokio::spawn(follow(
                stack.clone(),
                key.to_owned(),
                c,
                fallback.to_owned(),
                channel,
                last.clone(),
            ))
        })
        .collect()
}

/// Every follower received `1..=total` exactly once, in order, with no
/// recovery notice and without losing its socket (`why` says why it must not).
async fn assert_all_followed_without_reconnect(
    followers: Vec<tokio::task::JoinHandle<Sequence>>,
    total: u64,
    why: &str,
) {
    for (i, follower) in followers.into_iter().enumerate() {
        let sequence = follower.await.expect("follower");
        sequence.assert_exactly(total, &format!("client {i}"));
        assert_eq!(sequence.recovery_failures, 0);
        assert_eq!(sequence.reconnects, 0, "client {i}: {why}");
    }
}

/// `CLIENT KILL TYPE pubsub`: drops every node's subscriber connection;
/// returns how many were killed.
async fn kill_subscriber_connections(admin: &mut redis::aio::MultiplexedConnection) -> u64 {
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(admin)
        .await
        .expect("client kill")
}

pub(crate) async fn subscribed_clients(
    stack: &Stack,
    key: &str,
    per_node: usize,
    channel: &str,
) -> Vec<Client> {
    let mut clients = Vec::new();
    for node in 0..stack.nodes.len() {
        for _ in 0..per_node {
            let mut client = stack.connect(node, key).await;
            client.subscribe(channel).await;
            clients.push(client);
        }
    }
    clients
}

#[tokio::test]
async fn killing_every_subscriber_connection_mid_stream_loses_nothing() {
    let redis = testkit::RedisServer::start();
    let stack = Arc::new(
        Stack::start_with(StackOptions {
            nodes: 3,
            redis_url: redis.url(),
            customise_node: Box::new(fast),
            ..StackOptions::default()
        })
        .await,
    );
    let user = stack.create_user("alice").await;
    let key = stack.api_key(&user, "connect,publish").await;
    let (last_tx, last_rx) = watch::channel(None);
    let followers = follow_all(
        &stack,
        &key,
        subscribed_clients(&stack, &key, 2, "broadcast:seq").await,
        &stack.nodes[0].ws_url(),
        "broadcast:seq",
        &last_rx,
    );

    // Node A's publisher, up to 1 000 messages a second (server channel: HTTP
    // is the writer; to stay on a node, publish through the node's own Redis path).
    let node = stack.nodes[0].state.clone();
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let publishing = tokio::spawn(async move {
        let channel: shared::channel::ChannelName = "broadcast:seq".parse().expect("channel");
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0;
        while !*stop_rx.borrow_and_update() {
            tick.tick().await;
            n += 1;
            // Never fails here: only subscriber connections are killed.
            publish_numbered(&node, &channel, n).await;
        }
        n
    });

    let mut admin = redis.admin().await;
    let mut kills = 0u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(400)).await;
        kills += kill_subscriber_connections(&mut admin).await;
    }
    stop_tx.send_replace(true);
    let total = publishing.await.expect("publisher");
    let rate = total as f64 / started.elapsed().as_secs_f64();
    last_tx.send_replace(Some(total));
    assert!(kills >= 9, "killed {kills} subscriber connections");
    assert!(rate >= 500.0, "published {total} at {rate:.0}/s");
    assert_all_followed_without_reconnect(
        followers,
        total,
        "Redis blinking must not drop connected clients",
    )
    .await;
    eprintln!(
        "CLIENT KILL TYPE pubsub: {kills} connections killed; {total} messages at {rate:.0}/s; 6 clients on 3 nodes each got all {total} exactly once, in order, without reconnecting"
    );
}

#[tokio::test]
async fn redis_killed_and_restarted_from_its_aof_loses_no_acknowledged_publish() {
    let mut redis = testkit::RedisServer::start_durable();
    let stack = Arc::new(
        Stack::start_with(StackOptions {
            nodes: 2,
            redis_url: redis.url(),
            customise_node: Box::new(fast),
            ..StackOptions::default()
        })
        .await,
    );
    let user = stack.create_user("bob").await;
    let key = stack.api_key(&user, "connect,publish").await;
    let clients = subscribed_clients(&stack, &key, 2, "public:durable").await;
    let publisher = stack.connect(0, &key).await;
    let (last_tx, last_rx) = watch::channel(None);
    let followers = follow_all(
        &stack,
        &key,
        clients,
        &stack.nodes[1].ws_url(),
        "public:durable",
        &last_rx,
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let publishing = start_publisher(
        publisher,
        "public:durable",
        Duration::from_millis(2),
        stop_rx,
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.kill();
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    redis.restart();
    let outage = outage.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_tx.send_replace(true);
    let (acked, refused) = publishing.await.expect("publisher");
    let last_acked = *acked.last().expect("some publishes were acknowledged");
    last_tx.send_replace(Some(last_acked));
    let first_refused = *refused
        .first()
        .expect("publishes during the outage must fail visibly");
    let acked_after = acked.iter().filter(|n| **n > first_refused).count();
    assert!(
        acked_after > 100,
        "publishing resumed after the restart: {acked_after} acknowledged after the first refusal"
    );
    for (i, follower) in followers.into_iter().enumerate() {
        let sequence = follower.await.expect("follower");
        assert!(
            sequence.received.windows(2).all(|w| w[0] < w[1]),
            "client {i}: duplicate or out of order"
        );
        let missing: Vec<_> = acked
            .iter()
            .filter(|n| sequence.received.binary_search(n).is_err())
            .collect();
        let gaps: Vec<_> = sequence
            .received
            .windows(2)
            .filter(|w| w[1] != w[0] + 1)
            .take(5)
            .collect();
        assert!(
            missing.is_empty(),
            "client {i} lost {} acknowledged publishes (first {:?}); received {} ({:?}..{:?}), gaps {gaps:?}, recovery notices {}",
            missing.len(),
            missing.first(),
            sequence.received.len(),
            sequence.received.first(),
            sequence.received.last(),
            sequence.recovery_failures
        );
        assert_eq!(
            sequence.recovery_failures, 0,
            "client {i}: the AOF kept the history, nothing is unrecoverable"
        );
        assert_eq!(
            sequence.reconnects, 0,
            "client {i}: a Redis outage must not drop connected clients"
        );
    }
    eprintln!(
        "AOF redis SIGKILLed for {outage:?}: {} publishes acknowledged ({acked_after} after the first refusal), {} refused during the outage; 4 clients on 2 nodes received every acknowledged one exactly once, in order, without reconnecting",
        acked.len(),
        refused.len()
    );
}

#[tokio::test]
async fn redis_restarted_without_persistence_makes_the_loss_explicit() {
    let mut redis = testkit::RedisServer::start();
    let stack = Stack::start_with(StackOptions {
        nodes: 2,
        redis_url: redis.url(),
        customise_node: Box::new(fast),
        ..StackOptions::default()
    })
    .await;
    let user = stack.create_user("carol").await;
    let key = stack.api_key(&user, "connect,publish").await;
    let mut clients = subscribed_clients(&stack, &key, 1, "public:volatile").await;
    let mut publisher = stack.connect(0, &key).await;
    let mut epoch = String::new();
    for n in 1..=10u64 {
        let ack = publisher
            .request(
                json!({ "action": "publish", "channel": "public:volatile", "data": { "n": n } }),
                n,
            )
            .await;
        epoch = ack["epoch"].as_str().expect("epoch").to_owned();
    }
    for client in &mut clients {
        for n in 1..=10 {
            assert_eq!(client.recv_message().await["data"]["n"], n);
        }
    }

    redis.restart();
    // Connected clients are told, explicitly, that this channel's history is gone.
    for (i, client) in clients.iter_mut().enumerate() {
        let notice = loop {
            match client.next_event(Duration::from_secs(15)).await {
                Event::Frame(f) if f["type"] == "recovery" => break f,
                Event::Frame(_) => continue,
                other => panic!("client {i}: {other:?}"),
            }
        };
        assert_eq!(
            notice,
            json!({ "type": "recovery", "channel": "public:volatile", "recovered": false })
        );
    }
    // A client coming back with `since` gets `recovered: false`.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut late = loop {
        let response = stack
            .http
            .post(stack.auth("/v1/tickets"))
            .bearer_auth(&key)
            .send()
            .await
            .expect("mint");
        if response.status() == 201 {
            let ticket: Value = response.json().await.expect("json");
            let ticket = ticket["ticket"].as_str().expect("ticket").to_owned();
            if let Ok(mut client) =
                Client::connect(&format!("{}?ticket={ticket}", stack.nodes[1].ws_url()), &[]).await
            {
                assert_eq!(client.recv().await["type"], "welcome");
                break client;
            }
        }
        assert!(Instant::now() < deadline, "stack did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ack = late.subscribe_since("public:volatile", &epoch, 10).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    // Delivery goes on, in a new epoch.
    let ack = publisher
        .request(
            json!({ "action": "publish", "channel": "public:volatile", "data": { "n": 11 } }),
            11,
        )
        .await;
    assert_eq!(ack["offset"], 1);
    assert_ne!(ack["epoch"], epoch.as_str());
    for client in clients.iter_mut().chain(std::iter::once(&mut late)) {
        assert_eq!(client.recv_message().await["data"]["n"], 11);
    }
}

#[tokio::test]
async fn a_long_subscription_outage_is_replayed_in_full_at_the_pace_clients_read() {
    const MISSED: u64 = 5_000;
    let redis = testkit::RedisServer::start();
    let stack = Arc::new(
        Stack::start_with(StackOptions {
            nodes: 1,
            redis_url: redis.url(),
            customise_node: Box::new(|c| {
                fast(c);
                c.common.channel_namespaces = open_namespace("public", 20_000, 600);
            }),
            ..StackOptions::default()
        })
        .await,
    );
    let user = stack.create_user("gina").await;
    let key = stack.api_key(&user, "connect").await;
    let (_last_tx, last_rx) = watch::channel(Some(MISSED));
    let followers = follow_all(
        &stack,
        &key,
        subscribed_clients(&stack, &key, 2, "public:backlog").await,
        &stack.nodes[0].ws_url(),
        "public:backlog",
        &last_rx,
    );

    // Keep the node from resubscribing (its SUBSCRIBE is refused) while
    // several send queues' worth of messages are published.
    let mut admin = redis.admin().await;
    let acl = |rule: &'static str| {
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg(rule)
            .clone()
    };
    let () = acl("-subscribe")
        .query_async(&mut admin)
        .await
        .expect("acl");
    assert!(kill_subscriber_connections(&mut admin).await >= 1);
    let node = stack.nodes[0].state.clone();
    let channel: shared::channel::ChannelName = "public:backlog".parse().expect("channel");
    for n in 1..=MISSED {
        publish_numbered(&node, &channel, n).await;
    }
    assert!(!node.is_ready(), "the node knows it is not subscribed");
    let () = acl("+subscribe")
        .query_async(&mut admin)
        .await
        .expect("acl");

    assert_all_followed_without_reconnect(
        followers,
        MISSED,
        "a large replay must not close healthy clients as slow (4008)",
    )
    .await;
    eprintln!(
        "subscription refused while {MISSED} messages were published (send queue 1024): 2 clients got all {MISSED} from history exactly once, in order, without reconnecting"
    );
}

#[tokio::test]
async fn presence_slots_and_directory_heal_after_redis_loses_its_data() {
    let redis = testkit::RedisServer::start();
    let stack = Stack::start_with(StackOptions {
        nodes: 1,
        redis_url: redis.url(),
        customise_node: Box::new(|c| {
            fast(c);
            c.connection_lease_secs = 3;
        }),
        ..StackOptions::default()
    })
    .await;
    let alice = stack.create_user("alice").await;
    let operator = stack.create_user("operator").await;
    let key = stack.api_key(&alice, "connect").await;
    let admin_key = stack.api_key(&operator, "admin").await;
    let mut client = stack.connect(0, &key).await;
    client.subscribe("public:lobby").await;

    let mut admin = redis.admin().await;
    let () = redis::cmd("FLUSHALL")
        .query_async(&mut admin)
        .await
        .expect("flushall");

    // Within a renewal period (a third of the 3 s lease) the node writes back
    // what it still holds: presence, the per-user slot, the directory entry.
    let slots = stack.nodes[0].state.keys.user_connections(alice.id);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = client
            .request(
                json!({ "action": "presence", "channel": "public:lobby" }),
                1,
            )
            .await;
        let present = reply["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["user"]["username"] == "alice"));
        let slot_count: u64 = redis::cmd("ZCARD")
            .arg(&slots)
            .query_async(&mut admin)
            .await
            .expect("zcard");
        let listed = stack.list_connections(alice.id, &admin_key).await;
        let directory = listed["connections"].as_array().map_or(0, Vec::len);
        if present && slot_count == 1 && directory == 1 {
            let channels = &listed["connections"][0]["channels"];
            assert!(
                channels
                    .as_array()
                    .expect("channels")
                    .contains(&json!("public:lobby")),
                "{listed}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not healed: present {present}, slots {slot_count}, directory {directory}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A node dies (SIGKILL) or drains (SIGTERM) while holding clients that are
/// in the middle of a stream: they reconnect to a survivor with fresh tickets
/// and `since`, and every client ends with every message exactly once.
async fn node_loss(sigkill: bool) {
    let stack = Arc::new(
        Stack::start_with(StackOptions {
            nodes: 1,
            customise_node: Box::new(|c| {
                fast(c);
                c.connection_lease_secs = 3;
            }),
            ..StackOptions::default()
        })
        .await,
    );
    let user = stack.create_user("dan").await;
    let ghost = stack.create_user("ghost").await;
    let watcher_user = stack.create_user("watcher").await;
    let key = stack.api_key(&user, "connect,publish").await;
    let ghost_key = stack.api_key(&ghost, "connect").await;
    let watcher_key = stack.api_key(&watcher_user, "connect").await;
    let mut victim = NodeProcess::spawn(
        &stack,
        "node-victim",
        &[("CONNECTION_LEASE_SECS", "3"), ("DRAIN_TIMEOUT_SECS", "5")],
    )
    .await;
    let survivor = stack.nodes[0].ws_url();

    // A watcher on the survivor, and a ghost on the victim that never comes back.
    let mut watcher = stack.connect(0, &watcher_key).await;
    watcher.subscribe("public:stream").await;
    let ticket = stack.ticket(&ghost_key).await;
    let mut ghost_client = Client::connect(&format!("{}?ticket={ticket}", victim.ws_url()), &[])
        .await
        .expect("ghost");
    assert_eq!(ghost_client.recv().await["type"], "welcome");
    ghost_client.subscribe("public:stream").await;

    let (last_tx, last_rx) = watch::channel(None);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let ticket = stack.ticket(&key).await;
        let mut client = Client::connect(&format!("{}?ticket={ticket}", victim.ws_url()), &[])
            .await
            .expect("connect");
        assert_eq!(client.recv().await["type"], "welcome");
        client.subscribe("public:stream").await;
        clients.push(client);
    }
    let followers = follow_all(&stack, &key, clients, &survivor, "public:stream", &last_rx);
    let publisher = stack.connect(0, &key).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let publishing = start_publisher(
        publisher,
        "public:stream",
        Duration::from_millis(2),
        stop_rx,
    );

    tokio::time::sleep(Duration::from_millis(800)).await;
    let lost_at = Instant::now();
    if sigkill {
        victim.kill9();
    } else {
        victim.sigterm();
        assert_eq!(ghost_client.expect_close().await, 1001);
        let deadline = Instant::now() + Duration::from_secs(10);
        while victim.child.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "victim did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_tx.send_replace(true);
    let (acked, refused) = publishing.await.expect("publisher");
    assert_eq!(refused, Vec::<u64>::new());
    let total = *acked.last().expect("published");
    last_tx.send_replace(Some(total));
    for (i, follower) in followers.into_iter().enumerate() {
        follower
            .await
            .expect("follower")
            .assert_exactly(total, &format!("client {i}"));
    }

    // The ghost's presence goes away within the lease (3 s) plus a sweep.
    let left = loop {
        match watcher.next_event(Duration::from_secs(10)).await {
            Event::Frame(f) if f["type"] == "leave" && f["user"]["username"] == "ghost" => {
                break lost_at.elapsed();
            }
            Event::Frame(_) => continue,
            other => panic!("no leave for the ghost: {other:?}"),
        }
    };
    assert!(left < Duration::from_secs(6), "ghost left after {left:?}");
    let reply = watcher
        .request(
            json!({ "action": "presence", "channel": "public:stream" }),
            5,
        )
        .await;
    let names: Vec<&str> = reply["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["user"]["username"].as_str())
        .collect();
    assert!(!names.contains(&"ghost"), "{names:?}");
    eprintln!(
        "node {} with 5 clients: {total} messages; 4 clients resumed on the survivor with `since` and got all exactly once; ghost presence gone after {left:?}",
        if sigkill { "SIGKILLed" } else { "SIGTERMed" }
    );
}

#[tokio::test]
async fn a_node_killed_with_sigkill_loses_no_message_and_leaves_no_zombie_presence() {
    node_loss(true).await;
}

#[tokio::test]
async fn a_node_drained_with_sigterm_loses_no_message() {
    node_loss(false).await;
}

/// Revocation fails closed: Redis cut off from auth-service between the
/// Postgres commit of a logout (and of an API key's revocation) and their
/// Redis writes. The calls fail (503); once Redis is back, without anyone
/// retrying, the stolen cookie and the revoked key are refused and their
/// sockets close; and retrying then succeeds.
#[tokio::test]
async fn a_revocation_cut_off_from_redis_completes_once_redis_is_back() {
    let upstream: std::net::SocketAddr = testkit::shared_redis_url()
        .trim_start_matches("redis://")
        .parse()
        .expect("the shared Redis as host:port");
    let proxy = std::sync::Arc::new(testkit::proxy::TcpProxy::start(upstream).await);
    let through_proxy = proxy.redis_url();
    let stack = Stack::start_with(StackOptions {
        nodes: 1,
        customise_auth: Box::new(move |c| c.common.redis_url = through_proxy.clone().into()),
        ..StackOptions::default()
    })
    .await;
    let user = stack.create_user("victor").await;
    let cookie = stack.login("victor").await;
    let key = stack.api_key(&user, "connect").await;
    let key_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM api_keys")
        .fetch_one(&stack.auth.db)
        .await
        .expect("the key's id");
    let url = stack.nodes[0].ws_url();
    let with_cookie = [("cookie", cookie.as_str()), ("origin", APP_ORIGIN)];
    let mut cookie_socket = Client::connect(&url, &with_cookie)
        .await
        .expect("cookie socket");
    let mut key_socket = stack.connect(0, &key).await;

    proxy.cut();
    let logout = |stack: &Stack| {
        stack
            .http
            .post(stack.auth("/v1/logout"))
            .header("cookie", &cookie)
            .header("origin", APP_ORIGIN)
            .send()
    };
    let failed = logout(&stack).await.expect("request");
    assert_eq!(failed.status(), 503, "Redis is cut off");
    let revoked_in_postgres: bool =
        sqlx::query_scalar("SELECT revoked_at IS NOT NULL FROM sessions")
            .fetch_one(&stack.auth.db)
            .await
            .expect("session");
    assert!(revoked_in_postgres, "the Postgres half is committed");
    assert!(
        auth_service::revocation::revoke_api_key(&stack.auth, key_id, None)
            .await
            .is_err(),
        "the key's Redis half fails too"
    );

    // Redis back, nobody retries: the pending Redis halves complete by
    // themselves, and the sockets close.
    proxy.restore();
    let started = std::time::Instant::now();
    for socket in [&mut cookie_socket, &mut key_socket] {
        let closed = tokio::time::timeout(Duration::from_secs(15), socket.expect_close())
            .await
            .expect("closed once Redis is back");
        assert_eq!(closed, 4003);
    }
    eprintln!(
        "sockets closed {:?} after Redis came back",
        started.elapsed()
    );
    let me = stack
        .http
        .get(stack.auth("/v1/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("request");
    assert_eq!(me.status(), 401, "the stolen cookie");
    let refused = Client::connect(&url, &with_cookie)
        .await
        .err()
        .expect("the cookie opens no socket");
    assert_eq!(refused.status, 401);
    let mint = stack
        .http
        .post(stack.auth("/v1/tickets"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert_eq!(mint.status(), 401, "the revoked key");

    // Retrying is safe and says so.
    assert_eq!(logout(&stack).await.expect("request").status(), 204);
    assert!(
        auth_service::revocation::revoke_api_key(&stack.auth, key_id, None)
            .await
            .expect("Redis is back")
    );
}

/// The address a `redis://host:port` URL names.
fn address_of(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("redis://")
        .parse()
        .expect("host:port")
}

/// A failover behind a proxy (or a DNS name): new connections reach the new
/// server, the command connections are closed and reconnect there, and the
/// node's subscriber connection, still open and answering PING, stays on the
/// old one, which no longer receives any publish. The canary catches it:
/// the node reports not-ready, subscribes afresh on the new server, and
/// delivers again, telling its clients what it could not recover.
#[tokio::test]
async fn a_subscription_left_behind_by_a_failover_is_caught_and_remade() {
    let old = testkit::RedisServer::start();
    let new = testkit::RedisServer::start();
    let proxy = testkit::proxy::TcpProxy::start(address_of(&old.url())).await;
    let stack = Stack::start_with(StackOptions {
        nodes: 1,
        redis_url: proxy.redis_url(),
        customise_node: Box::new(|c| {
            fast(c);
            c.canary_timeout_ms = 1_500;
        }),
        ..StackOptions::default()
    })
    .await;
    let user = stack.create_user("fay").await;
    let key = stack.api_key(&user, "connect,publish").await;
    let mut reader = stack.connect(0, &key).await;
    reader.subscribe("public:failover").await;
    let mut writer = stack.connect(0, &key).await;
    let publish =
        |n: u64| json!({ "action": "publish", "channel": "public:failover", "data": { "n": n } });
    let ack = writer.request(publish(1), 1).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(reader.recv_message().await["data"]["n"], 1);

    proxy.redirect(address_of(&new.url()));
    // `normal` spares the subscriber (a RESP2 pub/sub client) and this one.
    let mut admin = old.admin().await;
    let killed: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal"])
        .query_async(&mut admin)
        .await
        .expect("client kill");
    assert!(killed > 0, "no command connection to close");
    let failed_over = Instant::now();

    // Publishes now land on the new server (a publish in flight at the
    // switch may be refused; the client is told, and sends it again).
    let mut id = 2;
    loop {
        let reply = writer.request(publish(2), id).await;
        id += 1;
        if reply["type"] == "ack" {
            break;
        }
        assert!(
            failed_over.elapsed() < PATIENCE,
            "publishing never resumed: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Not ready while the subscription is deaf, ready again once remade.
    let node = &stack.nodes[0];
    let mut seen_late = None;
    loop {
        let (status, body) = stack.readiness(node).await;
        if status == 503 && body["checks"]["redis_delivery"] == "late" {
            seen_late.get_or_insert(failed_over.elapsed());
        }
        if status == 200 && seen_late.is_some() {
            break;
        }
        assert!(
            failed_over.elapsed() < Duration::from_secs(10),
            "readiness never showed the deaf subscription and its repair: {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let late_after = seen_late.expect("seen");
    assert!(
        late_after < Duration::from_secs(4),
        "caught only after {late_after:?}"
    );

    // Delivering again; what was published meanwhile is delivered or
    // announced as not recovered, never silently skipped.
    let ack = writer.request(publish(3), id).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let mut told = false;
    let mut got_two = false;
    loop {
        let frame = reader.recv_message().await;
        match (frame["type"].as_str(), frame["data"]["n"].as_u64()) {
            (Some("recovery"), _) => told |= frame["recovered"] == false,
            (Some("message"), Some(2)) => got_two = true,
            (Some("message"), Some(3)) => break,
            _ => panic!("unexpected frame {frame}"),
        }
    }
    assert!(got_two || told, "message 2 was skipped silently");
}

/// What a failover that lost acknowledged writes leaves behind, made
/// deterministic: the channel's history rolled back three messages (as a
/// promoted replica that never had them would hold it), then the
/// subscriptions dropped, as the failover drops them. The node's cursor is
/// now ahead of the history; its replay must say so (`recovered: false`)
/// rather than wait silently for offsets it believes it has sent, and the
/// next publishes, which reuse those offsets, must still be delivered.
#[tokio::test]
async fn acknowledged_writes_a_failover_lost_are_announced_not_skipped() {
    let redis = testkit::RedisServer::start();
    let stack = Stack::start_with(StackOptions {
        nodes: 1,
        redis_url: redis.url(),
        customise_node: Box::new(fast),
        ..StackOptions::default()
    })
    .await;
    let user = stack.create_user("lost").await;
    let key = stack.api_key(&user, "connect,publish").await;
    let mut listener = stack.connect(0, &key).await;
    listener.subscribe("public:rolled").await;
    let mut publisher = stack.connect(0, &key).await;
    let publish = async |publisher: &mut Client, n: u64| {
        let ack = publisher
            .request(
                json!({ "action": "publish", "channel": "public:rolled", "data": { "n": n } }),
                n,
            )
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        ack
    };
    for n in 1..=10 {
        publish(&mut publisher, n).await;
    }
    for n in 1..=10 {
        assert_eq!(listener.recv_message().await["data"]["n"], n);
    }

    // The promoted replica's view: offsets 8-10 never reached it.
    let keys = shared::keys::RedisKeys::new(&stack.prefix).expect("prefix");
    let channel: shared::channel::ChannelName = "public:rolled".parse().expect("channel");
    let mut admin = redis.admin().await;
    let history = keys.channel_history(&channel);
    let kept: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&history)
        .arg("1-0")
        .arg("7-0")
        .query_async(&mut admin)
        .await
        .expect("history");
    let mut rollback = redis::pipe();
    rollback.atomic().del(&history).ignore();
    for entry in &kept.ids {
        let fields: Vec<(&String, Vec<u8>)> = entry
            .map
            .iter()
            .map(|(k, v)| (k, redis::from_redis_value_ref(v).expect("bytes")))
            .collect();
        rollback.xadd(&history, &entry.id, &fields).ignore();
    }
    rollback
        .hset(keys.channel_meta(&channel), "seq", 7)
        .ignore()
        .ltrim(keys.channel_history_times(&channel), 0, 6)
        .ignore()
        .query_async::<()>(&mut admin)
        .await
        .expect("roll the history back");
    assert!(kill_subscriber_connections(&mut admin).await >= 1);

    let notice = match listener.next_event(Duration::from_secs(10)).await {
        Event::Frame(f) => f,
        other => panic!("no recovery notice: {other:?}"),
    };
    assert_eq!(
        notice,
        json!({ "type": "recovery", "channel": "public:rolled", "recovered": false })
    );
    // The offsets 8-10 are reused by new messages: delivered, not taken
    // for duplicates of what the listener already saw.
    for n in 11..=13 {
        let ack = publish(&mut publisher, n).await;
        assert_eq!(ack["offset"], n - 3);
    }
    for n in 11..=13 {
        let frame = listener.recv_message().await;
        assert_eq!(frame["data"]["n"], n, "{frame}");
        assert_eq!(frame["offset"], n - 3);
    }
}

//! History and recovery, idempotent publishing, re-validation, credential expiry.

use crate::helpers::*;
use serde_json::json;
use std::time::Duration;

on_single_redis_and_cluster!(
    subscribe_with_since_replays_the_gap_then_continues_live_without_gap_or_duplicate,
    a_replay_longer_than_a_page_arrives_whole_then_hands_over_to_live,
    a_gap_history_no_longer_covers_is_reported_not_hidden,
    history_older_than_its_age_limit_is_not_replayed,
    an_idempotency_key_is_delivered_once,
    idempotency_keys_are_scoped_by_publisher,
    revalidation_closes_a_socket_whose_revocation_announcement_was_lost,
    a_socket_closes_when_its_session_reaches_its_absolute_expiry,
    a_subscription_acks_where_it_starts_and_resuming_from_there_misses_nothing,
);

fn fast_publisher(c: &mut ws_node::config::Config) {
    c.client_messages_per_sec = 100_000;
    c.client_message_burst = 100_000;
}

async fn subscribe_with_since_replays_the_gap_then_continues_live_without_gap_or_duplicate(
    backend: Backend,
) {
    let stack = Stack::start_with(StackOptions {
        backend,
        nodes: 2,
        customise_node: Box::new(fast_publisher),
        ..StackOptions::default()
    })
    .await;
    let user = stack.create_user("alice").await;
    let key = stack.api_key(&user, "connect,publish").await;
    let mut subscriber = stack.connect(1, &key).await;
    subscriber.subscribe("public:feed").await;

    // A publisher on the other node, numbering its messages, never pausing.
    let mut publisher = stack.connect(0, &key).await;
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let publishing = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            n += 1;
            let ack = publisher
                .request(
                    json!({ "action": "publish", "channel": "public:feed", "data": { "n": n } }),
                    n,
                )
                .await;
            assert_eq!(ack["type"], "ack", "{ack}");
            if stop_rx.try_recv().is_ok() {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });

    let mut sequence = Sequence::default();
    while sequence.received.len() < 20 {
        sequence.record(&subscriber.recv_message().await);
    }
    // Drop off mid-stream, stay away a while, come back elsewhere with `since`.
    drop(subscriber);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut back = stack.connect(0, &key).await;
    let ack = back
        .subscribe_since(
            "public:feed",
            sequence.epoch.as_deref().expect("epoch"),
            sequence.offset,
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["recovered"], true, "{ack}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_tx.send(());
    let last = publishing.await.expect("publisher");
    while sequence.received.last() != Some(&last) {
        sequence.record(&back.recv_message().await);
    }
    sequence.assert_exactly(last, "recovering subscriber");
}

async fn a_replay_longer_than_a_page_arrives_whole_then_hands_over_to_live(backend: Backend) {
    let stack = Stack::start_with(StackOptions {
        backend,
        nodes: 2,
        customise_node: Box::new(fast_publisher),
        ..StackOptions::default()
    })
    .await;
    let user = stack.create_user("ivy").await;
    let key = stack.api_key(&user, "connect,publish").await;
    let node = stack.nodes[0].state.clone();
    let channel: shared::channel::ChannelName = "public:long".parse().expect("channel");
    let mut epoch = String::new();
    for n in 1..=700u64 {
        epoch = publish_numbered(&node, &channel, n).await.epoch;
    }
    // Live messages keep coming while the replay (three pages) is sent.
    let publishing = tokio::spawn(async move {
        for n in 701..=800u64 {
            publish_numbered(&node, &channel, n).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let mut client = stack.connect(1, &key).await;
    let ack = client.subscribe_since("public:long", &epoch, 0).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    publishing.await.expect("publisher");
    let mut sequence = Sequence::default();
    while sequence.received.last() != Some(&800) {
        sequence.record(&client.recv_message().await);
    }
    sequence.assert_exactly(800, "replaying client");
    assert_eq!(sequence.recovery_failures, 0);
}

async fn a_gap_history_no_longer_covers_is_reported_not_hidden(backend: Backend) {
    let stack = Stack::start_with(StackOptions {
        backend,
        nodes: 1,
        customise_node: Box::new(|c| {
            fast_publisher(c);
            c.common.channel_namespaces = Some(
                r#"[{"name":"short","subscribe":"any","publish":"any","history":{"max_len":5,"max_age_secs":60}},
                    {"name":"user","subscribe":"owner","publish":"server","history":{"max_len":5,"max_age_secs":60}}]"#
                    .into(),
            );
        }),
        ..StackOptions::default()
    })
    .await;
    let user = stack.create_user("bob").await;
    let key = stack.api_key(&user, "connect,publish").await;
    let mut client = stack.connect(0, &key).await;
    // Trimming is approximate (whole stream nodes of ~100 entries), so publish
    // well past what the history keeps.
    let mut epoch = String::new();
    for n in 1..=250u64 {
        let ack = client
            .request(
                json!({ "action": "publish", "channel": "short:x", "data": { "n": n } }),
                n,
            )
            .await;
        epoch = ack["epoch"].as_str().expect("epoch").to_owned();
    }
    let mut late = stack.connect(0, &key).await;
    let ack = late.subscribe_since("short:x", &epoch, 3).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_eq!(ack["epoch"], epoch.as_str());
    assert_eq!(ack["offset"], 250, "the current position, to resync from");
    let ack = late.subscribe_since("short:x", "another-epoch", 249).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    let ack = late.subscribe_since("short:x", &epoch, 248).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(late.recv().await["data"]["n"], 249);
    assert_eq!(late.recv().await["data"]["n"], 250);
}

async fn history_older_than_its_age_limit_is_not_replayed(backend: Backend) {
    let stack = Stack::start_with(StackOptions {
        backend,
        nodes: 1,
        customise_node: Box::new(|c| {
            fast_publisher(c);
            c.common.channel_namespaces = open_namespace("brief", 10_000, 1);
        }),
        ..StackOptions::default()
    })
    .await;
    let user = stack.create_user("erin").await;
    let key = stack.api_key(&user, "connect,publish").await;
    let mut client = stack.connect(0, &key).await;
    let publish = |n: u64| json!({ "action": "publish", "channel": "brief:x", "data": { "n": n } });

    // A busy channel: entries past the age limit are trimmed as new ones
    // arrive, while the channel (and its epoch) lives on.
    let mut epoch = String::new();
    for n in 1..=250u64 {
        epoch = client.request(publish(n), n).await["epoch"]
            .as_str()
            .expect("epoch")
            .to_owned();
    }
    let mut n = 250u64;
    let busy_until = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < busy_until {
        n += 1;
        let ack = client.request(publish(n), n).await;
        assert_eq!((&ack["epoch"], &ack["offset"]), (&json!(epoch), &json!(n)));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut late = stack.connect(0, &key).await;
    let ack = late.subscribe_since("brief:x", &epoch, 0).await;
    assert_eq!(ack["recovered"], false, "aged-out entries: {ack}");
    let ack = late.subscribe_since("brief:x", &epoch, n - 1).await;
    assert_eq!(ack["recovered"], true, "a recent entry: {ack}");
    assert_eq!(late.recv().await["data"]["n"], n);

    // An idle channel: its whole history lapses once its newest entry is too
    // old, and its epoch with it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut later = stack.connect(0, &key).await;
    let ack = later.subscribe_since("brief:x", &epoch, n).await;
    assert_eq!(
        ack["recovered"], false,
        "an idle channel's aged history: {ack}"
    );
}

async fn an_idempotency_key_is_delivered_once(backend: Backend) {
    let stack = Stack::start_on(backend, 1).await;
    let user = stack.create_user("carol").await;
    let key = stack.api_key(&user, "connect,publish,publish_any").await;
    let mut listener = stack.connect(0, &key).await;
    listener.subscribe("broadcast:orders").await;
    listener.subscribe("public:orders").await;
    let mut publisher = stack.connect(0, &key).await;

    // Over the socket...
    let first = publisher
        .request(json!({ "action": "publish", "channel": "public:orders", "data": 1, "idempotency_key": "order-1" }), 1)
        .await;
    let again = publisher
        .request(json!({ "action": "publish", "channel": "public:orders", "data": 1, "idempotency_key": "order-1" }), 2)
        .await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["offset"], first["offset"]);
    assert_eq!(listener.recv_message().await["data"], 1);

    // ...and over HTTP.
    for _ in 0..3 {
        let response = stack
            .http
            .post(stack.auth("/v1/publish"))
            .bearer_auth(&key)
            .json(&json!({ "channel": "broadcast:orders", "data": "once", "idempotency_key": "retry-me" }))
            .send()
            .await
            .expect("publish");
        assert_eq!(response.status(), 202);
    }
    assert_eq!(listener.recv_message().await["data"], "once");
    match listener.next_event(Duration::from_millis(300)).await {
        Event::Timeout => {}
        other => panic!("delivered twice: {other:?}"),
    }
}

/// An idempotency key belongs to its publisher: another user who sends the
/// same key first (by chance, or to pre-claim it) neither swallows nor
/// replaces the real publisher's message.
async fn idempotency_keys_are_scoped_by_publisher(backend: Backend) {
    let stack = Stack::start_on(backend, 1).await;
    let erin = stack.create_user("erin").await;
    let frank = stack.create_user("frank").await;
    let erin_key = stack.api_key(&erin, "connect,publish,publish_any").await;
    let frank_key = stack.api_key(&frank, "connect,publish,publish_any").await;
    let mut listener = stack.connect(0, &erin_key).await;
    listener.subscribe("public:shared-keys").await;
    listener.subscribe("broadcast:shared-keys").await;
    let mut erin_socket = stack.connect(0, &erin_key).await;
    let mut frank_socket = stack.connect(0, &frank_key).await;

    // Over the socket: frank claims the key first, erin's publish still goes out.
    let publish = |data: &str| json!({ "action": "publish", "channel": "public:shared-keys", "data": data, "idempotency_key": "k-1" });
    let franks = frank_socket.request(publish("frank"), 1).await;
    let erins = erin_socket.request(publish("erin"), 2).await;
    for ack in [&franks, &erins] {
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(ack.get("duplicate"), None, "{ack}");
    }
    assert_ne!(erins["offset"], franks["offset"]);
    assert_eq!(listener.recv_message().await["data"], "frank");
    assert_eq!(listener.recv_message().await["data"], "erin");
    let again = erin_socket.request(publish("erin"), 3).await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["offset"], erins["offset"]);

    // Over HTTP: the same, per API key owner.
    let http_publish = async |key: &str, data: &str| -> serde_json::Value {
        let response = stack
            .http
            .post(stack.auth("/v1/publish"))
            .bearer_auth(key)
            .json(&json!({ "channel": "broadcast:shared-keys", "data": data, "idempotency_key": "k-2" }))
            .send()
            .await
            .expect("publish");
        assert_eq!(response.status(), 202);
        response.json().await.expect("json")
    };
    assert_eq!(http_publish(&frank_key, "frank").await["duplicate"], false);
    assert_eq!(http_publish(&erin_key, "erin").await["duplicate"], false);
    assert_eq!(http_publish(&erin_key, "erin").await["duplicate"], true);
    assert_eq!(listener.recv_message().await["data"], "frank");
    assert_eq!(listener.recv_message().await["data"], "erin");
    match listener.next_event(Duration::from_millis(300)).await {
        Event::Timeout => {}
        other => panic!("delivered twice: {other:?}"),
    }
}

async fn revalidation_closes_a_socket_whose_revocation_announcement_was_lost(backend: Backend) {
    let stack = Stack::start_with(StackOptions {
        backend,
        nodes: 1,
        customise_node: Box::new(|c| c.revalidate_interval_secs = 1),
        ..StackOptions::default()
    })
    .await;
    let user = stack.create_user("dan").await;
    let key = stack.api_key(&user, "connect").await;
    let mut client = stack.connect(0, &key).await;
    let key_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM api_keys")
        .fetch_one(&stack.auth.db)
        .await
        .expect("id");
    // Revoke the way auth-service does, minus the control message (as if it was lost).
    let mut redis = stack.auth.redis.clone();
    shared::credential::mark_revoked(
        &mut redis,
        &stack.auth.keys,
        &[shared::credential::Revoked::Source(
            shared::credential::AuthSource::ApiKey { key_id },
        )],
    )
    .await
    .expect("mark");
    let started = std::time::Instant::now();
    assert_eq!(client.expect_close().await, 4003);
    assert!(started.elapsed() < Duration::from_secs(3));
}

async fn a_socket_closes_when_its_session_reaches_its_absolute_expiry(backend: Backend) {
    let stack = Stack::start_with(StackOptions {
        backend,
        nodes: 1,
        customise_auth: Box::new(|c| {
            c.session_absolute_timeout_secs = 2;
            c.session_idle_timeout_secs = 2;
        }),
        ..StackOptions::default()
    })
    .await;
    stack.create_user("erin").await;
    let cookie = stack.login("erin").await;
    let mut client = Client::connect(
        &stack.nodes[0].ws_url(),
        &[("cookie", &cookie), ("origin", APP_ORIGIN)],
    )
    .await
    .expect("cookie handshake");
    assert_eq!(client.recv().await["type"], "welcome");
    let code = loop {
        match client.next_event(Duration::from_secs(5)).await {
            Event::Frame(_) => continue,
            Event::Closed(Some((code, _))) => break code,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code, 4001);
}

/// A subscription's ack says where it starts, so that a client which
/// received nothing before its connection dropped can still resume without a
/// gap: from the channel's last offset, or, for a channel without history
/// yet, from `{"epoch":"","offset":0}`, "before its first message".
async fn a_subscription_acks_where_it_starts_and_resuming_from_there_misses_nothing(
    backend: Backend,
) {
    let stack = Stack::start_on(backend, 2).await;
    let user = stack.create_user("ursula").await;
    let key = stack.api_key(&user, "connect,publish,publish_any").await;
    let subscribe = json!({ "action": "subscribe", "channel": "broadcast:fresh" });

    // No history yet: the position before any message.
    let mut first = stack.connect(0, &key).await;
    let ack = first.request(subscribe.clone(), 1).await;
    assert_eq!(
        (&ack["epoch"], &ack["offset"]),
        (&json!(""), &json!(0)),
        "{ack}"
    );
    assert!(ack.get("recovered").is_none(), "{ack}");
    drop(first);
    for n in 1..=3 {
        stack
            .server_publish(&key, "broadcast:fresh", json!(n))
            .await;
    }
    let mut back = stack.connect(1, &key).await;
    let ack = back.subscribe_since("broadcast:fresh", "", 0).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    let mut epoch = String::new();
    for n in 1..=3u64 {
        let message = back.recv_message().await;
        assert_eq!(
            (&message["data"], &message["offset"]),
            (&json!(n), &json!(n))
        );
        epoch = message["epoch"].as_str().expect("an epoch now").to_owned();
    }

    // With history: the channel's last offset.
    let mut second = stack.connect(0, &key).await;
    let ack = second.request(subscribe.clone(), 1).await;
    assert_eq!(
        (&ack["epoch"], &ack["offset"]),
        (&json!(epoch), &json!(3)),
        "{ack}"
    );
    drop(second);
    stack
        .server_publish(&key, "broadcast:fresh", json!(4))
        .await;
    let mut again = stack.connect(1, &key).await;
    let ack = again.subscribe_since("broadcast:fresh", &epoch, 3).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(again.recv_message().await["data"], 4);
    // And nothing twice: the next frame is the next live message.
    stack
        .server_publish(&key, "broadcast:fresh", json!(5))
        .await;
    assert_eq!(again.recv_message().await["data"], 5);
    assert_eq!(back.recv_message().await["data"], 4);
    assert_eq!(back.recv_message().await["data"], 5);
}

/// Redis's own account of the scripts it ran since the last
/// `SLOWLOG RESET` (with every command logged): how long each took, in
/// microseconds.
async fn script_calls(redis: &mut shared::redis_conn::Redis) -> Vec<u64> {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(10_000)
        .query_async(redis)
        .await
        .expect("SLOWLOG GET");
    let durations: Vec<u64> = entries
        .iter()
        .filter_map(|entry| match entry {
            redis::Value::Array(fields) => Some(fields),
            _ => None,
        })
        .filter(|fields| {
            matches!(fields.get(3), Some(redis::Value::Array(args))
                if matches!(args.first(), Some(redis::Value::BulkString(cmd)) if cmd.eq_ignore_ascii_case(b"evalsha")))
        })
        .filter_map(|fields| match fields.get(2) {
            Some(redis::Value::Int(usec)) => u64::try_from(*usec).ok(),
            _ => None,
        })
        .collect();
    durations
}

/// The median of some durations.
fn median(mut durations: Vec<u64>) -> u64 {
    durations.sort_unstable();
    durations.get(durations.len() / 2).copied().unwrap_or(0)
}

async fn reset_slowlog(redis: &mut shared::redis_conn::Redis) {
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(redis)
        .await
        .expect("SLOWLOG RESET");
}

/// A `since` far back costs Redis about what a near one does: the history is
/// read a page at a time from the first offset wanted, never the whole gap.
/// (Reading the gap, as the node once did, made each such call cost Redis
/// time in proportion to the gap: with large messages, enough to stall it
/// for every other client.)
#[tokio::test]
async fn a_far_back_since_costs_redis_about_what_a_near_one_does() {
    let redis_server = testkit::RedisServer::start();
    let stack = Stack::start_with(StackOptions {
        nodes: 1,
        redis_url: redis_server.url(),
        customise_node: Box::new(|c| {
            c.common.channel_namespaces = open_namespace("big", 5_000, 600);
            // What Redis spends per read is measured here, not the pacing.
            c.history_reads_per_sec = 1_000;
            c.history_read_burst = 1_000;
        }),
        ..StackOptions::default()
    })
    .await;
    let user = stack.create_user("fay").await;
    let key = stack.api_key(&user, "connect").await;
    let node = &stack.nodes[0].state;
    let mut redis = node.redis.clone();
    // 3 000 messages of 16 KiB: 48 MiB of history.
    let channel: shared::channel::ChannelName = "big:archive".parse().expect("channel");
    let rule = node.namespaces.rule_for(&channel).expect("rule").clone();
    let data = serde_json::value::RawValue::from_string(format!("\"{}\"", "x".repeat(16 * 1024)))
        .expect("json");
    let mut epoch = String::new();
    for _ in 0..3_000 {
        let published = shared::channel::publish(
            &mut redis,
            &node.keys,
            &channel,
            &data,
            rule.history,
            &test_publisher(),
            None,
        )
        .await
        .expect("published");
        epoch = published.position.expect("history").epoch;
    }
    // Every command logged, with its duration.
    for (name, value) in [
        ("slowlog-log-slower-than", "0"),
        ("slowlog-max-len", "10000"),
    ] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut redis)
            .await
            .expect("CONFIG SET");
    }
    let mut warm = stack.connect(0, &key).await;
    warm.subscribe_since("big:archive", &epoch, 2_999).await;
    reset_slowlog(&mut redis).await;

    // A page is cut at about 256 KiB: 16 of these messages.
    let per_page = (256 * 1024_u64).div_ceil(16 * 1024 + 2);
    // Near: the last 256 messages.
    let mut near = stack.connect(0, &key).await;
    let ack = near
        .subscribe_since("big:archive", &epoch, 3_000 - 256)
        .await;
    assert_eq!(ack["recovered"], true, "{ack}");
    for _ in 0..256 {
        near.recv_message().await;
    }
    let near_reads = script_calls(&mut redis).await;
    assert_eq!(near_reads.len() as u64, 256 / per_page);
    let near_usec = median(near_reads);
    reset_slowlog(&mut redis).await;

    // Far: from the start, 3 000 messages.
    let mut far = stack.connect(0, &key).await;
    let ack = far.subscribe_since("big:archive", &epoch, 0).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    for n in 1..=3_000u64 {
        assert_eq!(far.recv_message().await["offset"], n);
    }
    let far_reads = script_calls(&mut redis).await;
    assert_eq!(
        far_reads.len() as u64,
        3_000_u64.div_ceil(per_page),
        "a page at a time"
    );
    let far_usec = far_reads.into_iter().max().unwrap_or(0);
    eprintln!("history reads: near {near_usec} µs (median), far: the longest page {far_usec} µs");
    // Pages are small, so the longest of some 190 is much exposed to noise
    // on a busy machine; a read of the whole gap would cost some 190 pages'
    // worth.
    assert!(
        far_usec < 50 * near_usec,
        "a far-back since cost Redis {far_usec} µs in one call, a near page {near_usec} µs"
    );
}

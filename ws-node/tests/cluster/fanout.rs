use crate::helpers::*;
use serde_json::json;

on_single_redis_and_cluster!(
    a_publish_on_one_node_reaches_every_node_exactly_once_in_order,
    a_server_message_for_a_user_reaches_all_their_connections_on_every_node,
    server_broadcasts_reach_subscribers_on_every_node,
    unsubscribing_stops_delivery_and_releases_the_redis_subscription,
    messages_carry_the_server_stamped_sender,
    leaving_and_rejoining_a_channel_quickly_keeps_the_subscription,
);

async fn a_publish_on_one_node_reaches_every_node_exactly_once_in_order(backend: Backend) {
    let stack = Stack::start_with(StackOptions {
        backend,
        nodes: 3,
        customise_node: Box::new(|c| c.client_messages_per_sec = 10_000),
        ..StackOptions::default()
    })
    .await;
    let user = stack.create_user("alice").await;
    let key = stack.api_key(&user, "connect,publish").await;
    let mut subscribers = Vec::new();
    for node in 0..3 {
        for _ in 0..2 {
            let mut client = stack.connect(node, &key).await;
            client.subscribe("public:room").await;
            subscribers.push(client);
        }
    }
    let mut publisher = stack.connect(0, &key).await;
    const N: u64 = 200;
    for n in 1..=N {
        let reply = publisher
            .request(
                json!({ "action": "publish", "channel": "public:room", "data": { "n": n } }),
                n,
            )
            .await;
        assert_eq!(reply["type"], "ack", "{reply}");
        assert_eq!(reply["offset"], n);
    }
    for (i, client) in subscribers.iter_mut().enumerate() {
        for n in 1..=N {
            let frame = client.recv_message().await;
            assert_eq!(frame["type"], "message", "subscriber {i}: {frame}");
            assert_eq!(frame["channel"], "public:room");
            assert_eq!(frame["data"]["n"], n, "subscriber {i} out of order");
            assert_eq!(frame["offset"], n);
        }
        // Nothing more: exactly once.
        assert!(matches!(
            client
                .next_event(std::time::Duration::from_millis(200))
                .await,
            Event::Timeout
        ));
    }
}

async fn a_server_message_for_a_user_reaches_all_their_connections_on_every_node(backend: Backend) {
    let stack = Stack::start_on(backend, 3).await;
    let recipient = stack.create_user("bob").await;
    let bystander = stack.create_user("carol").await;
    let backend = stack.create_user("backend").await;
    let bob_key = stack.api_key(&recipient, "connect").await;
    let carol_key = stack.api_key(&bystander, "connect").await;
    let server_key = stack.api_key(&backend, "publish_any").await;

    let mut on_b = stack.connect(1, &bob_key).await;
    let mut on_c = stack.connect(2, &bob_key).await;
    let mut carol = stack.connect(1, &carol_key).await;
    let channel = format!("user:{}", recipient.id);
    stack
        .server_publish(&server_key, &channel, json!({ "text": "hi bob" }))
        .await;
    for client in [&mut on_b, &mut on_c] {
        let frame = client.recv().await;
        assert_eq!(frame["channel"], channel);
        assert_eq!(frame["data"]["text"], "hi bob");
    }
    assert!(matches!(
        carol
            .next_event(std::time::Duration::from_millis(300))
            .await,
        Event::Timeout
    ));
}

async fn server_broadcasts_reach_subscribers_on_every_node(backend: Backend) {
    let stack = Stack::start_on(backend, 2).await;
    let user = stack.create_user("dan").await;
    let key = stack.api_key(&user, "connect,publish,publish_any").await;
    let mut a = stack.connect(0, &key).await;
    let mut b = stack.connect(1, &key).await;
    a.subscribe("broadcast:news").await;
    b.subscribe("broadcast:news").await;
    for n in 0..20 {
        stack.server_publish(&key, "broadcast:news", json!(n)).await;
    }
    for client in [&mut a, &mut b] {
        for n in 0..20 {
            assert_eq!(client.recv().await["data"], n);
        }
    }
}

async fn unsubscribing_stops_delivery_and_releases_the_redis_subscription(backend: Backend) {
    let stack = Stack::start_on(backend, 1).await;
    let user = stack.create_user("erin").await;
    let key = stack.api_key(&user, "connect,publish").await;
    let mut client = stack.connect(0, &key).await;
    client.subscribe("public:temp").await;
    let live = stack.live_channel("public:temp");
    let redis = stack.redis().await;
    let channels = || {
        let (live, mut redis) = (live.clone(), redis.clone());
        async move {
            // A shard channel on a cluster (redis-rs asks every node and
            // adds their answers up).
            let numsub = if redis.is_cluster() {
                redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(&live).clone()
            } else {
                redis::cmd("PUBSUB").arg("NUMSUB").arg(&live).clone()
            };
            let n: Vec<(String, u64)> = numsub.query_async(&mut redis).await.expect("numsub");
            n[0].1
        }
    };
    assert_eq!(channels().await, 1);
    let reply = client
        .request(
            json!({ "action": "unsubscribe", "channel": "public:temp" }),
            5,
        )
        .await;
    assert_eq!(reply["type"], "ack");
    assert_eq!(channels().await, 0);
    stack
        .server_publish(&key, "public:temp", json!("nobody hears"))
        .await;
    assert!(matches!(
        client
            .next_event(std::time::Duration::from_millis(300))
            .await,
        Event::Timeout
    ));
}

/// Every message names its publisher as the server authenticated them, over
/// the socket and over HTTP, live and replayed; a `from` the client writes
/// into `data` stays in `data`.
async fn messages_carry_the_server_stamped_sender(backend: Backend) {
    let stack = Stack::start_on(backend, 2).await;
    let gus = stack.create_user("gus").await;
    let hal = stack.create_user("hal").await;
    let gus_key = stack.api_key(&gus, "connect,publish").await;
    let hal_key = stack.api_key(&hal, "publish").await;
    let gus_from = json!({ "user_id": gus.id.to_string(), "username": "gus" });
    let hal_from = json!({ "user_id": hal.id.to_string(), "username": "hal" });
    let mut listener = stack.connect(1, &gus_key).await;
    listener.subscribe("public:senders").await;

    let mut socket = stack.connect(0, &gus_key).await;
    let forged = json!({ "from": hal_from, "text": "it was hal" });
    let ack = socket
        .request(
            json!({ "action": "publish", "channel": "public:senders", "data": forged }),
            1,
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let live = listener.recv_message().await;
    assert_eq!(live["from"], gus_from, "{live}");
    assert_eq!(live["data"], forged);

    let response = stack
        .http
        .post(stack.auth("/v1/publish"))
        .bearer_auth(&hal_key)
        .json(&json!({ "channel": "public:senders", "data": { "from": gus_from } }))
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status(), 202);
    let live = listener.recv_message().await;
    assert_eq!(live["from"], hal_from, "{live}");
    assert_eq!(live["data"], json!({ "from": gus_from }));

    // Replayed from history, the same senders.
    let epoch = ack["epoch"].as_str().expect("epoch");
    let mut late = stack.connect(0, &gus_key).await;
    let resumed = late
        .subscribe_since(
            "public:senders",
            epoch,
            ack["offset"].as_u64().expect("offset") - 1,
        )
        .await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(late.recv_message().await["from"], gus_from);
    assert_eq!(late.recv_message().await["from"], hal_from);
}

/// A channel left and joined again at once, over and over: on a cluster,
/// Redis confirms each `SUNSUBSCRIBE` with the same push it sends when a
/// slot moves away. The node must tell its own from Redis's and keep its
/// subscription (no loss, no resubscription of everything), and delivery
/// goes on.
async fn leaving_and_rejoining_a_channel_quickly_keeps_the_subscription(backend: Backend) {
    let stack = Stack::start_on(backend, 1).await;
    let user = stack.create_user("flip").await;
    let key = stack.api_key(&user, "connect,publish").await;
    let mut client = stack.connect(0, &key).await;
    client.subscribe("public:flip").await;
    for round in 0..30u64 {
        let reply = client
            .request(
                json!({ "action": "unsubscribe", "channel": "public:flip" }),
                10 + round * 2,
            )
            .await;
        assert_eq!(reply["type"], "ack", "{reply}");
        let reply = client
            .request(
                json!({ "action": "subscribe", "channel": "public:flip" }),
                11 + round * 2,
            )
            .await;
        assert_eq!(reply["type"], "ack", "{reply}");
    }
    let ack = client
        .request(
            json!({ "action": "publish", "channel": "public:flip", "data": "still here" }),
            1_000,
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(client.recv_message().await["data"], "still here");
    let metrics = stack.metrics(&stack.nodes[0]).await;
    assert_eq!(
        metric(&metrics, "ws_subscription_losses_total"),
        0.0,
        "the subscription was remade"
    );
}

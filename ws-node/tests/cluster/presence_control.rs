//! Presence and the server control API.

use crate::helpers::*;
use serde_json::{Value, json};
use std::time::Duration;

on_single_redis_and_cluster!(
    presence_counts_users_once_and_announces_joins_and_leaves,
    presence_is_answered_only_to_subscribers,
    the_control_api_lists_and_disconnects_connections_across_nodes,
);

async fn presence(client: &mut Client, channel: &str) -> Value {
    let reply = client
        .request(json!({ "action": "presence", "channel": channel }), 77)
        .await;
    assert_eq!(reply["type"], "presence", "{reply}");
    reply["members"].clone()
}

async fn presence_counts_users_once_and_announces_joins_and_leaves(backend: Backend) {
    let stack = Stack::start_on(backend, 2).await;
    let ann = stack.create_user("ann").await;
    let ben = stack.create_user("ben").await;
    let ann_key = stack.api_key(&ann, "connect").await;
    let ben_key = stack.api_key(&ben, "connect").await;

    let mut watcher = stack.connect(0, &ben_key).await;
    watcher.subscribe("public:lobby").await;
    assert_eq!(
        watcher.recv().await["type"],
        "join",
        "ben sees himself arrive"
    );

    // Ann opens two tabs on two nodes: one join.
    let mut tab1 = stack.connect(0, &ann_key).await;
    tab1.subscribe("public:lobby").await;
    let mut tab2 = stack.connect(1, &ann_key).await;
    tab2.subscribe("public:lobby").await;
    let joined = watcher.recv().await;
    assert_eq!(joined["type"], "join");
    assert_eq!(joined["user"]["username"], "ann");
    assert!(
        matches!(
            watcher.next_event(Duration::from_millis(300)).await,
            Event::Timeout
        ),
        "one join per user"
    );

    let members = presence(&mut watcher, "public:lobby").await;
    assert_eq!(members, {
        let mut expected = vec![
            json!({ "user": { "id": ann.id.to_string(), "username": "ann" }, "connections": 2 }),
            json!({ "user": { "id": ben.id.to_string(), "username": "ben" }, "connections": 1 }),
        ];
        expected.sort_by_key(|m| m["user"]["id"].as_str().unwrap_or_default().to_owned());
        json!(expected)
    });

    // Closing one tab is not a leave; closing the second is.
    drop(tab1);
    assert!(matches!(
        watcher.next_event(Duration::from_millis(500)).await,
        Event::Timeout
    ));
    let reply = tab2
        .request(
            json!({ "action": "unsubscribe", "channel": "public:lobby" }),
            1,
        )
        .await;
    assert_eq!(reply["type"], "ack");
    let left = watcher.recv().await;
    assert_eq!(
        (left["type"].as_str(), left["user"]["username"].as_str()),
        (Some("leave"), Some("ann"))
    );
    let members = presence(&mut watcher, "public:lobby").await;
    assert_eq!(members.as_array().map(Vec::len), Some(1));

    let reply = watcher
        .request(json!({ "action": "presence", "channel": "broadcast:x" }), 9)
        .await;
    assert_eq!(reply["code"], "presence_disabled");
}

/// Only a channel's subscribers may ask who is in it; someone who may
/// subscribe but has not (or no longer is) gets `not_subscribed`.
async fn presence_is_answered_only_to_subscribers(backend: Backend) {
    let stack = Stack::start_on(backend, 1).await;
    let ann = stack.create_user("ann").await;
    let eve = stack.create_user("eve").await;
    let ann_key = stack.api_key(&ann, "connect").await;
    let eve_key = stack.api_key(&eve, "connect").await;
    let mut member = stack.connect(0, &ann_key).await;
    member.subscribe("public:private-talk").await;
    assert_eq!(
        presence(&mut member, "public:private-talk")
            .await
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    let mut outsider = stack.connect(0, &eve_key).await;
    let ask = json!({ "action": "presence", "channel": "public:private-talk" });
    let reply = outsider.request(ask.clone(), 1).await;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("not_subscribed")),
        "{reply}"
    );
    assert!(reply.get("members").is_none());
    outsider.subscribe("public:private-talk").await;
    assert_eq!(
        presence(&mut outsider, "public:private-talk")
            .await
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let reply = outsider
        .request(
            json!({ "action": "unsubscribe", "channel": "public:private-talk" }),
            2,
        )
        .await;
    assert_eq!(reply["type"], "ack");
    assert_eq!(outsider.request(ask, 3).await["code"], "not_subscribed");
}

async fn the_control_api_lists_and_disconnects_connections_across_nodes(backend: Backend) {
    let stack = Stack::start_on(backend, 2).await;
    let target = stack.create_user("target").await;
    let operator = stack.create_user("operator").await;
    let target_key = stack.api_key(&target, "connect").await;
    let admin_key = stack.api_key(&operator, "admin").await;
    let weak_key = stack.api_key(&operator, "publish").await;

    let mut on_a = stack.connect(0, &target_key).await;
    on_a.subscribe("public:room").await;
    let mut on_b = stack.connect(1, &target_key).await;
    let mut on_b2 = stack.connect(1, &target_key).await;

    let listed = stack.list_connections(target.id, &admin_key).await;
    let connections = listed["connections"].as_array().expect("list");
    assert_eq!(connections.len(), 3, "{listed}");
    let on_a_entry = connections
        .iter()
        .find(|c| c["node"] == "node-a")
        .expect("node-a connection");
    assert!(
        on_a_entry["channels"]
            .as_array()
            .expect("channels")
            .contains(&json!("public:room"))
    );
    assert!(on_a_entry["connected_at"].as_u64().expect("since") > 0);

    let forbidden = stack
        .http
        .get(stack.auth(&format!("/v1/users/{}/connections", target.id)))
        .bearer_auth(&weak_key)
        .send()
        .await
        .expect("list");
    assert_eq!(forbidden.status(), 403);

    // One connection, by the id from its welcome frame.
    let one = connections
        .iter()
        .find(|c| c["node"] == "node-b")
        .expect("node-b connection")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let response = stack
        .http
        .post(stack.auth(&format!("/v1/connections/{one}/disconnect")))
        .bearer_auth(&admin_key)
        .send()
        .await
        .expect("disconnect");
    assert_eq!(response.status(), 202);
    let mut closed = 0;
    for client in [&mut on_b, &mut on_b2] {
        if let Event::Closed(Some((4003, _))) = client.next_event(Duration::from_millis(1500)).await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 1, "exactly the named connection closes");

    // The whole user, everywhere.
    let response = stack
        .http
        .post(stack.auth(&format!("/v1/users/{}/disconnect", target.id)))
        .bearer_auth(&admin_key)
        .send()
        .await
        .expect("disconnect");
    assert_eq!(response.status(), 202);
    assert_eq!(on_a.expect_close().await, 4003);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let listed = stack.list_connections(target.id, &admin_key).await;
        if listed["connections"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "closed connections still listed: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One user with thousands of connections in a channel (an API client, say):
/// each join and leave costs a few Redis lookups, not one per connection,
/// and `join` / `leave` still go out exactly when the user arrives and goes,
/// past more lapsed entries (of a dead node) than one page of the scan.
#[tokio::test]
async fn presence_of_a_user_with_thousands_of_connections_stays_cheap_and_exact() {
    use futures_util::StreamExt as _;
    use ws_node::cluster::presence::{self, Membership};
    let server = testkit::RedisServer::start();
    let mut redis = shared::redis_conn::connect(&server.url())
        .await
        .expect("redis");
    let mut admin = server.admin().await;
    let keys = shared::keys::RedisKeys::new("crowd").expect("keys");
    let channel: shared::channel::ChannelName = "public:crowd".parse().expect("channel");
    let user = uuid::Uuid::new_v4();
    let lease = Duration::from_secs(30);
    let member = |node: &str, i: usize| {
        Membership::new(channel.clone(), user, "crowd", &format!("{node}:{i}"))
    };
    // 100 entries of a node that died: lapsed, not yet swept.
    for i in 0..100 {
        let lapsed = member("node-z", i);
        redis::pipe()
            .zadd(keys.channel_presence(&channel), &lapsed.member, 1)
            .zadd(keys.channel_presence_index(&channel), &lapsed.member, 0)
            .query_async::<()>(&mut admin)
            .await
            .expect("lapsed entry");
    }
    let client = redis::Client::open(server.url()).expect("client");
    let mut events = client.get_async_pubsub().await.expect("pubsub");
    events
        .subscribe(keys.channel_live(&channel))
        .await
        .expect("subscribe");
    let mut events = events.into_on_message();

    let live: Vec<Membership> = (0..3_000).map(|i| member("node-a", i)).collect();
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(&mut admin)
        .await
        .expect("resetstat");
    for m in &live {
        presence::join(&mut redis, &keys, m, lease)
            .await
            .expect("join");
    }
    for m in &live {
        presence::leave(&mut redis, &keys, m).await.expect("leave");
    }
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut admin)
        .await
        .expect("info");
    let lookups: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_zscore:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0);
    // One per join and leave, the lapsed ones when the user has no live one
    // left; counting every entry of the user took ~9 million here.
    assert!(
        lookups <= 2 * live.len() as u64 + 300,
        "{lookups} ZSCORE lookups for {} joins and as many leaves",
        live.len()
    );

    let mut kinds = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(500), events.next()).await
    {
        let event: Value = serde_json::from_slice(message.get_payload_bytes()).expect("json");
        kinds.push(event["type"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(
        kinds,
        ["join", "leave"],
        "one join when the user arrived, one leave when they went"
    );
}

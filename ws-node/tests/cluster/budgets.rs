//! What one user can make Redis hold: publish quotas counted across nodes and
//! both publish paths, and the per-namespace name and size rules.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

on_single_redis_and_cluster!(
    the_bytes_quota_is_one_budget_across_nodes_and_publish_paths,
    the_new_channel_quota_counts_only_channels_that_keep_history,
    a_namespace_accepts_only_its_names_and_message_sizes,
    publishes_sent_back_to_back_are_answered_and_delivered_in_order,
);

const NAMESPACES: &str = r#"[
    {"name":"public","subscribe":"any","publish":"any","history":{"max_len":10,"max_age_secs":60}},
    {"name":"live","subscribe":"any","publish":"any"},
    {"name":"chat","subscribe":"any","publish":"any","names":"lobby|room-[0-9]{1,4}","max_message_bytes":64,"history":{"max_len":10,"max_age_secs":60}},
    {"name":"user","subscribe":"owner","publish":"server"}]"#;

/// A stack whose every process has these quotas and [`NAMESPACES`].
async fn stack_with_quota(backend: Backend, bytes: u64, new_channels: u64) -> Stack {
    let common = move |c: &mut shared::config::CommonConfig| {
        c.publish_quota_bytes = bytes;
        c.publish_quota_new_channels = new_channels;
        c.publish_quota_window_secs = 60;
        c.channel_namespaces = Some(NAMESPACES.to_owned());
    };
    Stack::start_with(StackOptions {
        backend,
        nodes: 2,
        customise_node: Box::new(move |c| common(&mut c.common)),
        customise_auth: Box::new(move |c| common(&mut c.common)),
        ..StackOptions::default()
    })
    .await
}

fn publish(channel: &str, data: Value) -> Value {
    json!({ "action": "publish", "channel": channel, "data": data })
}

/// `data` that is `len` bytes of JSON (a string: quotes included).
fn data_of(len: usize) -> Value {
    json!("x".repeat(len - 2))
}

async fn http_publish(stack: &Stack, key: &str, channel: &str, data: Value) -> reqwest::Response {
    stack
        .http
        .post(stack.auth("/v1/publish"))
        .bearer_auth(key)
        .json(&json!({ "channel": channel, "data": data }))
        .send()
        .await
        .expect("request")
}

async fn code_of(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

async fn the_bytes_quota_is_one_budget_across_nodes_and_publish_paths(backend: Backend) {
    let stack = stack_with_quota(backend, 100, 100).await;
    let user = stack.create_user("quinn").await;
    let key = stack.api_key(&user, "connect,publish").await;
    let backend_key = stack.api_key(&user, "publish_any").await;
    let mut on_a = stack.connect(0, &key).await;
    let mut on_b = stack.connect(1, &key).await;

    let ack = on_a.request(publish("public:q", data_of(40)), 1).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let ack = on_b.request(publish("public:q", data_of(40)), 2).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let refused = on_a.request(publish("public:q", data_of(40)), 3).await;
    assert_eq!(
        (&refused["type"], &refused["code"]),
        (&json!("error"), &json!("quota_exceeded")),
        "{refused}"
    );
    // A refused publish is not charged: 20 bytes are still there, over HTTP too.
    let response = http_publish(&stack, &key, "public:q", data_of(15)).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = http_publish(&stack, &key, "public:q", data_of(15)).await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("secs");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(
        code_of(response).await,
        (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded".to_owned())
    );
    // A backend's key is not charged; another user has their own budget.
    let response = http_publish(&stack, &backend_key, "public:q", data_of(40)).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let other = stack.create_user("rae").await;
    let other_key = stack.api_key(&other, "connect,publish").await;
    let mut theirs = stack.connect(1, &other_key).await;
    let ack = theirs.request(publish("public:q", data_of(40)), 1).await;
    assert_eq!(ack["type"], "ack", "{ack}");
}

async fn the_new_channel_quota_counts_only_channels_that_keep_history(backend: Backend) {
    let stack = stack_with_quota(backend, 1 << 20, 2).await;
    let user = stack.create_user("sol").await;
    let key = stack.api_key(&user, "connect,publish").await;
    let mut client = stack.connect(0, &key).await;
    for (id, channel) in [(1, "public:a"), (2, "public:b"), (3, "public:a")] {
        let ack = client.request(publish(channel, json!(1)), id).await;
        assert_eq!(ack["type"], "ack", "{channel}: {ack}");
    }
    let refused = client.request(publish("public:c", json!(1)), 4).await;
    assert_eq!(refused["code"], "quota_exceeded", "{refused}");
    let response = http_publish(&stack, &key, "public:d", json!(1)).await;
    assert_eq!(
        code_of(response).await,
        (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded".to_owned())
    );
    // Nothing was created for the refused publishes, and a namespace without
    // history creates nothing in Redis, so it is not counted.
    let mut redis = stack.auth.redis.clone();
    let meta = stack
        .auth
        .keys
        .channel_meta(&"public:c".parse().expect("name"));
    let exists: bool = redis::cmd("EXISTS")
        .arg(meta)
        .query_async(&mut redis)
        .await
        .expect("exists");
    assert!(!exists);
    for id in 5..8 {
        let ack = client
            .request(publish(&format!("live:{id}"), json!(1)), id)
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
}

async fn a_namespace_accepts_only_its_names_and_message_sizes(backend: Backend) {
    let stack = stack_with_quota(backend, 1 << 20, 100).await;
    let user = stack.create_user("tam").await;
    let key = stack.api_key(&user, "connect,publish").await;
    let mut client = stack.connect(0, &key).await;

    for (id, channel) in [(1, "chat:lobby"), (2, "chat:room-7")] {
        let ack = client
            .request(json!({ "action": "subscribe", "channel": channel }), id)
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    for (id, channel) in [(3, "chat:lobby2"), (4, "chat:anything")] {
        let refused = client
            .request(json!({ "action": "subscribe", "channel": channel }), id)
            .await;
        assert_eq!(refused["code"], "invalid_channel", "{refused}");
        let refused = client.request(publish(channel, json!(1)), id + 10).await;
        assert_eq!(refused["code"], "invalid_channel", "{refused}");
    }
    let ack = client.request(publish("chat:lobby", data_of(64)), 5).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let refused = client.request(publish("chat:lobby", data_of(65)), 6).await;
    assert_eq!(refused["code"], "message_too_large", "{refused}");
    // The other namespaces keep the global limit.
    let ack = client.request(publish("public:x", data_of(1000)), 7).await;
    assert_eq!(ack["type"], "ack", "{ack}");

    // The same rules over HTTP.
    let response = http_publish(&stack, &key, "chat:anything", json!(1)).await;
    assert_eq!(
        code_of(response).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field".to_owned())
    );
    let response = http_publish(&stack, &key, "chat:lobby", data_of(65)).await;
    assert_eq!(
        code_of(response).await,
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large".to_owned()
        )
    );
    let response = http_publish(&stack, &key, "chat:room-1", data_of(64)).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

async fn publishes_sent_back_to_back_are_answered_and_delivered_in_order(backend: Backend) {
    // Two new channels allowed: `public:one` and `public:two` take them.
    let stack = stack_with_quota(backend, 1 << 20, 2).await;
    let user = stack.create_user("uma").await;
    let key = stack.api_key(&user, "connect,publish").await;
    let mut reader = stack.connect(1, &key).await;
    reader.subscribe("public:one").await;
    let mut writer = stack.connect(0, &key).await;

    let with_id = |mut frame: Value, id: u64| {
        frame["id"] = id.into();
        frame
    };
    let mut burst = Vec::new();
    for n in 0..40u64 {
        burst.push(with_id(publish("public:one", json!({ "n": n })), n));
    }
    burst.extend([
        with_id(publish("public:two", json!(1)), 40),
        with_id(publish("public:three", json!(1)), 41),
        with_id(publish("chat:nope", json!(1)), 42),
        with_id(publish("chat:lobby", data_of(65)), 43),
        with_id(publish("live:x", json!(1)), 44),
        // Not a publish: handled after the publishes before it, and before
        // those after it.
        with_id(
            json!({ "action": "subscribe", "channel": "public:two" }),
            45,
        ),
        with_id(publish("public:two", json!(2)), 46),
    ]);
    writer.send_burst(&burst).await;

    let mut replies = Vec::new();
    while replies.len() < burst.len() {
        let frame = writer.recv().await;
        if frame["type"] == "ack" || frame["type"] == "error" {
            replies.push(frame);
        }
    }
    let ids: Vec<u64> = replies
        .iter()
        .map(|r| r["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(ids, (0..47).collect::<Vec<_>>(), "replies in request order");
    for (n, reply) in replies[..40].iter().enumerate() {
        assert_eq!(reply["type"], "ack", "{reply}");
        assert_eq!(reply["offset"], n as u64 + 1, "{reply}");
    }
    let codes: Vec<&str> = replies[40..]
        .iter()
        .map(|r| r["code"].as_str().unwrap_or("ack"))
        .collect();
    assert_eq!(
        codes,
        [
            "ack",
            "quota_exceeded",
            "invalid_channel",
            "message_too_large",
            "ack",
            "ack",
            "ack"
        ]
    );
    assert_eq!(replies[46]["offset"], 2, "{}", replies[46]);

    for n in 0..40u64 {
        let message = reader.recv_message().await;
        assert_eq!(message["data"]["n"], n, "delivered in order: {message}");
        assert_eq!(message["offset"], n + 1, "{message}");
    }
}

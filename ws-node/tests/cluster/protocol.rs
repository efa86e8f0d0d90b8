use crate::helpers::*;
use futures_util::SinkExt as _;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn refused_subscribes_and_publishes_are_error_frames_not_disconnects() {
    let stack = Stack::start(1).await;
    let me = stack.create_user("alice").await;
    let other = stack.create_user("bob").await;
    let key = stack.api_key(&me, "connect,publish").await;
    let mut client = stack.connect(0, &key).await;

    let cases = [
        (
            json!({ "action": "subscribe", "channel": format!("user:{}", other.id) }),
            "forbidden",
        ),
        (
            json!({ "action": "publish", "channel": "broadcast:news", "data": 1 }),
            "forbidden",
        ),
        (
            json!({ "action": "publish", "channel": format!("user:{}", other.id), "data": 1 }),
            "forbidden",
        ),
        (
            json!({ "action": "subscribe", "channel": "secret:x" }),
            "unknown_namespace",
        ),
        (
            json!({ "action": "subscribe", "channel": "no-namespace" }),
            "invalid_channel",
        ),
        (json!({ "action": "subscribe" }), "bad_request"),
        (json!({ "action": "dance" }), "unknown_action"),
        (json!({ "action": "ping", "surprise": true }), "bad_request"),
        (
            json!({ "action": "auth", "ticket": "x" }),
            "already_authenticated",
        ),
        (
            json!({ "action": "unsubscribe", "channel": format!("user:{}", me.id) }),
            "forbidden",
        ),
    ];
    for (i, (frame, code)) in cases.into_iter().enumerate() {
        let reply = client.request(frame.clone(), i as u64).await;
        assert_eq!(reply["type"], "error", "{frame} -> {reply}");
        assert_eq!(reply["code"], code, "{frame} -> {reply}");
        assert!(reply["message"].is_string());
    }
    client
        .socket
        .send(Message::text("not json"))
        .await
        .expect("send");
    let reply = client.recv().await;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("bad_request"))
    );
    client
        .socket
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    assert_eq!(client.recv().await["code"], "unsupported");

    // Still connected and useful; its own channel is allowed.
    let reply = client
        .request(
            json!({ "action": "subscribe", "channel": format!("user:{}", me.id) }),
            99,
        )
        .await;
    assert_eq!(reply["type"], "ack");
    assert_eq!(
        client.request(json!({ "action": "ping" }), 100).await["type"],
        "ack"
    );
    assert_eq!(
        client
            .request(json!({ "action": "ping", "id": "text-id" }), 101)
            .await["type"],
        "ack"
    );
}

/// `[[…[1]…]]`, arrays nested `depth` deep.
fn nested(depth: usize) -> serde_json::Value {
    serde_json::from_str(&format!("{}1{}", "[".repeat(depth), "]".repeat(depth))).expect("json")
}

/// Data nested past 64 levels is refused with `bad_request` and reaches
/// nobody; 64 levels are delivered.
#[tokio::test]
async fn data_nested_deeper_than_64_levels_is_refused() {
    let stack = Stack::start(1).await;
    let user = stack.create_user("deep").await;
    let key = stack.api_key(&user, "connect,publish").await;
    let mut listener = stack.connect(0, &key).await;
    listener.subscribe("public:deep").await;
    let mut client = stack.connect(0, &key).await;
    let publish = |data| json!({ "action": "publish", "channel": "public:deep", "data": data });
    let refused = client.request(publish(nested(65)), 1).await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("bad_request")),
        "{refused}"
    );
    let accepted = client.request(publish(nested(64)), 2).await;
    assert_eq!(accepted["type"], "ack", "{accepted}");
    assert_eq!(listener.recv_message().await["data"], nested(64));
}

#[tokio::test]
async fn a_ticket_narrowed_to_connect_cannot_publish() {
    let stack = Stack::start(1).await;
    let user = stack.create_user("carol").await;
    let key = stack.api_key(&user, "connect").await;
    let mut client = stack.connect(0, &key).await;
    let reply = client
        .request(
            json!({ "action": "publish", "channel": "public:x", "data": 1 }),
            1,
        )
        .await;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );
    client.subscribe("public:x").await;
}

#[tokio::test]
async fn an_oversize_frame_closes_with_1009() {
    let stack = Stack::start(1).await;
    let user = stack.create_user("dan").await;
    let key = stack.api_key(&user, "connect,publish").await;
    let mut client = stack.connect(0, &key).await;
    let big = json!({ "action": "publish", "channel": "public:x", "data": "x".repeat(70 * 1024) });
    let _ = client.socket.send(Message::text(big.to_string())).await;
    assert_eq!(client.expect_close().await, 1009);
    // Exactly at the limit's edge is fine.
    let mut client = stack.connect(0, &key).await;
    let fits = json!({ "action": "publish", "channel": "public:x", "data": "x".repeat(60 * 1024), "id": 1 });
    client
        .socket
        .send(Message::text(fits.to_string()))
        .await
        .expect("send");
    assert_eq!(client.recv().await["type"], "ack");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_while_a_reader_keeps_receiving() {
    let stack = Stack::start_with(StackOptions {
        nodes: 1,
        customise_node: Box::new(|c| c.send_queue_frames = 64),
        ..StackOptions::default()
    })
    .await;
    let user = stack.create_user("erin").await;
    let key = stack.api_key(&user, "connect,publish").await;
    let mut reader = stack.connect(0, &key).await;
    let mut stalled = stack.connect(0, &key).await;
    reader.subscribe("public:firehose").await;
    stalled.subscribe("public:firehose").await;

    let node = stack.nodes[0].state.clone();
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<u64>();
    // Read continuously in the background; `stalled` is simply never read.
    let reading = tokio::spawn(async move {
        let mut expected = 1;
        loop {
            tokio::select! {
                total = &mut done_rx => {
                    let total = total.expect("total");
                    while expected <= total {
                        assert_eq!(reader.recv_message().await["data"]["n"], expected);
                        expected += 1;
                    }
                    return expected - 1;
                }
                frame = reader.recv_message() => {
                    assert_eq!(frame["data"]["n"], expected, "reader missed or reordered a message");
                    expected += 1;
                }
            }
        }
    });
    // Publish large messages until the stalled client has been cut off.
    let payload = "y".repeat(16 * 1024);
    let mut redis = node.redis.clone();
    let channel: shared::channel::ChannelName = "public:firehose".parse().expect("channel");
    let mut published = 0u64;
    let started = std::time::Instant::now();
    while node.hub.connection_count() > 1 {
        for _ in 0..50 {
            published += 1;
            let data = serde_json::value::RawValue::from_string(
                json!({ "n": published, "pad": payload }).to_string(),
            )
            .expect("json");
            shared::channel::publish(
                &mut redis,
                &node.keys,
                &channel,
                &data,
                None,
                &test_publisher(),
                None,
            )
            .await
            .expect("publish");
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "stalled client never closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let _ = done_tx.send(published);
    assert_eq!(reading.await.expect("reader"), published);
    // The stalled client, once it reads, finds its stream cut off with 4008 (or reset).
    let mut closed_with = None;
    loop {
        match stalled.next_event(PATIENCE).await {
            Event::Frame(_) => continue,
            Event::Closed(code) => {
                closed_with = code.map(|c| c.0);
                break;
            }
            Event::Error(_) => break,
            Event::Timeout => panic!("stalled client was not closed"),
        }
    }
    assert!(matches!(closed_with, None | Some(4008)), "{closed_with:?}");
    // The client may find a reset rather than the close frame (its unread
    // buffers were discarded); the node says which close it chose.
    let metrics = stack.metrics(&stack.nodes[0]).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ws_slow_consumers_closed_total") && l.ends_with(" 1")),
        "the stalled client was closed as a slow consumer (4008): {metrics}"
    );
}

/// A client that closes gets the close handshake completed: its own close
/// frame echoed (same code), then the end of the stream, promptly. Before,
/// the node dropped the connection without answering, and every clean close
/// read as 1006 ("abnormal") to the client.
#[tokio::test]
async fn a_client_initiated_close_is_answered_with_the_same_code() {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let stack = Stack::start(1).await;
    let user = stack.create_user("carla").await;
    let key = stack.api_key(&user, "connect").await;
    let check = |mut socket: Socket| async move {
        let started = std::time::Instant::now();
        socket
            .send(Message::Close(Some(CloseFrame {
                code: 4000.into(),
                reason: "bye".into(),
            })))
            .await
            .expect("close sent");
        let mut echoed = None;
        while let Some(frame) = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("the node answers, then ends the stream")
        {
            match frame {
                Ok(Message::Close(frame)) => echoed = frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(e) => panic!("not a clean close: {e}"),
            }
        }
        assert_eq!(echoed, Some(4000));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    };
    // An authenticated connection, and one still waiting for its auth frame.
    check(stack.connect(0, &key).await.socket).await;
    check(
        Client::connect(&stack.nodes[0].ws_url(), &[])
            .await
            .expect("upgraded")
            .socket,
    )
    .await;
}

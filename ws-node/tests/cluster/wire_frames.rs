//! Frame-level behaviour over real sockets: every frame type counts against
//! the message rate.

use crate::helpers::*;
use bytes::Bytes;
use futures_util::SinkExt as _;
use tokio_tungstenite::tungstenite::Message;

/// A node allowing 5 frames a second, 5 at once.
async fn slow_rate_stack() -> Stack {
    Stack::start_with(StackOptions {
        nodes: 1,
        customise_node: Box::new(|c| {
            c.client_messages_per_sec = 5;
            c.client_message_burst = 5;
        }),
        ..StackOptions::default()
    })
    .await
}

#[tokio::test]
async fn a_flood_of_pings_pongs_or_binary_frames_is_rate_limited_and_closed_4008() {
    let stack = slow_rate_stack().await;
    let user = stack.create_user("flo").await;
    let key = stack.api_key(&user, "connect").await;
    let floods = [
        ("ping", Message::Ping(Bytes::from_static(b"p"))),
        ("pong", Message::Pong(Bytes::from_static(b"p"))),
        ("binary", Message::Binary(Bytes::from_static(b"\x00\x01"))),
    ];
    for (kind, frame) in floods {
        let mut client = stack.connect(0, &key).await;
        for _ in 0..40 {
            // The node may close mid-flood; later sends then fail.
            let _ = client.socket.send(frame.clone()).await;
        }
        let mut limited = 0;
        let code = loop {
            match client.next_event(PATIENCE).await {
                // Binary frames within the rate are answered `unsupported`.
                Event::Frame(f) if f["code"] == "unsupported" => {}
                Event::Frame(f) if f["code"] == "rate_limited" => limited += 1,
                Event::Frame(f) => panic!("{kind}: unexpected {f}"),
                Event::Closed(code) => break code.map(|c| c.0),
                other => panic!("{kind}: {other:?}"),
            }
        };
        assert_eq!(code, Some(4008), "{kind} frames count against the rate");
        if kind == "binary" {
            assert!(limited >= 1, "over-rate binary frames get errors first");
        } else {
            assert_eq!(limited, 0, "control frames get no error frames");
        }
    }
}

#[tokio::test]
async fn pings_within_the_rate_keep_the_socket_open() {
    let stack = slow_rate_stack().await;
    let user = stack.create_user("pia").await;
    let key = stack.api_key(&user, "connect").await;
    let mut client = stack.connect(0, &key).await;
    for _ in 0..3 {
        client
            .socket
            .send(Message::Ping(Bytes::new()))
            .await
            .expect("ping");
    }
    let reply = client
        .request(serde_json::json!({ "action": "ping" }), 1)
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
}

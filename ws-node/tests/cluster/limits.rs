use crate::helpers::*;
use futures_util::SinkExt as _;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

on_single_redis_and_cluster!(
    a_flooding_client_gets_errors_then_4008,
    logout_and_key_revocation_close_live_sockets_on_every_node,
    revoke_all_and_disabling_a_user_close_their_sockets_everywhere,
    history_reads_are_limited_per_connection,
);

async fn a_flooding_client_gets_errors_then_4008(backend: Backend) {
    let stack = Stack::start_with(StackOptions {
        backend,
        nodes: 1,
        customise_node: Box::new(|c| {
            c.client_messages_per_sec = 5;
            c.client_message_burst = 5;
        }),
        ..StackOptions::default()
    })
    .await;
    let user = stack.create_user("alice").await;
    let key = stack.api_key(&user, "connect").await;
    let mut client = stack.connect(0, &key).await;
    for i in 0..40 {
        let _ = client
            .socket
            .send(Message::text(
                json!({ "action": "ping", "id": i }).to_string(),
            ))
            .await;
    }
    let mut acks = 0;
    let mut limited = 0;
    let code = loop {
        match client.next_event(PATIENCE).await {
            Event::Frame(f) if f["type"] == "ack" => acks += 1,
            Event::Frame(f) if f["code"] == "rate_limited" => limited += 1,
            Event::Frame(f) => panic!("unexpected {f}"),
            Event::Closed(code) => break code.map(|c| c.0),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(acks, 5, "the burst is served");
    assert!(
        limited >= 1,
        "over-rate frames are answered with errors first"
    );
    assert_eq!(code, Some(4008));
}

#[tokio::test]
async fn a_silent_peer_is_reaped_by_the_idle_timeout() {
    let stack = Stack::start_with(StackOptions {
        nodes: 1,
        customise_node: Box::new(|c| {
            c.ping_interval_secs = 1;
            c.idle_timeout_secs = 1;
        }),
        ..StackOptions::default()
    })
    .await;
    let user = stack.create_user("bob").await;
    let key = stack.api_key(&user, "connect").await;
    let node = stack.nodes[0].state.clone();
    // A peer that answers nothing: the client below is never polled after the welcome.
    let _silent = stack.connect(0, &key).await;
    // A live peer keeps answering pings (tungstenite does so while being read).
    let mut live = stack.connect(0, &key).await;
    assert_eq!(node.hub.connection_count(), 2);
    let started = std::time::Instant::now();
    while node.hub.connection_count() > 1 {
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "silent peer never reaped"
        );
        let _ = live.next_event(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        live.request(json!({ "action": "ping" }), 1).await["type"],
        "ack"
    );
}

/// Every one of `clients` is closed with 4003 (revoked) within a second of `started`.
async fn assert_revoked_within_a_second(clients: &mut [Client], started: std::time::Instant) {
    for client in clients.iter_mut() {
        assert_eq!(client.expect_close().await, 4003);
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

async fn logout_and_key_revocation_close_live_sockets_on_every_node(backend: Backend) {
    let stack = Stack::start_on(backend, 2).await;
    let user = stack.create_user("carol").await;
    let key = stack.api_key(&user, "connect").await;
    let cookie = stack.login("carol").await;
    let mut cookie_sockets = Vec::new();
    for node in 0..2 {
        let mut client = Client::connect(
            &stack.nodes[node].ws_url(),
            &[("cookie", &cookie), ("origin", APP_ORIGIN)],
        )
        .await
        .expect("cookie handshake");
        assert_eq!(client.recv().await["type"], "welcome");
        cookie_sockets.push(client);
    }
    let mut key_sockets = vec![stack.connect(0, &key).await, stack.connect(1, &key).await];

    let started = std::time::Instant::now();
    let response = stack
        .http
        .post(stack.auth("/v1/logout"))
        .header("cookie", &cookie)
        .header("origin", APP_ORIGIN)
        .send()
        .await
        .expect("logout");
    assert_eq!(response.status(), 204);
    assert_revoked_within_a_second(&mut cookie_sockets, started).await;
    // The key's sockets are unaffected by the logout...
    assert_eq!(
        key_sockets[0].request(json!({ "action": "ping" }), 1).await["type"],
        "ack"
    );

    // ...until the key is revoked, over HTTP by its owner. A ticket minted
    // from the key before that stays outstanding, and must be refused (one
    // per node: a refused ticket is spent all the same).
    let outstanding = [stack.ticket(&key).await, stack.ticket(&key).await];
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM api_keys")
        .fetch_one(&stack.auth.db)
        .await
        .expect("id");
    let owner = stack.login("carol").await;
    let started = std::time::Instant::now();
    let response = stack
        .http
        .delete(stack.auth(&format!("/v1/api-keys/{id}")))
        .header("cookie", &owner)
        .header("origin", APP_ORIGIN)
        .send()
        .await
        .expect("revoke");
    assert_eq!(response.status(), 204);
    assert_revoked_within_a_second(&mut key_sockets, started).await;
    for (node, ticket) in outstanding.iter().enumerate() {
        let Err(refused) = Client::connect(
            &format!("{}?ticket={ticket}", stack.nodes[node].ws_url()),
            &[],
        )
        .await
        else {
            panic!("node {node} accepted a ticket of a revoked key");
        };
        assert_eq!(refused.status, 401, "node {node}: {}", refused.code);
    }
}

async fn revoke_all_and_disabling_a_user_close_their_sockets_everywhere(backend: Backend) {
    let stack = Stack::start_on(backend, 2).await;
    let user = stack.create_user("frank").await;
    let key = stack.api_key(&user, "connect").await;
    let laptop = stack.login("frank").await;
    let phone = stack.login("frank").await;
    let mut sockets = Vec::new();
    for (node, cookie) in [(0, &laptop), (1, &phone)] {
        let mut client = Client::connect(
            &stack.nodes[node].ws_url(),
            &[("cookie", cookie), ("origin", APP_ORIGIN)],
        )
        .await
        .expect("cookie handshake");
        assert_eq!(client.recv().await["type"], "welcome");
        sockets.push(client);
    }
    let mut key_sockets = vec![stack.connect(0, &key).await, stack.connect(1, &key).await];

    // Revoke-all ends every session's sockets, not the API key's.
    let started = std::time::Instant::now();
    let response = stack
        .http
        .post(stack.auth("/v1/sessions/revoke-all"))
        .header("cookie", &laptop)
        .header("origin", APP_ORIGIN)
        .send()
        .await
        .expect("revoke-all");
    assert_eq!(response.status(), 204);
    assert_revoked_within_a_second(&mut sockets, started).await;
    for client in &mut key_sockets {
        assert_eq!(
            client.request(json!({ "action": "ping" }), 1).await["type"],
            "ack"
        );
    }

    // Disabling the user (what `auth-service user disable` runs) ends
    // everything else, on both nodes.
    let started = std::time::Instant::now();
    auth_service::revocation::disable_user(&stack.auth, user.id)
        .await
        .expect("disable");
    assert_revoked_within_a_second(&mut key_sockets, started).await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_upgrade_request_is_dropped() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let stack = Stack::start_with(StackOptions {
        nodes: 1,
        customise_node: Box::new(|c| c.handshake_timeout_ms = 500),
        ..StackOptions::default()
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(stack.nodes[0].addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 256];
    // The node answers 408 or simply closes; either way the socket ends soon.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("a stalled handshake was kept open"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

async fn history_reads_are_limited_per_connection(backend: Backend) {
    let stack = Stack::start_with(StackOptions {
        backend,
        nodes: 1,
        customise_node: Box::new(|c| {
            c.history_read_burst = 2;
            c.history_reads_per_sec = 1;
        }),
        ..StackOptions::default()
    })
    .await;
    let user = stack.create_user("hana").await;
    let key = stack.api_key(&user, "connect,publish,publish_any").await;
    let mut client = stack.connect(0, &key).await;
    let since = |channel: &str| json!({ "action": "subscribe", "channel": channel, "since": { "epoch": "", "offset": 0 } });
    for (id, channel) in [(1, "broadcast:a"), (2, "broadcast:b")] {
        let ack = client.request(since(channel), id).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let refused = client.request(since("broadcast:c"), 3).await;
    assert_eq!(
        (&refused["type"], &refused["code"]),
        (&json!("error"), &json!("rate_limited")),
        "{refused}"
    );
    // Refused means not subscribed: a server publish there does not arrive.
    stack
        .server_publish(&key, "broadcast:c", json!("missed"))
        .await;
    // The allowance comes back; a plain subscribe never used it.
    let plain = client
        .request(
            json!({ "action": "subscribe", "channel": "broadcast:d" }),
            4,
        )
        .await;
    assert_eq!(plain["type"], "ack", "{plain}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let ack = client.request(since("broadcast:c"), 5).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(client.recv_message().await["data"], "missed");
}

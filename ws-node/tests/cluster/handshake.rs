use crate::helpers::*;
use serde_json::json;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

on_single_redis_and_cluster!(
    a_ticket_opens_a_socket_once_by_query_or_subprotocol,
    one_ticket_raced_by_a_hundred_handshakes_over_three_nodes_opens_one_socket,
    cookie_handshakes_need_an_exactly_allowed_origin,
    connections_per_user_are_capped_across_nodes,
    a_cached_session_marked_revoked_is_an_invalid_session,
);

async fn a_ticket_opens_a_socket_once_by_query_or_subprotocol(backend: Backend) {
    let stack = Stack::start_on(backend, 1).await;
    let user = stack.create_user("alice").await;
    let key = stack.api_key(&user, "connect").await;
    let url = stack.nodes[0].ws_url();

    let ticket = stack.ticket(&key).await;
    let mut client = Client::connect(&format!("{url}?ticket={ticket}"), &[])
        .await
        .expect("accepted");
    let welcome = client.recv().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["user"]["id"], user.id.to_string());
    assert_eq!(welcome["user"]["username"], "alice");
    assert_eq!(welcome["node"], "node-a");
    assert!(
        welcome["connection_id"]
            .as_str()
            .expect("id")
            .starts_with("node-a:")
    );
    let reused = Client::connect(&format!("{url}?ticket={ticket}"), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(
        (reused.status, reused.code.as_str()),
        (401, "invalid_ticket")
    );

    // In the subprotocol, echoed back, out of the URL entirely.
    let ticket = stack.ticket(&key).await;
    let protocol = format!("ticket.{ticket}");
    let mut client = Client::connect(&url, &[("sec-websocket-protocol", &protocol)])
        .await
        .expect("accepted");
    assert_eq!(client.protocol.as_deref(), Some(protocol.as_str()));
    assert_eq!(client.recv().await["type"], "welcome");

    for bad in ["garbage", "", &shared::secret::random_token()] {
        let refused = Client::connect(&format!("{url}?ticket={bad}"), &[])
            .await
            .err()
            .expect("refused");
        assert_eq!(refused.status, 401, "{bad:?}");
    }
}

async fn one_ticket_raced_by_a_hundred_handshakes_over_three_nodes_opens_one_socket(
    backend: Backend,
) {
    let stack = Arc::new(Stack::start_on(backend, 3).await);
    let user = stack.create_user("bob").await;
    let key = stack.api_key(&user, "connect").await;
    let ticket = stack.ticket(&key).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let attempts: Vec<_> = (0..100)
        .map(|i| {
            let url = format!("{}?ticket={ticket}", stack.nodes[i % 3].ws_url());
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                Client::connect(&url, &[]).await
            })
        })
        .collect();
    let mut accepted = 0;
    for attempt in attempts {
        match attempt.await.expect("task") {
            Ok(_) => accepted += 1,
            Err(refusal) => assert_eq!(
                (refusal.status, refusal.code.as_str()),
                (401, "invalid_ticket")
            ),
        }
    }
    assert_eq!(accepted, 1);
}

async fn cookie_handshakes_need_an_exactly_allowed_origin(backend: Backend) {
    let stack = Stack::start_on(backend, 1).await;
    stack.create_user("carol").await;
    let cookie = stack.login("carol").await;
    let url = stack.nodes[0].ws_url();

    let mut ok = Client::connect(&url, &[("cookie", &cookie), ("origin", APP_ORIGIN)])
        .await
        .expect("accepted");
    assert_eq!(ok.recv().await["type"], "welcome");

    let refused_origins: [Option<&str>; 8] = [
        Some("https://evil.example"),
        None,
        Some("null"),
        Some("https://app.example.evil.example"),
        Some("https://evilapp.example"),
        Some("https://app.example:8443"),
        Some("http://app.example"),
        Some("https://APP.example"),
    ];
    for origin in refused_origins {
        let mut headers = vec![("cookie", cookie.as_str())];
        if let Some(o) = origin {
            headers.push(("origin", o));
        }
        let refused = Client::connect(&url, &headers)
            .await
            .err()
            .expect("refused");
        assert_eq!(
            (refused.status, refused.code.as_str()),
            (403, "origin_not_allowed"),
            "{origin:?}"
        );
    }
    // A garbage or unknown cookie from the right origin is 401.
    for bad in [
        "__Host-session=garbage".to_owned(),
        format!("__Host-session={}", shared::secret::random_token()),
    ] {
        let refused = Client::connect(&url, &[("cookie", &bad), ("origin", APP_ORIGIN)])
            .await
            .err()
            .expect("refused");
        assert_eq!(
            (refused.status, refused.code.as_str()),
            (401, "invalid_session")
        );
    }
}

#[tokio::test]
async fn a_cookie_minted_ticket_only_opens_a_socket_from_its_origin() {
    let stack = Stack::start(1).await;
    stack.create_user("dan").await;
    let cookie = stack.login("dan").await;
    let mint = || async {
        let response = stack
            .http
            .post(stack.auth("/v1/tickets"))
            .header("cookie", &cookie)
            .header("origin", APP_ORIGIN)
            .send()
            .await
            .expect("mint");
        let body: serde_json::Value = response.json().await.expect("json");
        body["ticket"].as_str().expect("ticket").to_owned()
    };
    let url = stack.nodes[0].ws_url();
    let ticket = mint().await;
    let refused = Client::connect(
        &format!("{url}?ticket={ticket}"),
        &[("origin", "https://evil.example")],
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(
        (refused.status, refused.code.as_str()),
        (403, "origin_mismatch")
    );
    let ticket = mint().await;
    let refused = Client::connect(&format!("{url}?ticket={ticket}"), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 403);
    let ticket = mint().await;
    let mut ok = Client::connect(&format!("{url}?ticket={ticket}"), &[("origin", APP_ORIGIN)])
        .await
        .expect("ok");
    assert_eq!(ok.recv().await["type"], "welcome");
}

#[tokio::test]
async fn first_message_auth_accepts_a_ticket_and_closes_4001_or_4002_otherwise() {
    let stack = Stack::start_with(StackOptions {
        nodes: 1,
        customise_node: Box::new(|c| c.auth_timeout_ms = 500),
        ..StackOptions::default()
    })
    .await;
    let user = stack.create_user("erin").await;
    let key = stack.api_key(&user, "connect").await;
    let url = stack.nodes[0].ws_url();

    let mut client = Client::connect(&url, &[]).await.expect("upgraded");
    client
        .send(json!({ "action": "auth", "ticket": stack.ticket(&key).await }))
        .await;
    assert_eq!(client.recv().await["type"], "welcome");

    let mut silent = Client::connect(&url, &[]).await.expect("upgraded");
    assert_eq!(silent.expect_close().await, 4002);

    let mut wrong = Client::connect(&url, &[]).await.expect("upgraded");
    wrong
        .send(json!({ "action": "auth", "ticket": "not-a-ticket" }))
        .await;
    assert_eq!(wrong.expect_close().await, 4001);

    let mut rude = Client::connect(&url, &[]).await.expect("upgraded");
    rude.send(json!({ "action": "subscribe", "channel": "public:x" }))
        .await;
    assert_eq!(rude.expect_close().await, 4001);
}

#[tokio::test]
async fn unauthenticated_sockets_are_capped_per_ip() {
    let stack = Stack::start_with(StackOptions {
        nodes: 1,
        customise_node: Box::new(|c| c.max_pending_auth_per_ip = 2),
        ..StackOptions::default()
    })
    .await;
    let url = stack.nodes[0].ws_url();
    let _a = Client::connect(&url, &[]).await.expect("first");
    let _b = Client::connect(&url, &[]).await.expect("second");
    let refused = Client::connect(&url, &[]).await.err().expect("refused");
    assert_eq!(
        (refused.status, refused.code.as_str()),
        (429, "too_many_pending")
    );
    // Authenticated handshakes are not affected.
    let user = stack.create_user("frank").await;
    let key = stack.api_key(&user, "connect").await;
    stack.connect(0, &key).await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_unauthenticated_sockets_are_capped_per_client() {
    let stack = Stack::start_with(StackOptions {
        nodes: 1,
        customise_node: Box::new(|c| {
            c.max_pending_auth_per_ip = 2;
            c.common.trust_proxy_headers = 1;
        }),
        ..StackOptions::default()
    })
    .await;
    let url = stack.nodes[0].ws_url();
    // All arrive from the proxy's address (here 127.0.0.1), for two clients.
    let via_proxy = |client: &'static str| [("x-forwarded-for", client)];
    let _a = Client::connect(&url, &via_proxy("198.51.100.1"))
        .await
        .expect("first");
    let _b = Client::connect(&url, &via_proxy("198.51.100.1"))
        .await
        .expect("second");
    let refused = Client::connect(&url, &via_proxy("198.51.100.1"))
        .await
        .err()
        .expect("refused");
    assert_eq!(
        (refused.status, refused.code.as_str()),
        (429, "too_many_pending")
    );
    // Another client behind the same proxy has its own allowance…
    let _c = Client::connect(&url, &via_proxy("198.51.100.2"))
        .await
        .expect("another client");
    // …which an address forged in front of the proxy's entry does not change.
    let forged = Client::connect(&url, &via_proxy("198.51.100.3, 198.51.100.1"))
        .await
        .err()
        .expect("refused");
    assert_eq!(forged.code, "too_many_pending");
}

#[tokio::test]
async fn without_trust_proxy_headers_a_forwarded_address_is_ignored() {
    let stack = Stack::start_with(StackOptions {
        nodes: 1,
        customise_node: Box::new(|c| c.max_pending_auth_per_ip = 2),
        ..StackOptions::default()
    })
    .await;
    let url = stack.nodes[0].ws_url();
    let mut waiting = Vec::new();
    for client in ["198.51.100.1", "198.51.100.2"] {
        let socket = Client::connect(&url, &[("x-forwarded-for", client)]).await;
        waiting.push(socket.expect("accepted"));
    }
    let refused = Client::connect(&url, &[("x-forwarded-for", "198.51.100.3")])
        .await
        .err()
        .expect("refused: all three come from 127.0.0.1");
    assert_eq!(refused.code, "too_many_pending");
}

async fn connections_per_user_are_capped_across_nodes(backend: Backend) {
    let stack = Stack::start_with(StackOptions {
        backend,
        nodes: 2,
        customise_node: Box::new(|c| c.max_connections_per_user = 2),
        ..StackOptions::default()
    })
    .await;
    let user = stack.create_user("gina").await;
    let key = stack.api_key(&user, "connect").await;
    let first = stack.connect(0, &key).await;
    let _second = stack.connect(1, &key).await;
    let ticket = stack.ticket(&key).await;
    let refused = Client::connect(&format!("{}?ticket={ticket}", stack.nodes[0].ws_url()), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(
        (refused.status, refused.code.as_str()),
        (429, "too_many_connections")
    );
    // Closing one frees its place.
    drop(first);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let ticket = stack.ticket(&key).await;
        if Client::connect(&format!("{}?ticket={ticket}", stack.nodes[1].ws_url()), &[])
            .await
            .is_ok()
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn plain_http_requests_to_the_websocket_endpoint_get_a_json_error() {
    let stack = Stack::start(1).await;
    let response = stack
        .http
        .get(stack.nodes[0].http_url("/ws"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "not_websocket");
    // Another method gets the JSON shape too, not an empty 405.
    for method in [reqwest::Method::POST, reqwest::Method::OPTIONS] {
        let response = stack
            .http
            .request(method.clone(), stack.nodes[0].http_url("/ws"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 405, "{method}");
        let body: serde_json::Value = response.json().await.expect("a JSON body");
        assert_eq!(body["error"]["code"], "method_not_allowed", "{method}");
    }
}

#[tokio::test]
async fn a_client_that_vanishes_mid_handshake_does_not_keep_its_place() {
    use tokio::io::AsyncWriteExt as _;
    let stack = Stack::start_with(StackOptions {
        nodes: 1,
        customise_node: Box::new(|c| c.max_connections_per_user = 1),
        ..StackOptions::default()
    })
    .await;
    let user = stack.create_user("hal").await;
    let key = stack.api_key(&user, "connect").await;
    // A valid upgrade request, then the client is gone before the answer.
    for _ in 0..5 {
        let ticket = stack.ticket(&key).await;
        let mut stream = tokio::net::TcpStream::connect(stack.nodes[0].addr)
            .await
            .expect("connect");
        let request = format!(
            "GET /ws?ticket={ticket} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        drop(stream);
    }
    // The cap is one and the lease 30 s: a place still held would refuse this.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let ticket = stack.ticket(&key).await;
        match Client::connect(&format!("{}?ticket={ticket}", stack.nodes[0].ws_url()), &[]).await {
            Ok(_) => break,
            Err(refusal) => assert!(
                std::time::Instant::now() < deadline,
                "places still held after the clients left: {}",
                refusal.code
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn frames_sent_right_behind_the_upgrade_request_are_not_lost() {
    use tokio::io::AsyncWriteExt as _;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let stack = Stack::start(1).await;
    let user = stack.create_user("ivy").await;
    let key = stack.api_key(&user, "connect").await;
    let ticket = stack.ticket(&key).await;

    // The request and a first (masked) frame in one write, before any answer.
    let subscribe =
        json!({ "action": "subscribe", "channel": format!("user:{}", user.id), "id": 7 })
            .to_string();
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut bytes = format!(
        "GET /ws?ticket={ticket} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes();
    bytes.push(0x81);
    bytes.push(0x80 | u8::try_from(subscribe.len()).expect("short frame"));
    bytes.extend_from_slice(&mask);
    bytes.extend(subscribe.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let mut stream = tokio::net::TcpStream::connect(stack.nodes[0].addr)
        .await
        .expect("connect");
    stream.write_all(&bytes).await.expect("write");

    let (head, rest) = testkit::raw_http::read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // RFC 6455's own example key and answer.
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    let socket = WebSocketStream::from_partially_read(
        MaybeTlsStream::Plain(stream),
        rest,
        Role::Client,
        None,
    )
    .await;
    let mut client = Client::over(socket);
    assert_eq!(client.recv().await["type"], "welcome");
    let ack = client.recv().await;
    assert_eq!(
        (ack["type"].as_str(), ack["id"].as_u64()),
        (Some("ack"), Some(7)),
        "{ack}"
    );
}

#[tokio::test]
async fn an_upgrade_later_on_a_kept_alive_connection_is_served_too() {
    use tokio::io::AsyncWriteExt as _;
    let stack = Stack::start(1).await;
    let user = stack.create_user("joe").await;
    let key = stack.api_key(&user, "connect").await;

    // A proxy reusing its upstream connection: first a plain request...
    let mut stream = tokio::net::TcpStream::connect(stack.nodes[0].addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (head, _body) = testkit::raw_http::read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");

    // ...then the upgrade on the same connection, the ticket as subprotocol.
    let ticket = stack.ticket(&key).await;
    let protocol = format!("ticket.{ticket}");
    let mut request = stack.nodes[0]
        .ws_url()
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        protocol.parse().expect("header value"),
    );
    let (socket, response) =
        tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
            .await
            .expect("upgraded on the kept-alive connection");
    assert_eq!(
        response.headers()["sec-websocket-protocol"].to_str().ok(),
        Some(protocol.as_str())
    );
    let mut client = Client::over(socket);
    assert_eq!(client.recv().await["type"], "welcome");
    client.subscribe(&format!("user:{}", user.id)).await;
}

#[tokio::test]
async fn an_upgrade_request_with_a_very_large_head_still_works() {
    let stack = Stack::start(1).await;
    let user = stack.create_user("kim").await;
    let key = stack.api_key(&user, "connect").await;
    let ticket = stack.ticket(&key).await;
    // Larger than the node parses in place (16 KiB): hyper takes it.
    let padding = format!("pad={}", "x".repeat(20 * 1024));
    let mut client = Client::connect(
        &format!("{}?ticket={ticket}", stack.nodes[0].ws_url()),
        &[("cookie", &padding)],
    )
    .await
    .expect("accepted");
    assert_eq!(client.recv().await["type"], "welcome");
}

/// A session still in the cache whose revocation marker is set (its
/// eviction failed, or raced the handshake) is refused as the cookie it is:
/// 401 `invalid_session`, which tells a browser to ask auth-service.
async fn a_cached_session_marked_revoked_is_an_invalid_session(backend: Backend) {
    let stack = Stack::start_on(backend, 1).await;
    stack.create_user("ruth").await;
    let cookie = stack.login("ruth").await;
    let token = cookie.split_once('=').expect("name=value").1;
    let keys = shared::keys::RedisKeys::new(&stack.prefix).expect("prefix");
    let mut redis = stack.redis().await;
    let session = shared::session::read_cached_session(
        &mut redis,
        &keys,
        &shared::secret::TokenHash::of(token),
    )
    .await
    .expect("redis")
    .expect("cached at login");
    let headers = [("cookie", cookie.as_str()), ("origin", APP_ORIGIN)];
    let url = stack.nodes[0].ws_url();
    drop(Client::connect(&url, &headers).await.expect("accepted"));

    let revoked = shared::credential::AuthSource::Session {
        session_id: session.session_id,
    };
    shared::credential::mark_revoked(
        &mut redis,
        &keys,
        &[shared::credential::Revoked::Source(revoked)],
    )
    .await
    .expect("marked");
    let refused = Client::connect(&url, &headers)
        .await
        .err()
        .expect("refused");
    assert_eq!(
        (refused.status, refused.code.as_str()),
        (401, "invalid_session")
    );
}

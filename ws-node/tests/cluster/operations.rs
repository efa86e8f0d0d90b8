use crate::helpers::*;
use serde_json::Value;
use std::time::{Duration, Instant};

on_single_redis_and_cluster!(health_readiness_and_metrics,);

async fn health_readiness_and_metrics(backend: Backend) {
    let stack = Stack::start_on(backend, 1).await;
    let node = &stack.nodes[0];
    let health = stack
        .http
        .get(node.http_url("/healthz"))
        .send()
        .await
        .expect("request");
    assert_eq!(health.status(), 200);
    let ready = stack
        .http
        .get(node.http_url("/readyz"))
        .send()
        .await
        .expect("request");
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.expect("json");
    assert_eq!(body["checks"]["redis_subscription"], "ok");
    let shards = match backend {
        Backend::Single => 1,
        Backend::Cluster => 3,
    };
    assert_eq!(body["checks"]["canary_shards"], shards, "{body}");
    let user = stack.create_user("alice").await;
    let key = stack.api_key(&user, "connect").await;
    let _client = stack.connect(0, &key).await;
    let metrics = stack.metrics(node).await;
    assert!(metrics.contains("ws_handshakes_total"), "{metrics}");
}

#[tokio::test]
async fn metrics_listen_serves_metrics_apart_and_the_public_listener_no_longer_does() {
    let stack = Stack::start_with(StackOptions {
        nodes: 1,
        customise_node: Box::new(|c| {
            c.common.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"))
        }),
        ..StackOptions::default()
    })
    .await;
    let node = &stack.nodes[0];
    let user = stack.create_user("mia").await;
    let key = stack.api_key(&user, "connect").await;
    let _client = stack.connect(0, &key).await;

    let public = stack
        .http
        .get(node.http_url("/metrics"))
        .send()
        .await
        .expect("request");
    assert_eq!(public.status(), 404);
    let body: Value = public.json().await.expect("JSON error body");
    assert_eq!(body["error"]["code"], "not_found");

    let metrics_addr = node.metrics_addr.expect("a metrics listener");
    let apart = stack
        .http
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .expect("request");
    assert_eq!(apart.status(), 200);
    assert_eq!(apart.headers()["content-type"], "text/plain; version=0.0.4");
    let text = apart.text().await.expect("text");
    assert!(text.contains("ws_handshakes_total"), "{text}");
    // Nothing else is served there: the WebSocket and health stay public.
    let elsewhere = stack
        .http
        .get(format!("http://{metrics_addr}/ws"))
        .send()
        .await
        .expect("request");
    assert_eq!(elsewhere.status(), 404);
    let health = stack
        .http
        .get(node.http_url("/healthz"))
        .send()
        .await
        .expect("request");
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_subscription_that_stops_delivering_turns_the_node_not_ready() {
    let redis = testkit::RedisServer::start();
    let stack = Stack::start_with(StackOptions {
        nodes: 1,
        redis_url: redis.url(),
        customise_node: Box::new(|c| c.canary_timeout_ms = 1_500),
        ..StackOptions::default()
    })
    .await;
    let node = &stack.nodes[0];
    let ready = |status, _: &Value| status == 200;
    stack
        .await_readiness(node, PATIENCE, "the node never became ready", ready)
        .await;

    // Redis holds every write, PUBLISH included, while the subscriber's PING
    // still answers: the subscription looks alive, and nothing published
    // gets through. (The command connection, held up behind its own paused
    // PUBLISH, reads as down too.)
    let mut admin = redis.admin().await;
    redis::cmd("CLIENT")
        .arg(&["PAUSE", "30000", "WRITE"])
        .query_async::<()>(&mut admin)
        .await
        .expect("pause");
    let body = stack
        .await_readiness(
            node,
            Duration::from_secs(4),
            "readyz stayed green while nothing was delivered",
            |status, body| status == 503 && body["checks"]["redis_delivery"] == "late",
        )
        .await;
    assert!(
        body["checks"]["canary_age_ms"].as_u64() > Some(1_500),
        "{body}"
    );

    redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async::<()>(&mut admin)
        .await
        .expect("unpause");
    let body = stack
        .await_readiness(
            node,
            Duration::from_secs(5),
            "the node did not become ready again",
            ready,
        )
        .await;
    assert_eq!(body["checks"]["redis_delivery"], "ok", "{body}");
}

#[tokio::test]
async fn without_redis_handshakes_fail_closed_and_readiness_drops_then_recovers() {
    let mut redis = testkit::RedisServer::start();
    let stack = Stack::start_with(StackOptions {
        nodes: 1,
        redis_url: redis.url(),
        ..StackOptions::default()
    })
    .await;
    let user = stack.create_user("bob").await;
    let key = stack.api_key(&user, "connect").await;
    let ticket = stack.ticket(&key).await;
    let node = &stack.nodes[0];

    redis.kill();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ready = stack
            .http
            .get(node.http_url("/readyz"))
            .send()
            .await
            .expect("request");
        if ready.status() == 503 {
            let body: Value = ready.json().await.expect("json");
            assert_eq!(body["checks"]["redis_subscription"], "down");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz stayed green without Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = Client::connect(&format!("{}?ticket={ticket}", node.ws_url()), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(
        (refused.status, refused.code.as_str()),
        (503, "unavailable")
    );
    let cookie = format!("__Host-session={}", shared::secret::random_token());
    let refused = Client::connect(
        &node.ws_url(),
        &[("cookie", &cookie), ("origin", APP_ORIGIN)],
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(refused.status, 503);

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while stack
        .http
        .get(node.http_url("/readyz"))
        .send()
        .await
        .expect("request")
        .status()
        != 200
    {
        assert!(Instant::now() < deadline, "node did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // auth-service reconnects on its own too; then the whole path works again.
    loop {
        let response = stack
            .http
            .post(stack.auth("/v1/tickets"))
            .bearer_auth(&key)
            .send()
            .await
            .expect("mint");
        if response.status() == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "auth-service did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.connect(0, &key).await;
}

#[tokio::test]
async fn draining_closes_sockets_with_1001_and_refuses_new_ones() {
    let mut stack = Stack::start(2).await;
    let user = stack.create_user("carol").await;
    let key = stack.api_key(&user, "connect").await;
    let mut a = stack.connect(0, &key).await;
    let mut b = stack.connect(0, &key).await;
    let mut other_node = stack.connect(1, &key).await;
    let started = Instant::now();
    stack.nodes[0].stop().await;
    assert_eq!(a.expect_close().await, 1001);
    assert_eq!(b.expect_close().await, 1001);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        other_node
            .request(serde_json::json!({ "action": "ping" }), 1)
            .await["type"],
        "ack"
    );
}

/// The real binary: SIGTERM closes sockets with 1001 and exits; the access log
/// never contains the ticket.
#[tokio::test]
async fn the_binary_drains_on_sigterm_and_never_logs_tickets() {
    use std::io::Read as _;
    use std::process::{Command, Stdio};
    let stack = Stack::start(0).await;
    let user = stack.create_user("dan").await;
    let key = stack.api_key(&user, "connect").await;
    let port = testkit::free_port();
    let mut node = Command::new(env!("CARGO_BIN_EXE_ws-node"))
        .env("REDIS_URL", &stack.redis_url)
        .env("REDIS_PREFIX", &stack.prefix)
        .env("WS_LISTEN", format!("127.0.0.1:{port}"))
        .env("NODE_ID", "node-bin")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn ws-node");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            && r.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "ws-node did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ticket = stack.ticket(&key).await;
    let mut client = Client::connect(&format!("ws://127.0.0.1:{port}/ws?ticket={ticket}"), &[])
        .await
        .expect("connect");
    assert_eq!(client.recv().await["type"], "welcome");
    let refused_ticket = "x".repeat(43);
    let _ = Client::connect(
        &format!("ws://127.0.0.1:{port}/ws?ticket={refused_ticket}"),
        &[],
    )
    .await;

    assert!(
        Command::new("kill")
            .args(["-TERM", &node.id().to_string()])
            .status()
            .expect("kill")
            .success()
    );
    assert_eq!(client.expect_close().await, 1001);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = node.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success());
    let mut logs = String::new();
    node.stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut logs)
        .expect("logs");
    assert!(logs.contains("ticket=[REDACTED]"), "{logs}");
    assert!(!logs.contains(&ticket), "ticket leaked into logs");
    assert!(!logs.contains(&refused_ticket), "ticket leaked into logs");
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
}

/// A Redis password neither shows in a printed config nor in the error a node
/// that cannot reach Redis stops with (what its log's last line says).
#[tokio::test]
async fn a_redis_password_is_never_printed() {
    let url = "redis://:hunter2-secret@127.0.0.1:1/0";
    let config = node_config(url, &testkit::unique_prefix(), "node-secret");
    assert_eq!(config.common.redis_url.expose(), url);
    let printed = format!("{config:?}");
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(
        printed.contains("redis://:[REDACTED]@127.0.0.1:1/0"),
        "{printed}"
    );
    let error = ws_node::Application::build(config)
        .await
        .err()
        .expect("nothing listens on port 1");
    for shown in [format!("{error:#}"), format!("{error:?}")] {
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("[REDACTED]"), "{shown}");
    }
}

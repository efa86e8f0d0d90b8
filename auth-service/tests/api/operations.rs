use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = TestApp::spawn().await;
    let health = app
        .http
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("request");
    assert_eq!(health.status(), StatusCode::OK);
    let ready = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("request");
    assert_eq!(ready.status(), StatusCode::OK);
    let body: Value = ready.json().await.expect("json");
    assert_eq!(body["checks"]["postgres"], "ok");
    assert_eq!(body["checks"]["redis"], "ok");
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("request");
    let text = metrics.text().await.expect("text");
    assert!(text.contains("http_requests_total"), "{text}");
    // Labelled by route template, method and status class.
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/readyz",status="2xx"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"http_request_duration_seconds_count{method="GET",route="/readyz"}"#),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_listen_serves_metrics_apart_and_the_public_listener_no_longer_does() {
    let app = TestApp::spawn_with(|c| {
        c.common.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"))
    })
    .await;
    let public = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("request");
    assert_eq!(error_code(public, StatusCode::NOT_FOUND).await, "not_found");

    let metrics_url = app.metrics_url.clone().expect("a metrics listener");
    let apart = app.http.get(&metrics_url).send().await.expect("request");
    assert_eq!(apart.status(), StatusCode::OK);
    assert_eq!(apart.headers()["content-type"], "text/plain; version=0.0.4");
    let text = apart.text().await.expect("text");
    // The public listener's 404 above was counted, under "unmatched".
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="unmatched",status="4xx"}"#),
        "{text}"
    );
    // Nothing but metrics is served there.
    let login = app
        .http
        .post(metrics_url.replace("/metrics", "/v1/login"))
        .json(&serde_json::json!({ "username": "a", "password": "b" }))
        .send()
        .await
        .expect("request");
    assert_eq!(error_code(login, StatusCode::NOT_FOUND).await, "not_found");
    // Nor does this API's description list it any more.
    let doc: serde_json::Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert!(doc["paths"]["/readyz"].is_object());
    assert!(doc["paths"].get("/metrics").is_none());
}

#[tokio::test]
async fn readiness_fails_and_requests_fail_closed_when_redis_is_gone() {
    let mut redis = testkit::RedisServer::start();
    let url = redis.url();
    let app = TestApp::spawn_with(|c| c.common.redis_url = url.into()).await;
    let user = app.create_user("alice").await;
    let key = app.api_key(&user, "connect").await;
    assert_eq!(app.mint_with_key(&key).await.status(), StatusCode::CREATED);

    redis.kill();
    let ready = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("request");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await.expect("json");
    assert_eq!(body["checks"]["redis"], "unavailable");
    assert_eq!(body["checks"]["postgres"], "ok");
    // No ticket can be minted without Redis: 503, never a ticket nobody can consume.
    let response = app.mint_with_key(&key).await;
    assert_eq!(
        error_code(response, StatusCode::SERVICE_UNAVAILABLE).await,
        "unavailable"
    );

    redis.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.mint_with_key(&key).await.status() != StatusCode::CREATED {
        assert!(
            std::time::Instant::now() < deadline,
            "did not recover after Redis came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The real binary: JSON logs that never contain a ticket, an API key or a
/// session id, and a clean exit on SIGTERM.
#[tokio::test]
async fn the_binary_logs_json_without_secrets_and_stops_on_sigterm() {
    use std::io::Read as _;
    use std::process::{Command, Stdio};
    let db = testkit::TestDatabase::new();
    let port = testkit::free_port();
    let prefix = testkit::unique_prefix();
    let bin = env!("CARGO_BIN_EXE_auth-service");
    let envs = [
        ("DATABASE_URL", db.url.as_str()),
        ("REDIS_URL", &testkit::shared_redis_url()),
        ("REDIS_PREFIX", prefix.as_str()),
        ("AUTH_LISTEN", &format!("127.0.0.1:{port}")),
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "debug"),
        ("AUTH_PASSWORD", PASSWORD),
    ];
    let status = Command::new(bin)
        .envs(envs)
        .args(["user", "add", "alice", "--key-scopes", "connect"])
        .status()
        .expect("run");
    assert!(status.success());
    let output = Command::new(bin)
        .envs(envs)
        .args(["api-key", "create", "alice", "--scopes", "connect"])
        .output()
        .expect("run");
    assert!(output.status.success());
    let key = String::from_utf8(output.stdout)
        .expect("utf8")
        .trim()
        .to_owned();

    let mut server = Command::new(bin)
        .envs(envs)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(std::time::Instant::now() < deadline, "server did not start");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let login = http
        .post(format!("{base}/v1/login"))
        .json(&serde_json::json!({ "username": "alice", "password": PASSWORD }))
        .send()
        .await
        .expect("login");
    let session = cookie_pair(&login);
    let minted: Value = http
        .post(format!("{base}/v1/tickets?ticket=also-in-the-url"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("mint")
        .json()
        .await
        .expect("json");
    let ticket = minted["ticket"].as_str().expect("ticket").to_owned();

    let pid = server.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = server.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
    let mut logs = String::new();
    server
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut logs)
        .expect("read");
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() > 3, "{logs}");
    for line in &lines {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "not JSON: {line}");
    }
    assert!(
        logs.contains("/v1/tickets?ticket=[REDACTED]"),
        "access log line for the mint"
    );
    assert!(logs.contains("shutdown signal received"));
    let session_id = session.split_once('=').expect("pair").1;
    for secret in [
        ticket.as_str(),
        key.as_str(),
        session_id,
        "also-in-the-url",
        PASSWORD,
    ] {
        assert!(!logs.contains(secret), "a secret leaked into the logs");
    }
}

/// With several serving threads (each its own single-threaded runtime and
/// Redis connection, all accepting from one socket), every connection is
/// answered fully whichever thread takes it: 40 fresh connections log in, read
/// `/v1/me`, and mint with the session and with an API key, and every ticket
/// can be consumed. Asked to stop, the server returns promptly and cleanly,
/// with all its threads stopped.
#[tokio::test]
async fn several_serving_threads_answer_alike_and_stop_together() {
    let (app, stop, server) = TestApp::spawn_stoppable(|config| {
        config.serve_threads = Some(4);
    })
    .await;
    let user = app.create_user("threads").await;
    let key = app.api_key(&user, "connect").await;
    for round in 0..40 {
        // A client without a connection pool: a new TCP connection per request.
        let fresh = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let minted = fresh
            .post(app.url("/v1/tickets"))
            .bearer_auth(&key)
            .send()
            .await
            .expect("mint");
        let ticket = ticket_of(minted).await;
        assert!(app.consume(&ticket).await.is_some(), "round {round}");
        if round % 4 == 0 {
            let login = fresh
                .post(app.url("/v1/login"))
                .json(&serde_json::json!({ "username": "threads", "password": PASSWORD }))
                .send()
                .await
                .expect("login");
            assert_eq!(login.status(), StatusCode::OK, "round {round}");
            let cookie = cookie_pair(&login);
            let me = fresh
                .get(app.url("/v1/me"))
                .header("cookie", &cookie)
                .send()
                .await
                .expect("me");
            assert_eq!(me.status(), StatusCode::OK, "round {round}");
            let by_session = fresh
                .post(app.url("/v1/tickets"))
                .header("cookie", &cookie)
                .header("origin", APP_ORIGIN)
                .header("sec-fetch-site", "same-site")
                .send()
                .await
                .expect("mint with session");
            let ticket = ticket_of(by_session).await;
            assert!(app.consume(&ticket).await.is_some(), "round {round}");
        }
    }
    stop.send(()).expect("server still running");
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("stopped within 5 s")
        .expect("no panic");
    stopped.expect("stopped cleanly");
    assert!(
        reqwest::get(app.url("/healthz")).await.is_err(),
        "nothing listens after the stop"
    );
}

/// Connections that arrive in a burst are spread over the serving threads
/// (one thread may accept them all, and passes some on): every one of them,
/// wherever it ends up, answers request after request on the same connection.
#[tokio::test]
async fn a_burst_of_kept_alive_connections_is_served_whichever_thread_takes_it() {
    use tokio::io::AsyncWriteExt as _;
    let app = TestApp::spawn_with(|config| config.serve_threads = Some(4)).await;
    let user = app.create_user("burst").await;
    let key = app.api_key(&user, "connect").await;
    let addr = app
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    // All connected before any request, so they wait in the accept queue together.
    let mut sockets = Vec::new();
    for _ in 0..24 {
        sockets.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    let request = format!(
        "POST /v1/tickets HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {key}\r\ncontent-length: 0\r\n\r\n"
    );
    for round in 0..2 {
        for socket in &mut sockets {
            socket.write_all(request.as_bytes()).await.expect("write");
        }
        for (i, socket) in sockets.iter_mut().enumerate() {
            let (head, body) = testkit::raw_http::read_response(socket).await;
            assert!(
                head.starts_with("HTTP/1.1 201"),
                "connection {i}, round {round}: {head}"
            );
            let minted: Value = serde_json::from_slice(&body).expect("json");
            let ticket = minted["ticket"].as_str().expect("ticket");
            assert!(
                app.consume(ticket).await.is_some(),
                "connection {i}, round {round}"
            );
        }
    }
}

/// Past `SHUTDOWN_TIMEOUT_SECS`, requests that never finish are cut off: no
/// serving thread outlives the application. The application runs as in the
/// binary, on a runtime of its own that ends when `run_until_stopped` returns.
#[tokio::test]
async fn past_the_drain_timeout_every_held_connection_is_closed() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let db = testkit::TestDatabase::new();
    let mut config = test_config(&db);
    config.serve_threads = Some(4);
    config.shutdown_timeout_secs = 1;
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let app = auth_service::Application::build(config)
                .await
                .expect("app builds");
            addr_tx.send(app.local_addr()).expect("test waits");
            app.run_until_stopped(async {
                let _ = stop_rx.await;
            })
            .await
        })
    });
    let addr = addr_rx.await.expect("address");
    // Requests in flight forever: a body announced and never sent in full.
    let mut held = Vec::new();
    for _ in 0..64 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(
                b"POST /v1/login HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
                  Content-Length: 100\r\n\r\n{",
            )
            .await
            .expect("send");
        held.push(stream);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    stop_tx.send(()).expect("server running");
    let stopped = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::task::spawn_blocking(move || server.join()),
    )
    .await
    .expect("stopped within the drain timeout and a bit")
    .expect("joined")
    .expect("no panic");
    stopped.expect("stopped cleanly");
    for (i, stream) in held.iter_mut().enumerate() {
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            // Whatever the server said (nothing, or an error answer), then the end.
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(read.is_ok(), "connection {i} still open after the stop");
    }
}

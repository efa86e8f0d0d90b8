//! Every client mistake is a 4xx with the standard JSON error body.

use crate::helpers::*;
use reqwest::StatusCode;

#[tokio::test]
async fn malformed_requests_get_clear_json_errors() {
    let app = TestApp::spawn().await;
    let user = app.create_user("alice").await;
    let key = app.api_key(&user, "connect,publish").await;
    let post = |path: &'static str, content_type: Option<&'static str>, body: Vec<u8>| {
        let mut request = app.http.post(app.url(path)).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        request
    };
    let json = Some("application/json");
    let cookie = app.login_cookie("alice").await;
    let admin_key = app.api_key(&user, "admin").await;

    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            post("/v1/login", json, b"{\"username\":".to_vec()),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            post("/v1/login", json, b"not json".to_vec()),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            post(
                "/v1/login",
                json,
                b"{\"username\":\"a\",\"password\":\"b\"} trailing".to_vec(),
            ),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            post(
                "/v1/login",
                json,
                b"{\"username\":\"\xff\xfe\",\"password\":\"b\"}".to_vec(),
            ),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            post("/v1/login", Some("text/plain"), b"{}".to_vec()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            post("/v1/login", None, b"{}".to_vec()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            post("/v1/login", json, b"{\"username\":\"a\"}".to_vec()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            post(
                "/v1/login",
                json,
                b"{\"username\":1,\"password\":\"b\"}".to_vec(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            post(
                "/v1/login",
                json,
                b"{\"username\":\"a\",\"password\":\"b\",\"admin\":true}".to_vec(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            post("/v1/login", json, vec![b' '; 200 * 1024]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            post("/v1/login", json, b"[]".to_vec()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            app.http.get(app.url("/v1/nothing-here")),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            app.http.put(app.url("/v1/login")),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            app.http.delete(app.url("/v1/api-keys/not-a-uuid")),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            app.http
                .delete(app.url("/v1/api-keys/%FF%FE"))
                .header("cookie", &cookie)
                .header("origin", APP_ORIGIN),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            app.http
                .get(app.url("/v1/users/%FF/connections"))
                .bearer_auth(&admin_key),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            app.http
                .get(app.url("/v1/me"))
                .header("cookie", "__Host-session=\"quoted\"; x="),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            app.http
                .get(app.url("/v1/me"))
                .header("cookie", b"__Host-session=\xff\xfe".as_slice()),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            app.http
                .post(app.url("/v1/tickets"))
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body("{\"scopes\":\"all\"}"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            app.http
                .post(app.url("/v1/tickets"))
                .bearer_auth(&key)
                .header("content-type", "text/plain")
                .body("x"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            app.http
                .post(app.url("/v1/tickets"))
                .bearer_auth(&key)
                .json(&serde_json::json!({"ttl": 999})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
    ];
    for (i, (request, status, code)) in cases.into_iter().enumerate() {
        let response = request.send().await.expect("request");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "case {i}"
        );
        assert_eq!(error_code(response, status).await, code, "case {i}");
    }

    // With a session, a path id that is not a UUID is simply not found.
    let cookie = app.login_cookie("alice").await;
    let response = app
        .http
        .delete(app.url("/v1/api-keys/not-a-uuid"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("request");
    assert_eq!(
        error_code(response, StatusCode::NOT_FOUND).await,
        "not_found"
    );

    // None of that hurt the service.
    assert_eq!(app.login("alice", PASSWORD).await.status(), StatusCode::OK);
}

/// serde reads a struct from an array of its fields too; schemathesis found
/// `POST /v1/tickets` answering 201 to `[]`, and `["alice","<password>"]`
/// logged in. Every body is a JSON object, anything else a 422.
#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_refused() {
    let app = TestApp::spawn().await;
    let user = app.create_user("alice").await;
    let key = app.api_key(&user, "connect,publish").await;
    let cookie = app.login_cookie("alice").await;
    let cases = [
        app.http
            .post(app.url("/v1/login"))
            .json(&serde_json::json!(["alice", PASSWORD])),
        app.http
            .post(app.url("/v1/tickets"))
            .bearer_auth(&key)
            .json(&serde_json::json!([])),
        app.http
            .post(app.url("/v1/tickets"))
            .bearer_auth(&key)
            .json(&serde_json::json!(null)),
        app.http
            .post(app.url("/v1/api-keys"))
            .header("cookie", &cookie)
            .json(&serde_json::json!(["ci", ["connect"]])),
        app.http
            .post(app.url("/v1/publish"))
            .bearer_auth(&key)
            .json(&serde_json::json!(["public:news", {"a": 1}])),
    ];
    for (i, request) in cases.into_iter().enumerate() {
        let response = request.send().await.expect("request");
        assert!(
            response.headers().get("set-cookie").is_none(),
            "case {i} logged in"
        );
        assert_eq!(
            error_code(response, StatusCode::UNPROCESSABLE_ENTITY).await,
            "invalid_field",
            "case {i}"
        );
    }
}

#[tokio::test]
async fn cors_admits_only_allowlisted_origins_and_never_a_wildcard() {
    let app = TestApp::spawn().await;
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/v1/tickets"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let allowed = preflight(APP_ORIGIN).await.expect("request");
    assert_eq!(allowed.headers()["access-control-allow-origin"], APP_ORIGIN);
    assert_eq!(
        allowed.headers()["access-control-allow-credentials"],
        "true"
    );
    let foreign = preflight("https://evil.example").await.expect("request");
    assert!(
        foreign
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_nosniff() {
    let app = TestApp::spawn().await;
    let user = app.create_user("alice").await;
    let key = app.api_key(&user, "connect").await;
    // A success, a client mistake and an unknown path alike.
    let answers = [
        app.http
            .post(app.url("/v1/tickets"))
            .bearer_auth(&key)
            .send()
            .await
            .expect("request"),
        app.http
            .post(app.url("/v1/tickets"))
            .bearer_auth("tess_not-a-key")
            .send()
            .await
            .expect("request"),
        app.http
            .get(app.url("/no/such/path"))
            .send()
            .await
            .expect("request"),
    ];
    let mut ids = Vec::new();
    for answer in &answers {
        assert_eq!(answer.headers()["x-content-type-options"], "nosniff");
        let id = answer.headers()["x-request-id"].to_str().expect("ascii");
        assert_eq!(
            uuid::Uuid::parse_str(id).expect("a UUID").get_version_num(),
            4
        );
        ids.push(id.to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), answers.len(), "each request gets its own id");
    // The caller's own id is kept and echoed.
    let echoed = app
        .http
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .expect("request");
    assert_eq!(echoed.headers()["x-request-id"], "trace-me-42");
    assert_eq!(answers[0].status(), StatusCode::CREATED);
    assert_eq!(answers[1].status(), StatusCode::UNAUTHORIZED);
    assert_eq!(answers[2].status(), StatusCode::NOT_FOUND);
}

/// An oversized body is read to its end (up to a bound) before the 413 goes
/// out, so a client still sending when the server has decided gets the 413
/// rather than a connection reset (which discards the answer it had not read
/// yet). Each round sends a 320 KiB body in pieces, a little at a time, on a
/// fresh connection, then reads the answer. (Whether a reset actually loses
/// the answer depends on timing: this test does not reliably fail without the
/// drain. The reset was seen, under load, in the test above.)
#[tokio::test]
async fn an_oversized_body_sent_slowly_still_gets_its_413() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = TestApp::spawn().await;
    let user = app.create_user("big").await;
    let key = app.api_key(&user, "connect,publish").await;
    let addr = app.base_url.trim_start_matches("http://").to_owned();
    let body_len = 20 * 16 * 1024;
    for (round, path) in ["/v1/tickets", "/v1/publish", "/v1/login"]
        .iter()
        .enumerate()
    {
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {body_len}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        for _ in 0..body_len / (16 * 1024) {
            // Write errors are what this test is about: keep going, then read.
            if stream.write_all(&[b' '; 16 * 1024]).await.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let mut answer = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read_to_end(&mut answer),
        )
        .await
        .expect("answered within 5 s");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "round {round} ({path}): {read:?}, {answer:?}"
        );
        assert!(
            answer.contains("payload_too_large"),
            "round {round}: {answer}"
        );
    }
}

/// A client that trickles its request (slowloris) is cut off after
/// `REQUEST_READ_TIMEOUT_SECS`: a head that never ends gets the connection
/// closed, a body that never ends gets a JSON 408. Meanwhile, and afterwards,
/// others are served.
#[tokio::test]
async fn a_request_trickled_past_the_read_timeout_is_cut_off() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = TestApp::spawn_with(|config| config.request_read_timeout_secs = 1).await;
    let addr = app.base_url.trim_start_matches("http://").to_owned();
    let began = std::time::Instant::now();
    // The head timeout also closes a kept-alive connection idle that long, so
    // a pooled connection reused after a second may be closed under the
    // request (that is the timeout working, see REQUEST_READ_TIMEOUT_SECS in
    // the README). The health checks therefore each use a new connection.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");

    let mut head_only = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    head_only
        .write_all(b"POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
        .await
        .expect("part of a head");
    let mut body_part = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    body_part
        .write_all(
            b"POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 60\r\n\r\n{\"username\":",
        )
        .await
        .expect("head and part of a body");
    let health = fresh
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("served meanwhile");
    assert_eq!(health.status(), StatusCode::OK);

    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        head_only.read_to_end(&mut answer),
    )
    .await
    .expect("the connection was closed within 5 s");
    assert!(
        read.is_err() || answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
        "unexpected answer to a trickled head: {:?}",
        String::from_utf8_lossy(&answer)
    );

    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        // The answer, then (keep-alive) nothing more: stop at the end of the JSON.
        while !answer.ends_with(b"}") {
            match body_part.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    assert!(
        began.elapsed() < std::time::Duration::from_secs(5),
        "cut off after {:?}",
        began.elapsed()
    );
    let health = fresh
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("served afterwards");
    assert_eq!(health.status(), StatusCode::OK);
}

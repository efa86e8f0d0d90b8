use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::Value;
use shared::credential::AuthSource;
use shared::scope::{Scope, Scopes};
use std::time::Duration;

on_single_redis_and_cluster!(
    an_api_key_with_connect_scope_mints_a_ticket_with_its_claims,
    a_ticket_works_once,
    fifty_concurrent_consumers_of_one_ticket_yield_exactly_one_success,
    tickets_expire_after_their_ttl,
    keys_without_connect_scope_and_revoked_keys_cannot_mint,
);

async fn an_api_key_with_connect_scope_mints_a_ticket_with_its_claims(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let user = app.create_user("alice").await;
    let key = app.api_key(&user, "connect").await;

    let response = app.mint_with_key(&key).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["expires_in"], 30);
    assert_eq!(body["ws_url"], app.state.config.public_ws_url.as_str());
    let ticket = body["ticket"].as_str().expect("ticket");
    assert_eq!(ticket.len(), 43);

    // Stored under its SHA-256 only, with a TTL of at most 30 s.
    let mut redis = app.redis();
    let key_name = app
        .state
        .keys
        .ticket(&shared::secret::TokenHash::of(ticket));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key_name)
        .query_async(&mut redis)
        .await
        .expect("pttl");
    assert!((1..=30_000).contains(&ttl), "ttl {ttl}");
    let raw: String = redis::cmd("GET")
        .arg(&key_name)
        .query_async(&mut redis)
        .await
        .expect("get");
    assert!(!raw.contains(ticket));

    let claims = app.consume(ticket).await.expect("claims");
    assert_eq!(claims.user_id, user.id);
    assert_eq!(claims.username, "alice");
    assert!(matches!(claims.source, AuthSource::ApiKey { .. }));
    assert_eq!(claims.scopes, Scopes::NONE.with(Scope::Connect));
    assert_eq!(claims.origin, None);
}

async fn a_ticket_works_once(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let user = app.create_user("bob").await;
    let key = app.api_key(&user, "connect").await;
    let ticket = ticket_of(app.mint_with_key(&key).await).await;
    assert!(app.consume(&ticket).await.is_some());
    assert!(app.consume(&ticket).await.is_none());
    assert!(app.consume("not-a-ticket").await.is_none());
}

async fn fifty_concurrent_consumers_of_one_ticket_yield_exactly_one_success(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let user = app.create_user("carol").await;
    let key = app.api_key(&user, "connect").await;
    let ticket = ticket_of(app.mint_with_key(&key).await).await;

    // Fifty separate Redis connections, as fifty handshakes on different nodes would have.
    let mut connections = Vec::new();
    for _ in 0..50 {
        connections.push(app.new_redis_connection().await);
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|mut conn| {
            let (keys, ticket, barrier) = (app.state.keys.clone(), ticket.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                shared::ticket::consume_ticket(&mut conn, &keys, &ticket)
                    .await
                    .expect("redis")
            })
        })
        .collect();
    let mut successes = 0;
    for task in tasks {
        if task.await.expect("task").is_some() {
            successes += 1;
        }
    }
    assert_eq!(successes, 1);
}

async fn tickets_expire_after_their_ttl(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, |c| c.ticket_ttl_secs = 1).await;
    let user = app.create_user("dan").await;
    let key = app.api_key(&user, "connect").await;
    let response = app.mint_with_key(&key).await;
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["expires_in"], 1);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        app.consume(body["ticket"].as_str().expect("ticket"))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn a_session_mints_an_origin_bound_ticket() {
    let app = TestApp::spawn().await;
    let user = app.create_user("erin").await;
    let cookie = app.login_cookie("erin").await;
    let ticket = ticket_of(app.mint_with_cookie(&cookie).await).await;
    let claims = app.consume(&ticket).await.expect("claims");
    assert_eq!(claims.user_id, user.id);
    assert!(matches!(claims.source, AuthSource::Session { .. }));
    assert_eq!(claims.origin.as_deref(), Some(APP_ORIGIN));
    assert_eq!(
        claims.scopes,
        Scopes::NONE.with(Scope::Connect).with(Scope::Publish)
    );
}

#[tokio::test]
async fn cross_site_ticket_requests_are_refused() {
    let app = TestApp::spawn().await;
    app.create_user("frank").await;
    let cookie = app.login_cookie("frank").await;
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("sec-fetch-site", "cross-site")], "cross_site_request"),
        (
            &[("sec-fetch-site", "cross-site"), ("origin", APP_ORIGIN)],
            "cross_site_request",
        ),
        (&[("origin", "https://evil.example")], "origin_not_allowed"),
        (&[("origin", "null")], "origin_not_allowed"),
    ];
    for (headers, expected) in cases {
        let mut request = app
            .http
            .post(app.url("/v1/tickets"))
            .header("cookie", &cookie);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request");
        assert_eq!(
            error_code(response, StatusCode::FORBIDDEN).await,
            expected,
            "{headers:?}"
        );
    }
    // Look-alikes of the allowed origin are foreign origins too.
    for origin in [
        "https://app.example.evil",
        "http://app.example",
        "https://app.example:8443",
    ] {
        let response = app
            .http
            .post(app.url("/v1/tickets"))
            .header("cookie", &cookie)
            .header("origin", origin)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{origin}");
    }
}

async fn keys_without_connect_scope_and_revoked_keys_cannot_mint(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let user = app.create_user("gina").await;
    let publish_only = app.api_key(&user, "publish").await;
    let response = app.mint_with_key(&publish_only).await;
    assert_eq!(
        error_code(response, StatusCode::FORBIDDEN).await,
        "insufficient_scope"
    );

    let key = app.api_key(&user, "connect").await;
    let key_id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM api_keys WHERE scopes = '{connect}'")
            .fetch_one(&app.state.db)
            .await
            .expect("key id");
    assert_eq!(app.mint_with_key(&key).await.status(), StatusCode::CREATED);
    assert!(
        auth_service::revocation::revoke_api_key(&app.state, key_id, None)
            .await
            .expect("revoke")
    );
    let response = app.mint_with_key(&key).await;
    assert_eq!(
        error_code(response, StatusCode::UNAUTHORIZED).await,
        "unauthenticated"
    );
}

#[tokio::test]
async fn requested_scopes_can_narrow_but_not_widen_a_ticket() {
    let app = TestApp::spawn().await;
    let user = app.create_user("hank").await;
    let key = app.api_key(&user, "connect,publish").await;
    let narrow = app
        .http
        .post(app.url("/v1/tickets"))
        .bearer_auth(&key)
        .json(&serde_json::json!({ "scopes": ["connect"] }))
        .send()
        .await
        .expect("request");
    let claims = app.consume(&ticket_of(narrow).await).await.expect("claims");
    assert_eq!(claims.scopes, Scopes::NONE.with(Scope::Connect));

    let wide = app
        .http
        .post(app.url("/v1/tickets"))
        .bearer_auth(&key)
        .json(&serde_json::json!({ "scopes": ["connect", "admin"] }))
        .send()
        .await
        .expect("request");
    assert_eq!(
        error_code(wide, StatusCode::FORBIDDEN).await,
        "insufficient_scope"
    );
}

#[tokio::test]
async fn an_authorization_header_is_never_overridden_by_a_cookie() {
    let app = TestApp::spawn().await;
    app.create_user("ivy").await;
    let cookie = app.login_cookie("ivy").await;
    let response = app
        .http
        .post(app.url("/v1/tickets"))
        .header("cookie", &cookie)
        .bearer_auth("tess_garbage")
        .send()
        .await
        .expect("request");
    assert_eq!(
        error_code(response, StatusCode::UNAUTHORIZED).await,
        "unauthenticated"
    );
}

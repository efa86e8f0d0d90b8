use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::{Duration, Instant};

#[tokio::test]
async fn login_sets_a_host_only_secure_httponly_cookie() {
    let app = TestApp::spawn().await;
    let user = app.create_user("alice").await;

    let response = app.login("Alice", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = set_cookie(&response).expect("Set-Cookie");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["user"]["id"], user.id.to_string());
    assert_eq!(body["user"]["username"], "alice");

    let (pair, attributes) = cookie.split_once(';').expect("attributes");
    let (name, value) = pair.split_once('=').expect("name=value");
    assert_eq!(name, "__Host-session");
    assert_eq!(value.len(), 43, "256-bit id in base64url");
    let attributes: Vec<String> = attributes
        .split(';')
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    for expected in ["httponly", "secure", "samesite=lax", "path=/"] {
        assert!(
            attributes.iter().any(|a| a == expected),
            "{expected} missing in {cookie}"
        );
    }
    assert!(
        !attributes.iter().any(|a| a.starts_with("domain")),
        "no Domain: {cookie}"
    );
    assert!(attributes.iter().any(|a| a == "max-age=86400"), "{cookie}");
}

#[tokio::test]
async fn insecure_cookie_mode_drops_the_host_prefix_for_plain_http_development() {
    let app = TestApp::spawn_with(|c| c.common.cookie_secure = false).await;
    app.create_user("dev").await;
    let response = app.login("dev", PASSWORD).await;
    let cookie = set_cookie(&response).expect("cookie");
    assert!(cookie.starts_with("session="), "{cookie}");
    assert!(!cookie.to_ascii_lowercase().contains("secure"), "{cookie}");
    let pair = cookie_pair(&response);
    assert_eq!(
        app.get_with_cookie("/v1/me", &pair).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn unknown_user_and_wrong_password_are_indistinguishable() {
    let app = TestApp::spawn().await;
    app.create_user("bob").await;

    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let a = app.login("bob", "not the password").await;
        wrong.push(started.elapsed());
        let (status_a, body_a) = (a.status(), a.text().await.expect("body"));

        let started = Instant::now();
        let b = app.login("nobody", "not the password").await;
        unknown.push(started.elapsed());
        let (status_b, body_b) = (b.status(), b.text().await.expect("body"));

        assert_eq!(status_a, StatusCode::UNAUTHORIZED);
        assert_eq!(status_a, status_b);
        assert_eq!(body_a, body_b);
    }
    // Both paths run a full argon2 verification, so neither is a fast path an
    // attacker could time: the fastest unknown-user login is of the same order
    // as the fastest wrong-password one (a database miss alone would be ~100x
    // faster). The fastest of several is compared because the tests share two
    // cores with each other and the hashing threads run niced: load only ever
    // adds time, and a median of three once differed by 3.3x under it.
    let (w, u) = (
        wrong.iter().min().expect("samples"),
        unknown.iter().min().expect("samples"),
    );
    assert!(
        *u * 3 > *w && *w * 3 > *u,
        "timings differ: wrong {wrong:?} vs unknown {unknown:?}"
    );
}

#[tokio::test]
async fn disabled_users_cannot_log_in_and_get_the_same_answer() {
    let app = TestApp::spawn().await;
    let user = app.create_user("carol").await;
    auth_service::revocation::disable_user(&app.state, user.id)
        .await
        .expect("disable");
    let response = app.login("carol", PASSWORD).await;
    assert_eq!(
        error_code(response, StatusCode::UNAUTHORIZED).await,
        "invalid_credentials"
    );
}

#[tokio::test]
async fn overlong_passwords_are_refused_before_hashing() {
    let app = TestApp::spawn().await;
    app.create_user("dave").await;
    let started = Instant::now();
    let response = app.login("dave", &"x".repeat(1025)).await;
    assert_eq!(
        error_code(response, StatusCode::UNPROCESSABLE_ENTITY).await,
        "password_too_long"
    );
    // No argon2 ran (and no failure was counted); exactly 1 KiB is still hashed and judged.
    assert!(started.elapsed() < Duration::from_secs(1));
    let response = app.login("dave", &"x".repeat(1024)).await;
    assert_eq!(
        error_code(response, StatusCode::UNAUTHORIZED).await,
        "invalid_credentials"
    );
}

#[tokio::test]
async fn login_from_a_foreign_origin_is_refused() {
    let app = TestApp::spawn().await;
    app.create_user("erin").await;
    let response = app
        .http
        .post(app.url("/v1/login"))
        .header("origin", "https://evil.example")
        .json(&serde_json::json!({ "username": "erin", "password": PASSWORD }))
        .send()
        .await
        .expect("request");
    assert_eq!(
        error_code(response, StatusCode::FORBIDDEN).await,
        "origin_not_allowed"
    );
    let response = app
        .http
        .post(app.url("/v1/login"))
        .header("sec-fetch-site", "cross-site")
        .json(&serde_json::json!({ "username": "erin", "password": PASSWORD }))
        .send()
        .await
        .expect("request");
    assert_eq!(
        error_code(response, StatusCode::FORBIDDEN).await,
        "cross_site_request"
    );
}

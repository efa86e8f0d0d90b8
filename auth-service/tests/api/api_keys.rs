use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn create_key(app: &TestApp, cookie: &str, body: Value) -> reqwest::Response {
    app.http
        .post(app.url("/v1/api-keys"))
        .header("cookie", cookie)
        .header("origin", APP_ORIGIN)
        .json(&body)
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn keys_are_shown_once_listed_without_secrets_and_revocable() {
    let app = TestApp::spawn().await;
    app.create_user("alice").await;
    let cookie = app.login_cookie("alice").await;

    let response = create_key(
        &app,
        &cookie,
        json!({ "name": "ci bot", "scopes": ["connect"] }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.expect("json");
    let key = created["key"].as_str().expect("key").to_owned();
    assert!(key.starts_with("tess_") && key.len() == 54, "{key}");
    assert!(key.starts_with(created["prefix"].as_str().expect("prefix")));
    assert_eq!(created["scopes"], json!(["connect"]));

    // Stored as SHA-256 only.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT key_hash FROM api_keys")
        .fetch_one(&app.state.db)
        .await
        .expect("row");
    assert_eq!(
        stored,
        shared::secret::TokenHash::of(&key).as_bytes().to_vec()
    );

    // Using the key records when it was last used.
    assert_eq!(app.mint_with_key(&key).await.status(), StatusCode::CREATED);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let used: Option<time::OffsetDateTime> =
            sqlx::query_scalar("SELECT last_used_at FROM api_keys")
                .fetch_one(&app.state.db)
                .await
                .expect("row");
        if used.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "last_used_at never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let list: Value = app
        .get_with_cookie("/v1/api-keys", &cookie)
        .await
        .json()
        .await
        .expect("json");
    let keys = list["api_keys"].as_array().expect("list");
    assert_eq!(keys.len(), 1);
    assert!(
        keys[0].get("key").is_none(),
        "secret must not be listed: {}",
        keys[0]
    );
    assert!(!list.to_string().contains(&key));
    assert!(keys[0]["last_used_at"].is_string());

    let id = created["id"].as_str().expect("id");
    let delete = || async {
        app.http
            .delete(app.url(&format!("/v1/api-keys/{id}")))
            .header("cookie", &cookie)
            .header("origin", APP_ORIGIN)
            .send()
            .await
            .expect("request")
    };
    assert_eq!(delete().await.status(), StatusCode::NO_CONTENT);
    // Idempotent: a retry (say, after a 503 whose Redis half failed) redoes
    // the Redis half and answers the same.
    assert_eq!(delete().await.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        error_code(app.mint_with_key(&key).await, StatusCode::UNAUTHORIZED).await,
        "unauthenticated"
    );
    let list: Value = app
        .get_with_cookie("/v1/api-keys", &cookie)
        .await
        .json()
        .await
        .expect("json");
    assert!(list["api_keys"][0]["revoked_at"].is_string());
}

#[tokio::test]
async fn users_cannot_self_issue_scopes_beyond_their_allowance() {
    let app = TestApp::spawn().await;
    app.create_user("bob").await; // may self-issue connect and publish
    let cookie = app.login_cookie("bob").await;
    let response = create_key(
        &app,
        &cookie,
        json!({ "name": "x", "scopes": ["connect", "admin"] }),
    )
    .await;
    assert_eq!(
        error_code(response, StatusCode::FORBIDDEN).await,
        "scope_not_allowed"
    );
    let response = create_key(&app, &cookie, json!({ "name": "x", "scopes": [] })).await;
    assert_eq!(
        error_code(response, StatusCode::UNPROCESSABLE_ENTITY).await,
        "invalid_scopes"
    );
    let response = create_key(&app, &cookie, json!({ "name": "x", "scopes": ["root"] })).await;
    assert_eq!(
        error_code(response, StatusCode::UNPROCESSABLE_ENTITY).await,
        "invalid_field"
    );
    let response = create_key(&app, &cookie, json!({ "name": "", "scopes": ["connect"] })).await;
    assert_eq!(
        error_code(response, StatusCode::UNPROCESSABLE_ENTITY).await,
        "invalid_name"
    );
}

#[tokio::test]
async fn one_user_cannot_revoke_or_see_anothers_keys() {
    let app = TestApp::spawn().await;
    let owner = app.create_user("owner").await;
    app.create_user("mallory").await;
    let key = app.api_key(&owner, "connect").await;
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM api_keys")
        .fetch_one(&app.state.db)
        .await
        .expect("id");
    let cookie = app.login_cookie("mallory").await;
    let response = app
        .http
        .delete(app.url(&format!("/v1/api-keys/{id}")))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("request");
    assert_eq!(
        error_code(response, StatusCode::NOT_FOUND).await,
        "not_found"
    );
    let list: Value = app
        .get_with_cookie("/v1/api-keys", &cookie)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["api_keys"], json!([]));
    assert_eq!(app.mint_with_key(&key).await.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn garbage_and_malformed_keys_are_refused() {
    let app = TestApp::spawn().await;
    let user = app.create_user("carol").await;
    let key = app.api_key(&user, "connect").await;
    let mut tampered = key.clone().into_bytes();
    tampered[20] = if tampered[20] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    for bad in ["garbage", "tess_", tampered.as_str(), &key[..53]] {
        assert_eq!(
            error_code(app.mint_with_key(bad).await, StatusCode::UNAUTHORIZED).await,
            "unauthenticated"
        );
    }
    for header in ["Basic abc", "Bearer", "", "tess_x"] {
        let response = app
            .http
            .post(app.url("/v1/tickets"))
            .header("authorization", header)
            .send()
            .await
            .expect("request");
        assert_eq!(
            error_code(response, StatusCode::UNAUTHORIZED).await,
            "unauthenticated",
            "{header:?}"
        );
    }
}

/// A second process of `a`'s deployment, and a `connect` key (with its id)
/// of a new user `name`.
async fn sibling_and_key(a: &TestApp, name: &str) -> (TestApp, String, uuid::Uuid) {
    let b = a.spawn_sibling().await;
    let user = a.create_user(name).await;
    let key = a.api_key(&user, "connect").await;
    let id = sqlx::query_scalar("SELECT id FROM api_keys WHERE user_id = $1")
        .bind(user.id)
        .fetch_one(&a.state.db)
        .await
        .expect("id");
    (b, key, id)
}

/// Revokes key `id` through process `a`; returns when.
async fn revoke(a: &TestApp, id: uuid::Uuid) -> Instant {
    let revoked_at = Instant::now();
    assert!(
        auth_service::revocation::revoke_api_key(&a.state, id, None)
            .await
            .expect("revoke")
    );
    revoked_at
}

/// Mints with `key` on `b` (pausing `pause` between tries) until `b` refuses
/// it: every answer before must be a 201, and given before `bound` has passed
/// since `revoked_at`. Returns how long after `revoked_at` the refusal came.
async fn refused_within(
    b: &TestApp,
    key: &str,
    revoked_at: Instant,
    bound: Duration,
    pause: Duration,
) -> Duration {
    loop {
        let status = b.mint_with_key(key).await.status();
        if status == StatusCode::UNAUTHORIZED {
            return revoked_at.elapsed();
        }
        assert_eq!(status, StatusCode::CREATED);
        assert!(
            revoked_at.elapsed() < bound,
            "process B still accepts the key after {:?}",
            revoked_at.elapsed()
        );
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

#[tokio::test]
async fn revocation_reaches_every_auth_service_process_within_a_second() {
    let a = TestApp::spawn().await;
    let (b, key, id) = sibling_and_key(&a, "dora").await;
    // Process B has verified (and cached) the key.
    assert_eq!(b.mint_with_key(&key).await.status(), StatusCode::CREATED);

    let revoked_at = revoke(&a, id).await;
    assert_eq!(
        a.mint_with_key(&key).await.status(),
        StatusCode::UNAUTHORIZED,
        "revoking process: at once"
    );
    let second = Duration::from_secs(1);
    let refused_after =
        refused_within(&b, &key, revoked_at, second, Duration::from_millis(50)).await;
    assert!(refused_after <= second);
}

/// A busy key's cache entry is looked up again ahead of its expiry (so that
/// requests do not all wait on Postgres when it expires), which must not
/// stretch how long another process trusts a revoked key: B mints back to
/// back, A revokes, and B refuses within `API_KEY_CACHE_MS` (plus the time of
/// one lookup and one request).
#[tokio::test]
async fn a_key_in_constant_use_is_still_refused_within_the_cache_bound() {
    let a = TestApp::spawn_with(|c| c.mint_limit_per_key = 1_000_000).await;
    let (b, key, id) = sibling_and_key(&a, "busy").await;
    let bound = Duration::from_millis(b.state.config.api_key_cache_ms + 250);
    let busy_until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < busy_until {
        assert_eq!(b.mint_with_key(&key).await.status(), StatusCode::CREATED);
    }
    let revoked_at = revoke(&a, id).await;
    refused_within(&b, &key, revoked_at, bound, Duration::ZERO).await;
}

#[tokio::test]
async fn a_disabled_users_keys_stop_working() {
    let app = TestApp::spawn().await;
    let user = app.create_user("eve").await;
    let key = app.api_key(&user, "connect").await;
    assert_eq!(app.mint_with_key(&key).await.status(), StatusCode::CREATED);
    let outstanding = ticket_of(app.mint_with_key(&key).await).await;
    auth_service::revocation::disable_user(&app.state, user.id)
        .await
        .expect("disable");
    tokio::time::sleep(Duration::from_millis(
        app.state.config.api_key_cache_ms + 100,
    ))
    .await;
    assert_eq!(
        app.mint_with_key(&key).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert!(
        app.consume(&outstanding).await.is_none(),
        "tickets of a disabled user are void"
    );
}

#[tokio::test]
async fn the_operator_publish_scope_is_never_self_issued() {
    let app = TestApp::spawn().await;
    let user = app.create_user("alice").await;
    // Even an account whose key scopes were stretched to include it directly
    // in the database cannot give it to its own keys.
    sqlx::query("UPDATE users SET key_scopes = '{connect,publish,publish_any}' WHERE id = $1")
        .bind(user.id)
        .execute(&app.state.db)
        .await
        .expect("update");
    let cookie = app.login_cookie("alice").await;
    let response = create_key(
        &app,
        &cookie,
        json!({ "name": "backend", "scopes": ["publish_any"] }),
    )
    .await;
    assert_eq!(
        error_code(response, StatusCode::FORBIDDEN).await,
        "scope_not_self_issuable"
    );
    let response = create_key(
        &app,
        &cookie,
        json!({ "name": "client", "scopes": ["connect", "publish"] }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

on_single_redis_and_cluster!(
    me_answers_for_a_session_and_refuses_everything_else,
    logout_revokes_the_session_clears_the_cookie_and_voids_its_tickets,
    logout_is_announced_to_ws_nodes_on_the_control_channel,
    revoke_all_ends_every_session_of_the_user_only,
    a_cached_session_marked_revoked_does_not_authenticate,
);

async fn me_answers_for_a_session_and_refuses_everything_else(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let user = app.create_user("alice").await;
    let cookie = app.login_cookie("alice").await;

    let response = app.get_with_cookie("/v1/me", &cookie).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body,
        serde_json::json!({ "id": user.id, "username": "alice" })
    );

    // No cookie, a garbage cookie, and a well-formed id nobody was issued.
    let response = app
        .http
        .get(app.url("/v1/me"))
        .send()
        .await
        .expect("request");
    assert_eq!(
        error_code(response, StatusCode::UNAUTHORIZED).await,
        "unauthenticated"
    );
    for bogus in [
        "__Host-session=garbage".to_owned(),
        "__Host-session=%%%; other=1".to_owned(),
        format!("__Host-session={}", shared::secret::random_token()),
    ] {
        let response = app.get_with_cookie("/v1/me", &bogus).await;
        assert_eq!(
            error_code(response, StatusCode::UNAUTHORIZED).await,
            "unauthenticated",
            "{bogus}"
        );
    }
}

#[tokio::test]
async fn every_login_issues_a_new_session_id_and_retires_the_old_one() {
    let app = TestApp::spawn().await;
    app.create_user("bob").await;
    let first = app.login_cookie("bob").await;

    // Log in again from the same browser, which still sends the old cookie.
    let response = app
        .http
        .post(app.url("/v1/login"))
        .header("cookie", &first)
        .json(&serde_json::json!({ "username": "bob", "password": PASSWORD }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let second = cookie_pair(&response);
    assert_ne!(first, second, "session id must change at login");

    assert_eq!(
        app.get_with_cookie("/v1/me", &second).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get_with_cookie("/v1/me", &first).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn an_attacker_chosen_session_id_never_becomes_valid() {
    // Session fixation: the attacker plants a cookie, the victim logs in.
    let app = TestApp::spawn().await;
    app.create_user("victim").await;
    let planted = format!("__Host-session={}", shared::secret::random_token());
    let response = app
        .http
        .post(app.url("/v1/login"))
        .header("cookie", &planted)
        .json(&serde_json::json!({ "username": "victim", "password": PASSWORD }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    assert_ne!(cookie_pair(&response), planted);
    assert_eq!(
        app.get_with_cookie("/v1/me", &planted).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn logout_revokes_the_session_clears_the_cookie_and_voids_its_tickets(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    app.create_user("carol").await;
    let cookie = app.login_cookie("carol").await;
    let ticket = ticket_of(app.mint_with_cookie(&cookie).await).await;

    let response = app
        .http
        .post(app.url("/v1/logout"))
        .header("cookie", &cookie)
        .header("origin", APP_ORIGIN)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let cleared = set_cookie(&response).expect("cookie removal");
    assert!(cleared.starts_with("__Host-session=;"), "{cleared}");
    assert!(
        cleared.to_ascii_lowercase().contains("max-age=0"),
        "{cleared}"
    );

    assert_eq!(
        app.get_with_cookie("/v1/me", &cookie).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert!(
        app.consume(&ticket).await.is_none(),
        "ticket minted before logout must be refused"
    );
    // Postgres agrees, so a cache refill cannot resurrect it.
    let revoked: bool = sqlx::query_scalar("SELECT bool_and(revoked_at IS NOT NULL) FROM sessions")
        .fetch_one(&app.state.db)
        .await
        .expect("query");
    assert!(revoked);
    // Logging out again is harmless.
    let again = app
        .http
        .post(app.url("/v1/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("request");
    assert_eq!(again.status(), StatusCode::NO_CONTENT);
}

async fn logout_is_announced_to_ws_nodes_on_the_control_channel(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    app.create_user("dora").await;
    let cookie = app.login_cookie("dora").await;
    let session_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM sessions")
        .fetch_one(&app.state.db)
        .await
        .expect("session");

    let client = redis::Client::open(app.pubsub_url()).expect("client");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub
        .subscribe(app.state.keys.control())
        .await
        .expect("subscribe");
    let response = app
        .http
        .post(app.url("/v1/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    use futures_util::StreamExt as _;
    let message = tokio::time::timeout(Duration::from_secs(2), pubsub.on_message().next())
        .await
        .expect("control message in time")
        .expect("message");
    let payload: String = message.get_payload().expect("payload");
    let control: shared::control::ControlMessage = serde_json::from_str(&payload).expect("json");
    assert_eq!(
        control,
        shared::control::ControlMessage::CredentialRevoked {
            source: shared::credential::AuthSource::Session { session_id }
        }
    );
}

async fn revoke_all_ends_every_session_of_the_user_only(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    app.create_user("dan").await;
    app.create_user("other").await;
    let laptop = app.login_cookie("dan").await;
    let phone = app.login_cookie("dan").await;
    let someone_else = app.login_cookie("other").await;

    let response = app.get_with_cookie("/v1/sessions", &laptop).await;
    let body: Value = response.json().await.expect("json");
    let sessions = body["sessions"].as_array().expect("list");
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);

    let response = app
        .http
        .post(app.url("/v1/sessions/revoke-all"))
        .header("cookie", &laptop)
        .header("origin", APP_ORIGIN)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.get_with_cookie("/v1/me", &laptop).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get_with_cookie("/v1/me", &phone).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get_with_cookie("/v1/me", &someone_else).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn one_session_can_be_revoked_by_id() {
    let app = TestApp::spawn().await;
    app.create_user("eve").await;
    let keep = app.login_cookie("eve").await;
    let drop = app.login_cookie("eve").await;
    let body: Value = app
        .get_with_cookie("/v1/sessions", &drop)
        .await
        .json()
        .await
        .expect("json");
    let id = body["sessions"]
        .as_array()
        .expect("list")
        .iter()
        .find(|s| s["current"] == true)
        .expect("current")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let response = app
        .http
        .delete(app.url(&format!("/v1/sessions/{id}")))
        .header("cookie", &keep)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.get_with_cookie("/v1/me", &drop).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get_with_cookie("/v1/me", &keep).await.status(),
        StatusCode::OK
    );
    let response = app
        .http
        .delete(app.url(&format!("/v1/sessions/{id}")))
        .header("cookie", &keep)
        .send()
        .await
        .expect("request");
    assert_eq!(
        error_code(response, StatusCode::NOT_FOUND).await,
        "not_found"
    );
}

#[tokio::test]
async fn idle_sessions_expire_even_when_activity_would_be_read_from_postgres() {
    let app = TestApp::spawn_with(|c| c.session_idle_timeout_secs = 1).await;
    app.create_user("frank").await;
    let active = app.login_cookie("frank").await;
    let idle = app.login_cookie("frank").await;
    // Keep one session busy, leave the other alone.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            app.get_with_cookie("/v1/me", &active).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        app.get_with_cookie("/v1/me", &idle).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get_with_cookie("/v1/me", &active).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn absolute_timeout_ends_a_session_however_active() {
    let app = TestApp::spawn_with(|c| {
        c.session_idle_timeout_secs = 3;
        c.session_absolute_timeout_secs = 3;
    })
    .await;
    app.create_user("gina").await;
    let cookie = app.login_cookie("gina").await;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        assert_eq!(
            app.get_with_cookie("/v1/me", &cookie).await.status(),
            StatusCode::OK
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Expiry is kept in whole seconds, so it falls within (2 s, 3 s] of login.
    tokio::time::sleep(Duration::from_millis(3200).saturating_sub(started.elapsed())).await;
    assert_eq!(
        app.get_with_cookie("/v1/me", &cookie).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_revocation_whose_redis_half_failed_completes_when_retried() {
    let app = TestApp::spawn().await;
    app.create_user("ivan").await;
    let cookie = app.login_cookie("ivan").await;
    assert_eq!(
        app.get_with_cookie("/v1/me", &cookie).await.status(),
        StatusCode::OK
    );
    // The state a logout leaves when Postgres committed and Redis then failed:
    // revoked in Postgres, still cached in Redis.
    sqlx::query("UPDATE sessions SET revoked_at = now()")
        .execute(&app.state.db)
        .await
        .expect("revoke in postgres only");
    let logout = || {
        app.http
            .post(app.url("/v1/logout"))
            .header("cookie", &cookie)
            .header("origin", APP_ORIGIN)
            .send()
    };
    assert_eq!(
        logout().await.expect("logout").status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get_with_cookie("/v1/me", &cookie).await.status(),
        StatusCode::UNAUTHORIZED,
        "the retried logout evicted the cached session"
    );
}

/// A cached session is checked against the revocation markers: a cache
/// entry that outlived its session's revocation (its eviction failed, or
/// raced the read) does not authenticate.
async fn a_cached_session_marked_revoked_does_not_authenticate(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    app.create_user("rita").await;
    let cookie = app.login_cookie("rita").await;
    assert_eq!(
        app.get_with_cookie("/v1/me", &cookie).await.status(),
        StatusCode::OK
    );
    let session_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM sessions")
        .fetch_one(&app.state.db)
        .await
        .expect("session");
    shared::credential::mark_revoked(
        &mut app.redis(),
        &app.state.keys,
        &[shared::credential::Revoked::Source(
            shared::credential::AuthSource::Session { session_id },
        )],
    )
    .await
    .expect("marked");
    assert_eq!(
        app.get_with_cookie("/v1/me", &cookie).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

/// Logout and revoke-all answer a retry as they answered the first call,
/// although the first already revoked the cookie's session: a retry after a
/// 503 (Redis unreachable after the Postgres commit) completes the
/// revocation instead of meeting 401.
#[tokio::test]
async fn logout_and_revoke_all_can_be_retried_with_the_same_cookie() {
    let app = TestApp::spawn().await;
    app.create_user("ravi").await;
    let post = |path: &'static str, cookie: String| {
        app.http
            .post(app.url(path))
            .header("cookie", cookie)
            .header("origin", APP_ORIGIN)
            .send()
    };
    let cookie = app.login_cookie("ravi").await;
    for _ in 0..2 {
        let response = post("/v1/sessions/revoke-all", cookie.clone())
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }
    let cookie = app.login_cookie("ravi").await;
    for _ in 0..2 {
        let response = post("/v1/logout", cookie.clone()).await.expect("request");
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }
    // A cookie that was never a session is still no way in.
    let stranger = format!("__Host-session={}", shared::secret::random_token());
    let response = post("/v1/sessions/revoke-all", stranger)
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

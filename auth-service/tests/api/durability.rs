//! Postgres is the source of truth: losing Redis's data logs nobody out and
//! breaks no API key.

use crate::helpers::*;
use reqwest::StatusCode;

#[tokio::test]
async fn flushall_logs_nobody_out_and_breaks_no_api_key() {
    let redis = testkit::RedisServer::start();
    let url = redis.url();
    let app = TestApp::spawn_with(|c| c.common.redis_url = url.into()).await;
    let user = app.create_user("alice").await;
    let key = app.api_key(&user, "connect").await;
    let cookie = app.login_cookie("alice").await;
    assert_eq!(app.mint_with_key(&key).await.status(), StatusCode::CREATED);

    let mut conn = app.redis();
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut conn)
        .await
        .expect("flushall");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert!(keys.is_empty());

    // Let the API key cache lapse too, so the key is re-verified from Postgres.
    tokio::time::sleep(std::time::Duration::from_millis(
        app.state.config.api_key_cache_ms + 50,
    ))
    .await;
    assert_eq!(
        app.get_with_cookie("/v1/me", &cookie).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.mint_with_cookie(&cookie).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(app.mint_with_key(&key).await.status(), StatusCode::CREATED);
    // The session was re-warmed into the cache ws-node reads.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:session:*", app.state.keys.prefix()))
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(app.login("alice", PASSWORD).await.status(), StatusCode::OK);
}

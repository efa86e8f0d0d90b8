//! Forged credentials (well-formed, valid checksum, unknown) cost Postgres a
//! bounded amount: per address, once per forged cookie, and never at the
//! expense of credentials already known.

use crate::helpers::*;
use reqwest::StatusCode;

/// A client whose requests come from `source` (a loopback address).
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<std::net::IpAddr>().expect("address"))
        .build()
        .expect("client")
}

/// The value of `name{outcome="…"}` in this process's metrics.
fn lookups(app: &TestApp, name: &str, outcome: &str) -> u64 {
    let series = format!("{name}{{outcome=\"{outcome}\"}} ");
    app.state
        .metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |value| value.trim().parse().expect("a count"))
}

fn forged_cookie(app: &TestApp) -> String {
    format!(
        "{}={}",
        app.state.config.common.cookie_name(),
        shared::secret::random_token()
    )
}

#[tokio::test]
async fn forged_credentials_from_one_address_stop_reaching_postgres() {
    let app = TestApp::spawn_with(|c| c.auth_max_failures_per_ip = 5).await;
    let user = app.create_user("ivy").await;
    let key = app.api_key(&user, "connect").await;
    let cookie = app.login_cookie("ivy").await;
    let flood = client_from("127.0.0.2");
    let mint = |key: String| {
        let request = flood.post(app.url("/v1/tickets")).bearer_auth(key);
        async move { request.send().await.expect("request") }
    };

    for _ in 0..5 {
        let forged = auth_service::api_keys::generate();
        assert_eq!(
            mint(forged.expose().to_owned()).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(lookups(&app, "api_key_lookups_total", "unknown"), 5);
    // The address's budget is spent: forged keys and cookies alike are
    // refused before Postgres is asked.
    let response = mint(auth_service::api_keys::generate().expose().to_owned()).await;
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        error_code(response, StatusCode::TOO_MANY_REQUESTS).await,
        "rate_limited"
    );
    let response = flood
        .get(app.url("/v1/me"))
        .header("cookie", forged_cookie(&app))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(lookups(&app, "api_key_lookups_total", "unknown"), 5);
    assert_eq!(lookups(&app, "session_lookups_total", "unknown"), 0);

    // Other addresses are not affected, and a credential a cache knows works
    // even from the flooding address.
    assert_eq!(app.mint_with_key(&key).await.status(), StatusCode::CREATED);
    assert_eq!(mint(key.clone()).await.status(), StatusCode::CREATED);
    assert_eq!(
        app.get_with_cookie("/v1/me", &cookie).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_forged_cookie_costs_postgres_one_lookup() {
    let app = TestApp::spawn().await;
    let forged = forged_cookie(&app);
    for _ in 0..5 {
        assert_eq!(
            app.get_with_cookie("/v1/me", &forged).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(lookups(&app, "session_lookups_total", "unknown"), 1);
    // A real session is found, in Redis's cache or (here, after the cache
    // entry is gone) in Postgres.
    app.create_user("jo").await;
    let cookie = app.login_cookie("jo").await;
    let mut redis = app.redis();
    let pattern = format!("{}:session:*", app.state.keys.prefix());
    let cached: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut redis)
        .await
        .expect("keys");
    redis::cmd("DEL")
        .arg(cached)
        .query_async::<()>(&mut redis)
        .await
        .expect("del");
    assert_eq!(
        app.get_with_cookie("/v1/me", &cookie).await.status(),
        StatusCode::OK
    );
    assert_eq!(lookups(&app, "session_lookups_total", "found"), 1);
}

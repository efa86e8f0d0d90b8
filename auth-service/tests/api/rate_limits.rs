use crate::helpers::*;
use reqwest::StatusCode;

on_single_redis_and_cluster!(
    failed_logins_are_throttled_per_account_across_processes,
    guessing_one_account_from_many_addresses_spends_an_hourly_budget,
    ticket_minting_is_limited_per_key_and_per_user,
    parallel_guesses_cannot_exceed_the_failure_limit,
);

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds")
}

async fn failed_logins_are_throttled_per_account_across_processes(backend: Backend) {
    let a = TestApp::spawn_on_with(backend, |c| c.login_max_failures_per_account = 3).await;
    let b = a.spawn_sibling().await;
    a.create_user("alice").await;
    // Failures spread over two processes share one counter.
    for app in [&a, &b, &a] {
        assert_eq!(
            app.login("alice", "wrong").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let response = b.login("alice", "wrong").await;
    let wait = retry_after(&response);
    assert!((1..=900).contains(&wait), "Retry-After {wait}");
    assert_eq!(
        error_code(response, StatusCode::TOO_MANY_REQUESTS).await,
        "rate_limited"
    );
    // Even the right password waits: the limit is checked before hashing.
    assert_eq!(
        a.login("alice", PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_successful_login_resets_the_account_counter() {
    let app = TestApp::spawn_with(|c| c.login_max_failures_per_account = 3).await;
    app.create_user("bob").await;
    for _ in 0..2 {
        assert_eq!(
            app.login("bob", "wrong").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(app.login("bob", PASSWORD).await.status(), StatusCode::OK);
    for _ in 0..2 {
        assert_eq!(
            app.login("bob", "wrong").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(app.login("bob", PASSWORD).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn failures_from_one_address_do_not_lock_the_owner_out_on_another() {
    let app = TestApp::spawn_with(|c| c.login_max_failures_per_account = 3).await;
    app.create_user("erin").await;
    for _ in 0..3 {
        assert_eq!(
            app.login_from("127.0.0.2", "erin", "wrong").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // The guessing address is locked out, even with the right password…
    let response = app.login_from("127.0.0.2", "erin", PASSWORD).await;
    assert_eq!(
        error_code(response, StatusCode::TOO_MANY_REQUESTS).await,
        "rate_limited"
    );
    // …and the owner, elsewhere, is not: neither from an address the account
    // knows nor from a new one.
    assert_eq!(
        app.login_from("127.0.0.3", "erin", PASSWORD).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.login_from("127.0.0.4", "erin", PASSWORD).await.status(),
        StatusCode::OK
    );
}

async fn guessing_one_account_from_many_addresses_spends_an_hourly_budget(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, |c| {
        c.login_max_failures_per_account = 3;
        c.login_max_failures_per_account_hourly = 5;
    })
    .await;
    app.create_user("frank").await;
    // The owner's usual address becomes known to the account.
    assert_eq!(
        app.login_from("127.0.0.2", "frank", PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );
    // Guesses spread thin, each address under its own limit.
    let attackers = [
        "127.0.1.1",
        "127.0.1.2",
        "127.0.1.3",
        "127.0.1.4",
        "127.0.1.5",
    ];
    for source in attackers {
        assert_eq!(
            app.login_from(source, "frank", "wrong").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // The budget is spent: any new address now waits, whatever it sends.
    for source in ["127.0.1.6", "127.0.1.1"] {
        let response = app.login_from(source, "frank", PASSWORD).await;
        let wait = retry_after(&response);
        assert!((1..=3600).contains(&wait), "Retry-After {wait}");
        assert_eq!(
            error_code(response, StatusCode::TOO_MANY_REQUESTS).await,
            "rate_limited"
        );
    }
    // The owner's known address is exempt, and a wrong password there does
    // not spend the budget either.
    assert_eq!(
        app.login_from("127.0.0.2", "frank", "typo").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login_from("127.0.0.2", "frank", PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn failed_logins_are_throttled_per_ip_across_accounts() {
    let app = TestApp::spawn_with(|c| {
        c.login_max_failures_per_ip = 4;
        c.login_max_failures_per_account = 100;
    })
    .await;
    for i in 0..4 {
        assert_eq!(
            app.login(&format!("user{i}"), "wrong").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let response = app.login("someone-new", "wrong").await;
    assert_eq!(
        error_code(response, StatusCode::TOO_MANY_REQUESTS).await,
        "rate_limited"
    );
}

async fn ticket_minting_is_limited_per_key_and_per_user(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, |c| {
        c.mint_limit_per_key = 3;
        c.mint_limit_per_user = 2;
    })
    .await;
    let sibling = app.spawn_sibling().await;
    let user = app.create_user("carol").await;
    let key = app.api_key(&user, "connect").await;
    let other_key = app.api_key(&user, "connect").await;
    for minter in [&app, &sibling, &app] {
        assert_eq!(
            minter.mint_with_key(&key).await.status(),
            StatusCode::CREATED
        );
    }
    let response = sibling.mint_with_key(&key).await;
    assert!(retry_after(&response) >= 1);
    assert_eq!(
        error_code(response, StatusCode::TOO_MANY_REQUESTS).await,
        "rate_limited"
    );
    // Another key has its own budget.
    assert_eq!(
        app.mint_with_key(&other_key).await.status(),
        StatusCode::CREATED
    );

    let cookie = app.login_cookie("carol").await;
    for _ in 0..2 {
        assert_eq!(
            app.mint_with_cookie(&cookie).await.status(),
            StatusCode::CREATED
        );
    }
    let response = app.mint_with_cookie(&cookie).await;
    assert_eq!(
        error_code(response, StatusCode::TOO_MANY_REQUESTS).await,
        "rate_limited"
    );
}

async fn parallel_guesses_cannot_exceed_the_failure_limit(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, |c| c.login_max_failures_per_account = 3).await;
    app.create_user("mallory").await;
    let attempts = (0..12).map(|_| app.login("mallory", "wrong"));
    let statuses: Vec<StatusCode> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.status())
        .collect();
    let hashed = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((hashed, refused), (3, 9), "{statuses:?}");
}

/// A failed login sent as if through the proxy: `forwarded` is the
/// `X-Forwarded-For` header the proxy passed on.
async fn failed_login_via_proxy(app: &TestApp, forwarded: &str) -> StatusCode {
    app.http
        .post(app.url("/v1/login"))
        .header("x-forwarded-for", forwarded)
        .json(&serde_json::json!({ "username": "nobody", "password": "wrong" }))
        .send()
        .await
        .expect("request")
        .status()
}

#[tokio::test]
async fn behind_the_proxy_the_per_ip_limit_counts_the_address_the_proxy_appended() {
    let app = TestApp::spawn_with(|c| {
        c.common.trust_proxy_headers = 1;
        c.login_max_failures_per_ip = 2;
        c.login_max_failures_per_account = 100;
    })
    .await;
    // Two clients behind one proxy: each has its own budget, although both
    // arrive from the proxy's address.
    for _ in 0..2 {
        assert_eq!(
            failed_login_via_proxy(&app, "198.51.100.1").await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        failed_login_via_proxy(&app, "198.51.100.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        failed_login_via_proxy(&app, "198.51.100.2").await,
        StatusCode::UNAUTHORIZED
    );
    // An address the client wrote in front of the proxy's own entry changes
    // nothing: the throttled client stays throttled.
    assert_eq!(
        failed_login_via_proxy(&app, "203.0.113.77, 198.51.100.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Nor does an unreadable last entry let an earlier, forged one count: the
    // socket's own address is used, with its own budget.
    for _ in 0..2 {
        assert_eq!(
            failed_login_via_proxy(&app, "198.51.100.9, not-an-ip").await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        failed_login_via_proxy(&app, "198.51.100.9").await,
        StatusCode::UNAUTHORIZED,
        "the forged 198.51.100.9 was counted"
    );
}

#[tokio::test]
async fn without_trust_proxy_headers_the_forwarded_address_is_ignored() {
    let app = TestApp::spawn_with(|c| {
        c.login_max_failures_per_ip = 2;
        c.login_max_failures_per_account = 100;
    })
    .await;
    for forwarded in ["198.51.100.1", "198.51.100.2"] {
        assert_eq!(
            failed_login_via_proxy(&app, forwarded).await,
            StatusCode::UNAUTHORIZED
        );
    }
    // Both counted against the socket's address.
    assert_eq!(
        failed_login_via_proxy(&app, "198.51.100.3").await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

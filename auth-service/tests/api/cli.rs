//! The operator commands of the real binary.

use crate::helpers::*;
use reqwest::StatusCode;
use std::io::Write as _;
use std::process::{Command, Stdio};

#[tokio::test]
async fn user_and_api_key_commands() {
    let app = TestApp::spawn().await;
    let bin = env!("CARGO_BIN_EXE_auth-service");
    let config = &app.state.config;
    let envs = [
        ("DATABASE_URL", config.database_url.expose()),
        ("REDIS_URL", config.common.redis_url.expose()),
        ("REDIS_PREFIX", config.common.redis_prefix.as_str()),
    ];
    let cmd = |args: &[&str]| {
        let mut c = Command::new(bin);
        c.envs(envs).env_remove("AUTH_PASSWORD").args(args);
        c
    };

    // Password on stdin.
    let mut child = cmd(&["user", "add", "Alice"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .expect("write");
    assert!(child.wait().expect("wait").success());
    assert_eq!(app.login("alice", PASSWORD).await.status(), StatusCode::OK);

    // Password from AUTH_PASSWORD; duplicates and weak passwords are refused.
    let ok = cmd(&["user", "add", "bob"])
        .env("AUTH_PASSWORD", PASSWORD)
        .output()
        .expect("run");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let dup = cmd(&["user", "add", "bob"])
        .env("AUTH_PASSWORD", PASSWORD)
        .output()
        .expect("run");
    assert!(!dup.status.success());
    // Unless a script says it may run again: then the user is left as it is.
    let again = cmd(&["user", "add", "bob", "--if-missing"])
        .env("AUTH_PASSWORD", "another password entirely")
        .output()
        .expect("run");
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(app.login("bob", PASSWORD).await.status(), StatusCode::OK);
    let weak = cmd(&["user", "add", "carol"])
        .env("AUTH_PASSWORD", "short")
        .output()
        .expect("run");
    assert!(!weak.status.success());

    // A key printed once on stdout, usable at once.
    let out = cmd(&[
        "api-key",
        "create",
        "alice",
        "--scopes",
        "connect,publish",
        "--name",
        "backend",
    ])
    .output()
    .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned();
    assert!(key.starts_with("tess_"));
    assert_eq!(app.mint_with_key(&key).await.status(), StatusCode::CREATED);
    let bad = cmd(&["api-key", "create", "alice", "--scopes", "root"])
        .output()
        .expect("run");
    assert!(!bad.status.success());

    let out = cmd(&["api-key", "list", "alice"]).output().expect("run");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(listed[0]["name"], "backend");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&key));
    let id = listed[0]["id"].as_str().expect("id").to_owned();

    assert!(
        cmd(&["api-key", "revoke", &id])
            .status()
            .expect("run")
            .success()
    );
    // The CLI is another process: this server trusts its cached verdict for at most API_KEY_CACHE_MS.
    tokio::time::sleep(std::time::Duration::from_millis(
        config.api_key_cache_ms + 50,
    ))
    .await;
    assert_eq!(
        app.mint_with_key(&key).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Revoking again succeeds (it redoes the Redis half); an unknown key does not.
    assert!(
        cmd(&["api-key", "revoke", &id])
            .status()
            .expect("run")
            .success()
    );
    assert!(
        !cmd(&["api-key", "revoke", &uuid::Uuid::new_v4().to_string()])
            .status()
            .expect("run")
            .success()
    );

    // Disabling a user ends their sessions.
    let cookie = app.login_cookie("bob").await;
    assert!(
        cmd(&["user", "disable", "bob"])
            .status()
            .expect("run")
            .success()
    );
    assert_eq!(
        app.get_with_cookie("/v1/me", &cookie).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("bob", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn operators_see_and_lift_a_login_lockout() {
    let app = TestApp::spawn_with(|c| c.login_max_failures_per_account = 2).await;
    app.create_user("gina").await;
    let config = &app.state.config;
    let cmd = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_auth-service"))
            .env("DATABASE_URL", config.database_url.expose())
            .env("REDIS_URL", config.common.redis_url.expose())
            .env("REDIS_PREFIX", &config.common.redis_prefix)
            .env("LOGIN_MAX_FAILURES_PER_ACCOUNT", "2")
            .args(args)
            .output()
            .expect("run")
    };
    assert_eq!(
        app.login_from("127.0.0.5", "gina", PASSWORD).await.status(),
        StatusCode::OK
    );
    for _ in 0..2 {
        assert_eq!(
            app.login_from("127.0.0.6", "gina", "wrong").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        app.login_from("127.0.0.6", "gina", PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    let out = cmd(&["user", "lockout", "Gina"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["username"], "gina");
    let locked = &report["addresses"][0];
    assert_eq!(locked["address"], "127.0.0.6");
    // Two failures and the refused attempt, all counted.
    assert_eq!(locked["failures"], 3);
    assert_eq!(locked["locked"], true);
    let resets_in = locked["resets_in_secs"].as_u64().expect("secs");
    assert!((1..=900).contains(&resets_in), "{resets_in}");
    assert_eq!(report["known_addresses"], serde_json::json!(["127.0.0.5"]));
    assert_eq!(report["hourly_budget"]["locked"], false);

    let out = cmd(&["user", "unlock", "gina"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unlocked gina"));
    assert_eq!(
        app.login_from("127.0.0.6", "gina", PASSWORD).await.status(),
        StatusCode::OK
    );
    let out = cmd(&["user", "lockout", "gina"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["addresses"], serde_json::json!([]));
}

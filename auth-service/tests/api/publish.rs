use crate::helpers::*;
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::channel::ChannelName;
use std::time::Duration;

async fn publish(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.http
        .post(app.url("/v1/publish"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn server_publish_reaches_the_channel_live_and_in_history() {
    let app = TestApp::spawn().await;
    let user = app.create_user("backend").await;
    let key = app.api_key(&user, "publish_any").await;
    let channel: ChannelName = "broadcast:news".parse().expect("channel");

    let client = redis::Client::open(testkit::shared_redis_url()).expect("client");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub
        .subscribe(app.state.keys.channel_live(&channel))
        .await
        .expect("subscribe");

    let mut offsets = Vec::new();
    for n in 1..=3 {
        let response = publish(
            &app,
            &key,
            json!({ "channel": "broadcast:news", "data": { "n": n } }),
        )
        .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["channel"], "broadcast:news");
        offsets.push(body["offset"].as_u64().expect("offset"));
    }
    assert_eq!(offsets, [1, 2, 3]);

    let mut stream = pubsub.on_message();
    for n in 1..=3u64 {
        let message = tokio::time::timeout(Duration::from_secs(2), stream.next())
            .await
            .expect("in time")
            .expect("message");
        let frame: Value =
            serde_json::from_str(&message.get_payload::<String>().expect("payload")).expect("json");
        assert_eq!(frame["type"], "message");
        assert_eq!(frame["channel"], "broadcast:news");
        assert_eq!(frame["offset"], n);
        assert_eq!(frame["data"], json!({ "n": n }));
        assert!(frame["epoch"].is_string());
    }
    let mut redis = app.redis();
    let len: u64 = redis::cmd("XLEN")
        .arg(app.state.keys.channel_history(&channel))
        .query_async(&mut redis)
        .await
        .expect("xlen");
    assert_eq!(len, 3);
}

#[tokio::test]
async fn a_publish_key_writes_only_where_its_user_could_from_a_socket() {
    let app = TestApp::spawn_with(|c| {
        c.common.channel_namespaces = Some(
            r#"[{"name":"public","subscribe":"any","publish":"any","history":{"max_len":10,"max_age_secs":60}},
                {"name":"user","subscribe":"owner","publish":"server"},
                {"name":"inbox","subscribe":"owner","publish":"owner"},
                {"name":"broadcast","subscribe":"any","publish":"server"}]"#
                .to_owned(),
        );
    })
    .await;
    let user = app.create_user("client").await;
    let other = app.create_user("someone").await;
    let client_key = app.api_key(&user, "publish").await;
    let operator_key = app.api_key(&user, "publish_any").await;
    let status = |key: &str, channel: String| {
        let key = key.to_owned();
        let app = &app;
        async move {
            publish(app, &key, json!({ "channel": channel, "data": 1 }))
                .await
                .status()
        }
    };
    let written = ["public:lobby".to_owned(), format!("inbox:{}", user.id)];
    let refused = [
        "broadcast:news".to_owned(),
        format!("user:{}", user.id),
        format!("user:{}", other.id),
        format!("inbox:{}", other.id),
    ];
    for channel in written.clone() {
        assert_eq!(
            status(&client_key, channel.clone()).await,
            StatusCode::ACCEPTED,
            "{channel}"
        );
    }
    for channel in refused.clone() {
        let response = publish(&app, &client_key, json!({ "channel": channel, "data": 1 })).await;
        assert_eq!(
            error_code(response, StatusCode::FORBIDDEN).await,
            "insufficient_scope",
            "{channel}"
        );
    }
    // The operator's scope writes every configured channel.
    for channel in written.into_iter().chain(refused) {
        assert_eq!(
            status(&operator_key, channel.clone()).await,
            StatusCode::ACCEPTED,
            "{channel}"
        );
    }
}

#[tokio::test]
async fn publish_needs_the_publish_scope_and_a_valid_channel() {
    let app = TestApp::spawn().await;
    let user = app.create_user("backend").await;
    let connect_only = app.api_key(&user, "connect").await;
    let key = app.api_key(&user, "publish").await;
    let ok = json!({ "channel": "public:x", "data": 1 });

    let response = publish(&app, &connect_only, ok.clone()).await;
    assert_eq!(
        error_code(response, StatusCode::FORBIDDEN).await,
        "insufficient_scope"
    );
    let response = app
        .http
        .post(app.url("/v1/publish"))
        .json(&ok)
        .send()
        .await
        .expect("request");
    assert_eq!(
        error_code(response, StatusCode::UNAUTHORIZED).await,
        "unauthenticated"
    );
    // A session cookie is not enough: server publishing is for API keys.
    let cookie = app.login_cookie("backend").await;
    let response = app
        .http
        .post(app.url("/v1/publish"))
        .header("cookie", cookie)
        .json(&ok)
        .send()
        .await
        .expect("request");
    assert_eq!(
        error_code(response, StatusCode::UNAUTHORIZED).await,
        "unauthenticated"
    );

    let response = publish(&app, &key, json!({ "channel": "nowhere:x", "data": 1 })).await;
    assert_eq!(
        error_code(response, StatusCode::UNPROCESSABLE_ENTITY).await,
        "unknown_namespace"
    );
    for bad in ["no-namespace", "public:{x}", "public:", ""] {
        let response = publish(&app, &key, json!({ "channel": bad, "data": 1 })).await;
        assert_eq!(
            error_code(response, StatusCode::UNPROCESSABLE_ENTITY).await,
            "invalid_field",
            "{bad}"
        );
    }
    let response = publish(&app, &key, json!({ "channel": "public:x" })).await;
    assert_eq!(
        error_code(response, StatusCode::UNPROCESSABLE_ENTITY).await,
        "invalid_field"
    );
    let big = "x".repeat(64 * 1024);
    let response = publish(&app, &key, json!({ "channel": "public:x", "data": big })).await;
    assert_eq!(
        error_code(response, StatusCode::PAYLOAD_TOO_LARGE).await,
        "payload_too_large"
    );
    assert_eq!(publish(&app, &key, ok).await.status(), StatusCode::ACCEPTED);
}

/// `[[…[1]…]]`, arrays nested `depth` deep.
fn nested(depth: usize) -> Value {
    serde_json::from_str(&format!("{}1{}", "[".repeat(depth), "]".repeat(depth))).expect("json")
}

#[tokio::test]
async fn data_nested_deeper_than_64_levels_is_a_400() {
    let app = TestApp::spawn().await;
    let user = app.create_user("backend").await;
    let key = app.api_key(&user, "publish").await;
    let response = publish(
        &app,
        &key,
        json!({ "channel": "public:deep", "data": { "a": nested(64) } }),
    )
    .await;
    assert_eq!(
        error_code(response, StatusCode::BAD_REQUEST).await,
        "json_too_deep"
    );
    // Far deeper than serde_json's own recursion limit: still a 400, not a 500.
    let very_deep = format!(
        r#"{{"channel":"public:deep","data":{}1{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let response = app
        .http
        .post(app.url("/v1/publish"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(very_deep)
        .send()
        .await
        .expect("request");
    assert_eq!(
        error_code(response, StatusCode::BAD_REQUEST).await,
        "json_too_deep"
    );
    let response = publish(
        &app,
        &key,
        json!({ "channel": "public:deep", "data": nested(64) }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

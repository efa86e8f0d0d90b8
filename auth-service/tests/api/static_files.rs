//! STATIC_DIR: a page served from the API's own origin.

use crate::helpers::*;
use reqwest::StatusCode;

#[tokio::test]
async fn static_dir_is_served_at_the_root_beside_the_api() {
    let dir = std::env::temp_dir().join(format!("tessera-static-{}", testkit::random_id()));
    std::fs::create_dir_all(dir.join("js")).expect("dir");
    std::fs::write(dir.join("index.html"), "<!doctype html><title>demo</title>").expect("write");
    std::fs::write(dir.join("js/app.js"), "export const x = 1;").expect("write");
    let static_dir = dir.clone();
    let app = TestApp::spawn_with(|c| c.static_dir = Some(static_dir)).await;
    let get = |path: &str| app.http.get(app.url(path)).send();

    let page = get("/").await.expect("request");
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers().clone();
    assert!(
        headers["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/html")
    );
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .expect("ascii")
            .starts_with("default-src 'self'; connect-src 'self' ws: wss:")
    );
    assert!(page.text().await.expect("body").contains("<title>demo"));
    let script = get("/js/app.js").await.expect("request");
    assert_eq!(script.status(), StatusCode::OK);
    assert!(
        script.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .contains("javascript")
    );
    let head = app.http.head(app.url("/")).send().await.expect("request");
    assert_eq!(head.status(), StatusCode::OK);

    // Everything else is the API's JSON 404, as without STATIC_DIR.
    for path in [
        "/missing.html",
        "/js/",
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
    ] {
        let missing = get(path).await.expect("request");
        assert_eq!(
            error_code(missing, StatusCode::NOT_FOUND).await,
            "not_found",
            "{path}"
        );
    }
    let posted = app
        .http
        .post(app.url("/"))
        .body("x")
        .send()
        .await
        .expect("request");
    assert_eq!(error_code(posted, StatusCode::NOT_FOUND).await, "not_found");
    let api = get("/v1/nope").await.expect("request");
    assert_eq!(error_code(api, StatusCode::NOT_FOUND).await, "not_found");
    // And the API is untouched: its own answers, not files.
    let health = get("/healthz").await.expect("request");
    assert_eq!(health.status(), StatusCode::OK);
    assert!(health.headers().get("content-security-policy").is_none());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_static_dir_that_is_not_a_directory_is_refused_at_startup() {
    let db = testkit::TestDatabase::new();
    let mut config = test_config(&db);
    config.static_dir = Some("/nonexistent/tessera/static".into());
    let error = auth_service::Application::build(config)
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("STATIC_DIR"), "{error:#}");
}

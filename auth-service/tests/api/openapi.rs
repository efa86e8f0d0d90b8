//! `GET /openapi.json` describes the router as it is: every route with the
//! methods it answers, the error codes, both ways to authenticate.

use crate::helpers::*;
use auth_service::error::ERROR_CODES;
use auth_service::routes::ROUTES;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::collections::BTreeSet;

async fn document(app: &TestApp) -> Value {
    let response = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.expect("JSON")
}

#[tokio::test]
async fn the_document_is_openapi_3_1_with_both_security_schemes() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let version = doc["openapi"].as_str().expect("openapi");
    assert!(version.starts_with("3.1."), "{version}");

    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["session_cookie"]["type"], "apiKey");
    assert_eq!(schemes["session_cookie"]["in"], "cookie");
    // The tests run with COOKIE_SECURE=true.
    assert_eq!(schemes["session_cookie"]["name"], "__Host-session");
    assert_eq!(schemes["api_key"]["type"], "http");
    assert_eq!(schemes["api_key"]["scheme"], "bearer");
}

/// Asks the router which methods each route answers (anything but 405) and
/// compares that with the document, so neither can change without the other.
#[tokio::test]
async fn every_route_is_documented_with_the_methods_it_answers() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let paths = doc["paths"].as_object().expect("paths");
    let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    let routed: BTreeSet<&str> = ROUTES.iter().copied().collect();
    assert_eq!(documented, routed, "documented paths vs the router's");

    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ];
    for route in ROUTES {
        let path = route.replace(
            "{id}",
            if route.starts_with("/v1/connections/") {
                "node:1"
            } else {
                "00000000-0000-4000-8000-000000000000"
            },
        );
        let mut answered = BTreeSet::new();
        for method in &methods {
            let response = app
                .http
                .request(method.clone(), app.url(&path))
                .send()
                .await
                .expect("request");
            if response.status() != StatusCode::METHOD_NOT_ALLOWED {
                answered.insert(method.as_str().to_lowercase());
            }
        }
        let documented: BTreeSet<String> = paths[*route]
            .as_object()
            .expect("path item")
            .keys()
            .filter(|k| methods.iter().any(|m| m.as_str().eq_ignore_ascii_case(k)))
            .cloned()
            .collect();
        assert_eq!(documented, answered, "methods of {route}");
    }
}

#[tokio::test]
async fn the_error_schema_lists_every_code_the_server_emits() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let schemas = &doc["components"]["schemas"];
    let listed: BTreeSet<&str> = schemas["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode enum")
        .iter()
        .map(|c| c.as_str().expect("a string"))
        .collect();
    // ERROR_CODES is checked against the source by a unit test in error.rs.
    assert_eq!(listed, ERROR_CODES.iter().copied().collect());
    assert_eq!(
        schemas["ErrorDetail"]["properties"]["code"]["$ref"],
        "#/components/schemas/ErrorCode"
    );

    // Every documented error answer of the API carries that body.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            for (status, response) in operation["responses"].as_object().expect("responses") {
                if status.starts_with('2') || path == "/readyz" {
                    continue;
                }
                let response = match response["$ref"].as_str() {
                    Some(reference) => {
                        let name = reference.rsplit('/').next().expect("a name");
                        &doc["components"]["responses"][name]
                    }
                    None => response,
                };
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
    }
}

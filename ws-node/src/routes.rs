//! ws-node's HTTP surface: the WebSocket endpoint and operations endpoints.

use crate::error::error_response;
use crate::state::NodeState;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

pub fn router(state: NodeState) -> Router {
    let mut router = Router::new()
        .route("/ws", get(crate::handshake::upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if state.config.metrics_listen.is_none() {
        router = router.route("/metrics", get(metrics));
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    // The query may carry a ticket: never log it.
                    let uri = req.uri().path_and_query().map_or("", |pq| pq.as_str());
                    tracing::info_span!("http", method = %req.method(), uri = %shared::redact::redact_uri(uri))
                })
                .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                // A 503 from /readyz during start-up or a Redis outage is an
                // answer, not a failure of the server; real problems log themselves.
                .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
        .with_state(state)
}

/// What `METRICS_LISTEN` serves: `/metrics` alone, which [`router`] then
/// leaves out.
pub fn metrics_only(state: NodeState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

async fn healthz(State(node): State<NodeState>) -> Response {
    axum::Json(json!({ "status": "ok", "node": &*node.node_id })).into_response()
}

/// Ready only while the Redis subscription is live, the command connection
/// (tickets, publishing) answers, and the node is not draining: a node that
/// cannot hear other nodes' messages or check a ticket must not take clients.
async fn readyz(State(node): State<NodeState>) -> Response {
    let subscribed = *node.subscribed.borrow();
    let draining = node.is_draining();
    let mut redis = node.redis.clone();
    let commands = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        redis::cmd("PING").query_async::<()>(&mut redis),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let ready = subscribed && commands && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({
            "status": if ready { "ready" } else { "not_ready" },
            "node": &*node.node_id,
            "checks": {
                "redis_subscription": if subscribed { "ok" } else { "down" },
                "redis_commands": if commands { "ok" } else { "down" },
                "draining": draining,
            },
            "connections": node.hub.connection_count(),
        })),
    )
        .into_response()
}

async fn metrics(State(node): State<NodeState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics.render(),
    )
        .into_response()
}

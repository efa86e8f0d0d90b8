//! ws-node's HTTP surface as hyper and axum serve it: operations endpoints,
//! and `GET /ws` when it is not a connection's first request.

use super::stream::ClientStream;
use crate::error::{Error, error_response};
use crate::handshake::{self, UpgradeRequest};
use crate::state::NodeState;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use std::net::SocketAddr;
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

pub fn router(state: NodeState) -> Router {
    let mut router = Router::new()
        .route("/ws", get(upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if state.config.common.metrics_listen.is_none() {
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

/// Ready only while the Redis subscription is live and delivers (the
/// node's own canary came back within `CANARY_TIMEOUT_MS`), the command
/// connection (tickets, publishing) answers, and the node is not draining: a
/// node that cannot hear other nodes' messages or check a ticket must not
/// take clients.
async fn readyz(State(node): State<NodeState>) -> Response {
    let subscribed = *node.subscribed.borrow();
    let canary_age = node.canary.age();
    let delivering = !node.canary.is_late();
    let draining = node.is_draining();
    let mut redis = node.redis.clone();
    let commands = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        redis::cmd("PING").query_async::<()>(&mut redis),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let ready = subscribed && delivering && commands && !draining;
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
                "redis_delivery": if delivering { "ok" } else { "late" },
                "canary_age_ms": u64::try_from(canary_age.as_millis()).unwrap_or(u64::MAX),
                // One canary per shard the node depends on (1 on a single Redis).
                "canary_shards": node.canary.channels(),
                "redis_commands": if commands { "ok" } else { "down" },
                "draining": draining,
            },
            "connections": node.hub.connection_count(),
        })),
    )
        .into_response()
}

async fn metrics(State(node): State<NodeState>) -> Response {
    // The canary's age is a clock, not an event: read it as it is now.
    node.canary.age();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics.render(),
    )
        .into_response()
}

/// `GET /ws` when hyper read the request: a later request on a kept-alive
/// connection (proxies reuse theirs), or one that [`super::server`] left to
/// hyper. The common case, a connection's first request, never gets here.
async fn upgrade(
    State(node): State<NodeState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (mut parts, _body) = request.into_parts();
    let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let request = UpgradeRequest::new(
        peer,
        parts.method == Method::GET && parts.version == Version::HTTP_11 && on_upgrade.is_some(),
        parts.uri.query(),
        parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes())),
        node.config.common.cookie_name(),
    );
    let accepted = match handshake::authenticate(&node, request).await {
        Ok(accepted) => accepted,
        Err(e) => return e.into_response(),
    };
    // Never `None` here: an upgrade without it is not a WebSocket request.
    let Some(on_upgrade) = on_upgrade else {
        return Error::NotWebSocket.into_response();
    };
    let response = match accepted.response() {
        Ok(response) => response,
        Err(e) => return e.into_response(),
    };
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let opened = accepted.open(ClientStream::upgraded(upgraded)).await;
                super::server::serve_opened(opened).await;
            }
            // Dropping `accepted` releases the admission.
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    response
}

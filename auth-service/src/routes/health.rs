//! Liveness, readiness and metrics.

use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;
use std::time::Duration;

const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// The process is up and serving.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Postgres and Redis both answer; a load balancer should only route here then.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let postgres = async {
        tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&state.db))
            .await
            .is_ok_and(|r| r.is_ok())
    };
    // Every serving thread's connection, not just this one's.
    let redis = state.command_connections.all_answer(CHECK_TIMEOUT);
    let (postgres, redis) = tokio::join!(postgres, redis);
    let verdict = |ok: bool| if ok { "ok" } else { "unavailable" };
    let ready = postgres && redis;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ready { "ready" } else { "not_ready" },
            "checks": { "postgres": verdict(postgres), "redis": verdict(redis) },
        })),
    )
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

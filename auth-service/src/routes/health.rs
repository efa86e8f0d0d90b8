//! Liveness, readiness and metrics.

use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;

const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(value_type = String, pattern = "^ok$")]
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    #[schema(value_type = String, pattern = "^(ready|not_ready)$")]
    status: &'static str,
    checks: Checks,
}

/// Each backing service: `ok` or `unavailable`.
#[derive(Serialize, ToSchema)]
pub struct Checks {
    #[schema(value_type = String, pattern = "^(ok|unavailable)$")]
    postgres: &'static str,
    #[schema(value_type = String, pattern = "^(ok|unavailable)$")]
    redis: &'static str,
}

/// The process is up and serving.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Alive", body = Health)),
)]
pub async fn healthz() -> impl IntoResponse {
    Json(Health { status: "ok" })
}

/// Postgres and Redis both answer; a load balancer should only route here then.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Postgres and Redis answer", body = Readiness),
        (status = 503, description = "Postgres or Redis does not answer", body = Readiness),
    ),
)]
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
        Json(Readiness {
            status: if ready { "ready" } else { "not_ready" },
            checks: Checks {
                postgres: verdict(postgres),
                redis: verdict(redis),
            },
        }),
    )
}

/// Prometheus text exposition.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String,
        content_type = "text/plain")),
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

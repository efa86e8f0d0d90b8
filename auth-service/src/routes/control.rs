//! The server control API (the AWS `@connections` equivalent): list a user's
//! live connections, disconnect a user or one connection. Authenticated by an
//! API key with the `admin` scope; any auth-service process accepts the call
//! and the control channel carries it to every ws-node.

use crate::error::{Error, Result};
use crate::extract::{ApiKeyUser, ApiPath};
use crate::routes::openapi::{BadRequest, Forbidden, NotFound, Unauthenticated, Unavailable};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use shared::connections::ConnectionInfo;
use shared::control::{self, ControlMessage};
use shared::scope::Scope;
use utoipa::ToSchema;
use uuid::Uuid;

/// A user's live connections on every node.
#[derive(Serialize, ToSchema)]
pub struct ConnectionList {
    user_id: Uuid,
    connections: Vec<ConnectionInfo>,
}

fn require_admin(key: &crate::api_keys::VerifiedKey) -> Result<()> {
    if key.scopes.contains(Scope::Admin) {
        Ok(())
    } else {
        Err(Error::forbidden(
            "insufficient_scope",
            "this API key lacks the `admin` scope",
        ))
    }
}

fn user_id(raw: &str) -> Result<Uuid> {
    raw.parse().map_err(|_| Error::NotFound("no such user"))
}

/// `GET /v1/users/{id}/connections`: the user's live connections on every node.
#[utoipa::path(
    get,
    path = "/v1/users/{id}/connections",
    tag = "control",
    security(("api_key" = [])),
    params(("id" = Uuid, Path, description = "The user's id")),
    responses(
        (status = 200, description = "The user's live connections (none for an unknown user)", body = ConnectionList),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn list_connections(
    State(state): State<AppState>,
    ApiKeyUser(key): ApiKeyUser,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse> {
    require_admin(&key)?;
    let user_id = user_id(&id)?;
    let connections =
        shared::connections::list_for_user(&mut state.redis.clone(), &state.keys, user_id).await?;
    Ok(Json(ConnectionList {
        user_id,
        connections,
    }))
}

/// `POST /v1/users/{id}/disconnect`: closes every socket of the user (4003).
#[utoipa::path(
    post,
    path = "/v1/users/{id}/disconnect",
    tag = "control",
    security(("api_key" = [])),
    params(("id" = Uuid, Path, description = "The user's id")),
    responses(
        (status = 202, description = "Sent to every node; the sockets close with 4003"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn disconnect_user(
    State(state): State<AppState>,
    ApiKeyUser(key): ApiKeyUser,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse> {
    require_admin(&key)?;
    let user_id = user_id(&id)?;
    control::broadcast(
        &mut state.redis.clone(),
        &state.keys,
        &ControlMessage::DisconnectUser { user_id },
    )
    .await?;
    Ok(StatusCode::ACCEPTED)
}

/// `POST /v1/connections/{id}/disconnect`: closes one socket (4003); `id` is
/// the `connection_id` of its `welcome` frame (`<node>:<n>`).
#[utoipa::path(
    post,
    path = "/v1/connections/{id}/disconnect",
    tag = "control",
    security(("api_key" = [])),
    params(("id" = String, Path, max_length = 200, pattern = ":",
        description = "The `connection_id` of the socket's `welcome` frame (`<node>:<n>`)")),
    responses(
        (status = 202, description = "Sent to every node; the socket closes with 4003"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn disconnect_connection(
    State(state): State<AppState>,
    ApiKeyUser(key): ApiKeyUser,
    ApiPath(connection_id): ApiPath<String>,
) -> Result<impl IntoResponse> {
    require_admin(&key)?;
    if connection_id.len() > 200 || !connection_id.contains(':') {
        return Err(Error::NotFound("no such connection"));
    }
    control::broadcast(
        &mut state.redis.clone(),
        &state.keys,
        &ControlMessage::DisconnectConnection { connection_id },
    )
    .await?;
    Ok(StatusCode::ACCEPTED)
}

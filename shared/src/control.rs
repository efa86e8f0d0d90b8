//! Control messages: how auth-service tells every ws-node to close sockets.
//!
//! Published on the deployment's control channel ([`RedisKeys::control`]).
//! Pub/sub is at-most-once, so a lost control message must not leave a revoked
//! credential working: revocation also writes a marker (kept for
//! [`REVOCATION_MEMORY`](crate::credential::REVOCATION_MEMORY)) that ticket
//! consumption checks, and ws-node re-validates live sockets periodically.

use crate::credential::AuthSource;
use crate::keys::RedisKeys;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// A credential was revoked (logout, session revocation, API key revocation):
    /// close every socket opened with it.
    CredentialRevoked { source: AuthSource },
    /// A user was disabled: close every socket of the user.
    UserDisabled { user_id: Uuid },
    /// An operator disconnects every socket of a user (control API).
    DisconnectUser { user_id: Uuid },
    /// An operator disconnects one socket (control API); `connection_id` is `<node>:<id>`.
    DisconnectConnection { connection_id: String },
}

/// Publishes a control message to every ws-node.
pub async fn broadcast(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &RedisKeys,
    message: &ControlMessage,
) -> redis::RedisResult<()> {
    let json = serde_json::to_string(message).map_err(|e| {
        redis::RedisError::from((redis::ErrorKind::Client, "control message", e.to_string()))
    })?;
    redis::cmd("PUBLISH")
        .arg(keys.control())
        .arg(json)
        .query_async(conn)
        .await
}

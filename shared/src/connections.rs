//! The cluster-wide directory of live connections, for the control API.
//!
//! Each ws-node writes a small hash per connection (`P:conn:<node>:<id>`) with
//! a TTL equal to its lease, renewed while the connection lives, and adds the
//! connection to its user's set (`P:user-conns:<user>`, scored by lease expiry).
//! auth-service reads both to list a user's connections. A node that dies stops
//! renewing, so its entries vanish within one lease.

use crate::keys::RedisKeys;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A live connection as listed by the control API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConnectionInfo {
    /// `<node>:<id>`, unique in the cluster.
    pub id: String,
    pub node: String,
    pub user_id: Uuid,
    /// Unix seconds.
    pub connected_at: u64,
    pub channels: Vec<String>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Lists the live connections of a user, across all nodes.
pub async fn list_for_user(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &RedisKeys,
    user_id: Uuid,
) -> redis::RedisResult<Vec<ConnectionInfo>> {
    let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(keys.user_connections(user_id))
        .arg(now_ms())
        .arg("+inf")
        .query_async(conn)
        .await?;
    if members.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for member in &members {
        pipe.cmd("HGETALL").arg(keys.connection_info(member));
    }
    let details: Vec<std::collections::HashMap<String, String>> = pipe.query_async(conn).await?;
    Ok(members
        .into_iter()
        .zip(details)
        .filter(|(_, fields)| !fields.is_empty())
        .map(|(id, fields)| ConnectionInfo {
            node: fields.get("node").cloned().unwrap_or_default(),
            user_id,
            connected_at: fields
                .get("connected_at")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            channels: fields
                .get("channels")
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default(),
            id,
        })
        .collect())
}

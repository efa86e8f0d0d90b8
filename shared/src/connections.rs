//! The cluster-wide registry of live connections: each user's connection
//! set, which caps connections per user across all nodes, and the directory
//! the control API lists. Both are written and read here only.
//!
//! Each ws-node adds a connection to its user's set (`P:user-conns:<user>`,
//! scored by lease expiry) and writes a small hash per connection
//! (`P:conn:<node>:<id>`) with a TTL of one lease, renewing both while the
//! connection lives. auth-service reads both to list a user's connections. A
//! node that dies stops renewing, so its entries vanish within one lease.

use crate::keys::RedisKeys;
use serde::{Deserialize, Serialize};
use std::time::Duration;
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

/// A live connection's directory entry, as its node writes it.
#[derive(Clone, Copy, Debug)]
pub struct DirectoryEntry<'a> {
    /// `<node>:<id>`.
    pub connection: &'a str,
    pub node: &'a str,
    pub user_id: Uuid,
    /// Unix seconds.
    pub connected_at: u64,
    pub channels: &'a [&'a str],
}

/// Adds the `HSET` + `PEXPIRE` that write `entry`, leased for `lease`, to
/// `pipe`; no replies.
pub fn add_directory_entry(
    pipe: &mut redis::Pipeline,
    keys: &RedisKeys,
    entry: &DirectoryEntry<'_>,
    lease: Duration,
) {
    let key = keys.connection_info(entry.connection);
    pipe.cmd("HSET")
        .arg(&key)
        .arg("node")
        .arg(entry.node)
        .arg("user_id")
        .arg(entry.user_id.to_string())
        .arg("connected_at")
        .arg(entry.connected_at)
        .arg("channels")
        .arg(serde_json::to_string(entry.channels).unwrap_or_default())
        .ignore()
        .cmd("PEXPIRE")
        .arg(&key)
        .arg(crate::millis(lease))
        .ignore();
}

/// Adds a connection to its user's set (its entry lapses after `lease` unless
/// renewed, so a dead node's entries free themselves), dropping lapsed
/// entries first. One reply: how many live connections the user has now,
/// this one included; over the cap, the caller refuses and removes it
/// ([`add_removal`]). Add-then-count needs no script, so it shares the
/// handshake's single round trip; two racing handshakes at the cap may both
/// be refused, never both admitted.
pub fn add_slot_acquisition(
    pipe: &mut redis::Pipeline,
    keys: &RedisKeys,
    user_id: Uuid,
    connection: &str,
    lease: Duration,
) {
    let key = keys.user_connections(user_id);
    pipe.cmd("ZREMRANGEBYSCORE")
        .arg(&key)
        .arg("-inf")
        .arg(crate::unix_now_ms())
        .ignore();
    add_slot(pipe, keys, user_id, connection, lease);
    pipe.cmd("ZCARD").arg(&key);
}

/// Writes a live connection's place in its user's set, leased for `lease`
/// (also to re-create it after Redis lost it); no replies.
pub fn add_slot(
    pipe: &mut redis::Pipeline,
    keys: &RedisKeys,
    user_id: Uuid,
    connection: &str,
    lease: Duration,
) {
    let key = keys.user_connections(user_id);
    pipe.cmd("ZADD")
        .arg(&key)
        .arg(crate::unix_now_ms() + crate::millis(lease))
        .arg(connection)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&key)
        .arg(crate::millis(lease))
        .ignore();
}

/// Removes a closed connection's place and directory entry; no replies.
pub fn add_removal(pipe: &mut redis::Pipeline, keys: &RedisKeys, user_id: Uuid, connection: &str) {
    pipe.cmd("ZREM")
        .arg(keys.user_connections(user_id))
        .arg(connection)
        .ignore()
        .cmd("DEL")
        .arg(keys.connection_info(connection))
        .ignore();
}

/// Extends the leases of live connections and their directory entries (one
/// pipeline per thousand). Returns the indices into `connections` whose place
/// or directory entry was gone (Redis lost its data, or was away longer than
/// a lease): the caller writes those again, so the per-user cap and the
/// directory heal instead of silently under-counting.
pub async fn renew(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &RedisKeys,
    connections: &[(Uuid, String)],
    lease: Duration,
) -> redis::RedisResult<Vec<usize>> {
    let expires = crate::unix_now_ms() + crate::millis(lease);
    let mut missing = Vec::new();
    for (chunk_index, chunk) in connections.chunks(1000).enumerate() {
        let mut pipe = redis::pipe();
        for (user_id, connection) in chunk {
            let key = keys.user_connections(*user_id);
            // XX: never re-create the place of a connection that closed after
            // the caller's snapshot; CH: the reply says whether it existed.
            pipe.cmd("ZADD")
                .arg(&key)
                .arg("XX")
                .arg("CH")
                .arg(expires)
                .arg(connection);
            pipe.cmd("PEXPIRE")
                .arg(&key)
                .arg(crate::millis(lease))
                .ignore();
            pipe.cmd("PEXPIRE")
                .arg(keys.connection_info(connection))
                .arg(crate::millis(lease));
        }
        let replies: Vec<i64> = pipe.query_async(conn).await?;
        for (i, pair) in replies.chunks(2).enumerate() {
            if pair.contains(&0) {
                missing.push(chunk_index * 1000 + i);
            }
        }
    }
    Ok(missing)
}

/// Lists the live connections of a user, across all nodes.
pub async fn list_for_user(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &RedisKeys,
    user_id: Uuid,
) -> redis::RedisResult<Vec<ConnectionInfo>> {
    let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(keys.user_connections(user_id))
        .arg(crate::unix_now_ms())
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

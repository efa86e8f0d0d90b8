//! What `auth-service` and `ws-node` must agree on.
//!
//! Both binaries read and write the same Redis data; if they formatted keys or
//! records separately, a one-character drift would silently break logins or
//! tickets. So everything shared lives here, once:
//!
//! * [`config`]: the settings both services have.
//! * [`keys`]: the only place that formats a Redis key or pub/sub channel name.
//! * [`secret`]: random tokens and their SHA-256 digests (what we store instead of secrets).
//! * [`credential`]: which credential a session or ticket belongs to, and the revocation check.
//! * [`ticket`]: the WebSocket ticket record, minting and the atomic single-use consume.
//! * [`session`]: the session record cached in Redis for cookie handshakes.
//! * [`scope`]: permission scopes carried by API keys and tickets.
//! * [`channel`]: channel names and the message envelope published through Redis.
//! * [`connections`]: the cluster-wide directory of live connections.
//! * [`control`]: control messages (revocations) from auth-service to every ws-node.
//! * [`namespace`]: channel namespaces and their rules (who may join, publish; history).
//! * [`net`]: listening sockets, client addresses behind a proxy, shutdown signals.
//! * [`http`]: serving HTTP/1.1 connections with hyper, with a request-head timeout.
//! * [`origin`]: the exact-match browser origin allowlist.
//! * [`json`]: how deeply nested a published message's JSON may be.
//! * [`redact`]: scrubbing secrets from anything that may be logged.
//! * [`redis_conn`]: opening Redis connections with the timeouts both services need.
//! * [`telemetry`]: logging setup shared by both binaries.

pub mod channel;
pub mod config;
pub mod connections;
pub mod control;
pub mod credential;
pub mod http;
pub mod json;
pub mod keys;
pub mod namespace;
pub mod net;
pub mod origin;
pub mod quota;
pub mod redact;
pub mod redis_conn;
pub mod scope;
pub mod secret;
pub mod session;
pub mod telemetry;
pub mod ticket;

/// Seconds since the Unix epoch, the time unit of every record stored in Redis.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch: the scores of lease-bound entries in
/// Redis (per-user connection sets, presence).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A duration in whole milliseconds, as Redis takes them.
pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

//! The Redis key layout: the only module that formats a key or channel name.
//!
//! Every name starts with the deployment's prefix (`REDIS_PREFIX`), so several
//! deployments or parallel test runs can share one Redis without seeing each
//! other. Names that a script or `MULTI` touches together carry the same hash tag
//! (`{...}`), so the same code runs unchanged on Redis Cluster: a channel's live
//! pub/sub name and its history stream both hash on `{<channel>}`.
//!
//! | name | type | format owned by | written by | read by |
//! |---|---|---|---|---|
//! | `P:ticket:<sha256>` | string (JSON [`TicketClaims`](crate::ticket::TicketClaims)), TTL ≤ 30 s | [`crate::ticket`] | auth-service | ws-node (`GETDEL`) |
//! | `P:session:<sha256>` | string (JSON [`SessionRecord`](crate::session::SessionRecord)), TTL = idle timeout | [`crate::session`] | auth-service | both |
//! | `P:rl:<bucket>:<subject>` | counter with TTL (fixed window) | auth-service's `rate_limit` | auth-service | auth-service |
//! | `P:quota:<user id>:<bytes\|channels>` | counter with TTL (fixed window): a user's publish quota spent | [`crate::quota`] | both | both |
//! | `P:login-known:<username>` | set of client addresses the account logged in from, TTL 30 days | auth-service's `login_limits` | auth-service | auth-service |
//! | `P:ch:{<channel>}:live` | pub/sub channel carrying ready-to-send frames | [`crate::channel::frame`] | both (publish), ws-node (presence) | ws-node |
//! | `P:ch:{<channel>}:hist` | stream: the channel's bounded history, entry id `<offset>-0`, TTL = max age | [`crate::channel`] | both | ws-node |
//! | `P:ch:{<channel>}:times` | list: the publish time of each history entry, oldest first, TTL = max age | [`crate::channel`] | both | both |
//! | `P:ch:{<channel>}:meta` | hash: the history's epoch, last offset and format version, TTL = max age | [`crate::channel`] | both | ws-node |
//! | `P:ch:{<channel>}:idem:<user id>:<key>` | string, TTL 10 min: an idempotency key this user already published | [`crate::channel`] | both | both |
//! | `P:ch:{<channel>}:presence` | sorted set of present connections, scored by lease expiry | ws-node's `presence` | ws-node | ws-node |
//! | `P:ch:{<channel>}:presence-idx` | the same members scored 0, searchable by user prefix | ws-node's `presence` | ws-node | ws-node |
//! | `P:conn:<node>:<id>` | hash: a live connection's node, user, since, channels; TTL = lease | [`crate::connections`] | ws-node | auth-service |
//! | `P:user-conns:<user id>` | sorted set of live connections, scored by lease expiry | [`crate::connections`] | ws-node | both |
//! | `P:revoked:<kind>:<id>` | marker, TTL 30 days: this credential's tickets and sockets are void | [`crate::credential`] | auth-service | ws-node |
//! | `P:control` | pub/sub channel for revocations and disconnects | [`crate::control`] | auth-service | ws-node |
//! | `P:canary:<node>` | pub/sub channel: a node's own canaries (their send time in unix ms), proving its subscription delivers | ws-node's `canary` | ws-node | the same ws-node |
//! | `P:canary:<node>:{<tag>}` | on a cluster, shard channel: the same, one per master, `<tag>` hashing to a slot of that master | ws-node's `canary` | ws-node | the same ws-node |

use crate::channel::ChannelName;
use crate::secret::TokenHash;
use std::sync::Arc;

/// The longest prefix we accept; keys stay short enough to be cheap to hash.
pub const MAX_PREFIX_LEN: usize = 64;

/// Formats every Redis key under one deployment prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisKeys {
    prefix: Arc<str>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "REDIS_PREFIX must be 1-{MAX_PREFIX_LEN} characters of letters, digits, '-', '_', '.' or ':' (got {0:?})"
)]
pub struct InvalidPrefix(pub String);

/// Which publish quota a counter holds ([`crate::quota`]); part of its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaCounter {
    /// Bytes of `data` published.
    Bytes,
    /// Channels with history brought into existence.
    NewChannels,
}

/// What a rate-limit counter counts; part of its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateBucket {
    /// Failed logins for one account from one client address (an IPv6
    /// address counted by its /64): the hard limit, which locks out only
    /// that address.
    LoginFailuresByAccountAndIp,
    /// Failed logins for one account from anywhere, per hour: the budget
    /// against guessing from many addresses (addresses the account logged in
    /// from before are exempt).
    LoginFailuresByAccount,
    /// Failed logins from one client address (an IPv6 address by its /64).
    LoginFailuresByIp,
    /// Cookies and API keys from one client address that Postgres did not
    /// know (an IPv6 address by its /64).
    AuthFailuresByIp,
    /// Tickets minted by one user through a session cookie.
    MintByUser,
    /// Tickets minted with one API key.
    MintByApiKey,
}

impl RateBucket {
    fn as_str(self) -> &'static str {
        match self {
            Self::LoginFailuresByAccountAndIp => "login-fail-acct-ip",
            Self::LoginFailuresByAccount => "login-fail-acct",
            Self::LoginFailuresByIp => "login-fail-ip",
            Self::AuthFailuresByIp => "auth-fail-ip",
            Self::MintByUser => "mint-user",
            Self::MintByApiKey => "mint-key",
        }
    }
}

impl RedisKeys {
    /// Braces are refused because they would turn the prefix into a hash tag
    /// and pile every key of a deployment into one cluster slot.
    pub fn new(prefix: &str) -> Result<Self, InvalidPrefix> {
        let valid = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX_LEN
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if valid {
            Ok(Self {
                prefix: prefix.into(),
            })
        } else {
            Err(InvalidPrefix(prefix.to_owned()))
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn ticket(&self, ticket_hash: &TokenHash) -> String {
        self.hashed("ticket", ticket_hash)
    }

    pub fn session(&self, session_hash: &TokenHash) -> String {
        self.hashed("session", session_hash)
    }

    /// `<prefix>:<kind>:<hex of hash>`, built in one allocation: a ticket key
    /// is built for every mint and every handshake.
    fn hashed(&self, kind: &str, hash: &TokenHash) -> String {
        let mut key = String::with_capacity(self.prefix.len() + kind.len() + 2 + 64);
        key.push_str(&self.prefix);
        key.push(':');
        key.push_str(kind);
        key.push(':');
        hash.push_hex(&mut key);
        key
    }

    /// A rate-limit counter; `subject` is who is counted (a key or user id,
    /// an IP address, an account name).
    pub fn rate_limit(&self, bucket: RateBucket, subject: impl std::fmt::Display) -> String {
        format!("{}:rl:{}:{}", self.prefix, bucket.as_str(), subject)
    }

    /// A user's spent publish quota of one kind.
    pub fn publish_quota(&self, user_id: uuid::Uuid, counter: QuotaCounter) -> String {
        let kind = match counter {
            QuotaCounter::Bytes => "bytes",
            QuotaCounter::NewChannels => "channels",
        };
        format!("{}:quota:{user_id}:{kind}", self.prefix)
    }

    /// The client addresses (an IPv6 address by its /64) an account logged
    /// in from successfully: exempt from the account's hourly failure budget.
    pub fn login_known_addresses(&self, username: &str) -> String {
        format!("{}:login-known:{username}", self.prefix)
    }

    /// The pub/sub channel that carries a channel's live messages to every ws-node.
    pub fn channel_live(&self, channel: &ChannelName) -> String {
        format!("{}:ch:{{{}}}:live", self.prefix, channel.as_str())
    }

    /// The stream that keeps a channel's bounded history.
    pub fn channel_history(&self, channel: &ChannelName) -> String {
        format!("{}:ch:{{{}}}:hist", self.prefix, channel.as_str())
    }

    /// The publish times (ms) of the entries of a channel's history, oldest
    /// first: what trims the history by age.
    pub fn channel_history_times(&self, channel: &ChannelName) -> String {
        format!("{}:ch:{{{}}}:times", self.prefix, channel.as_str())
    }

    /// The hash holding a channel history's epoch and last offset.
    pub fn channel_meta(&self, channel: &ChannelName) -> String {
        format!("{}:ch:{{{}}}:meta", self.prefix, channel.as_str())
    }

    /// Remembers one publisher's idempotency key on a channel for the
    /// idempotency window. The publisher is part of the name so that one user
    /// cannot claim a key another will use and turn their publish into a
    /// silent "duplicate". The user id is a fixed-length UUID, so a key
    /// containing `:` cannot alias another user's.
    pub fn channel_idempotency(
        &self,
        channel: &ChannelName,
        publisher: uuid::Uuid,
        key: &str,
    ) -> String {
        format!(
            "{}:ch:{{{}}}:idem:{publisher}:{key}",
            self.prefix,
            channel.as_str()
        )
    }

    /// The sorted set of a channel's present connections, scored by lease expiry.
    pub fn channel_presence(&self, channel: &ChannelName) -> String {
        format!("{}:ch:{{{}}}:presence", self.prefix, channel.as_str())
    }

    /// The same members as [`channel_presence`](Self::channel_presence), all
    /// scored 0 so that one user's connections can be found by prefix.
    pub fn channel_presence_index(&self, channel: &ChannelName) -> String {
        format!("{}:ch:{{{}}}:presence-idx", self.prefix, channel.as_str())
    }

    /// A live connection's details (node, user, since, channels), for the control API.
    pub fn connection_info(&self, connection: &str) -> String {
        format!("{}:conn:{connection}", self.prefix)
    }

    /// The inverse of [`channel_live`](Self::channel_live), for a subscriber that
    /// receives a message and must find out which channel it belongs to.
    pub fn channel_from_live(&self, live: &str) -> Option<ChannelName> {
        live.strip_prefix(&*self.prefix)?
            .strip_prefix(":ch:{")?
            .strip_suffix("}:live")?
            .parse()
            .ok()
    }

    /// Marks a credential (`session`, `api_key`) or `user` as revoked.
    pub fn revoked(&self, kind: &str, id: uuid::Uuid) -> String {
        format!("{}:revoked:{kind}:{id}", self.prefix)
    }

    /// The sorted set of a user's live connections across all nodes (member:
    /// `<node>:<connection>`, score: lease expiry in ms), for the per-user cap.
    pub fn user_connections(&self, user_id: uuid::Uuid) -> String {
        format!("{}:user-conns:{user_id}", self.prefix)
    }

    /// Cluster-wide control messages: revocations and server-side disconnects.
    pub fn control(&self) -> String {
        format!("{}:control", self.prefix)
    }

    /// A node's canary channel: it publishes there and reads its own
    /// messages back, to prove its subscription delivers.
    pub fn canary(&self, node_id: &str) -> String {
        format!("{}:canary:{node_id}", self.prefix)
    }

    /// On a cluster, a node's canary channel on the shard that owns the
    /// slot of hash tag `tag`: one per master, so canaries prove every shard.
    pub fn shard_canary(&self, node_id: &str, tag: &str) -> String {
        format!("{}:canary:{node_id}:{{{tag}}}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_validated() {
        assert!(RedisKeys::new("tessera").is_ok());
        assert!(RedisKeys::new("test-1a2b:x").is_ok());
        assert!(RedisKeys::new("").is_err());
        assert!(RedisKeys::new("has{brace}").is_err());
        assert!(RedisKeys::new("has space").is_err());
        assert!(RedisKeys::new(&"x".repeat(65)).is_err());
    }

    #[test]
    fn channel_keys_share_a_hash_tag_and_round_trip() {
        let keys = RedisKeys::new("p").expect("valid prefix");
        let channel: ChannelName = "public:lobby".parse().expect("valid channel");
        assert_eq!(keys.channel_live(&channel), "p:ch:{public:lobby}:live");
        assert_eq!(keys.channel_history(&channel), "p:ch:{public:lobby}:hist");
        assert_eq!(keys.channel_meta(&channel), "p:ch:{public:lobby}:meta");
        let user = uuid::Uuid::nil();
        assert_eq!(
            keys.channel_idempotency(&channel, user, "k"),
            format!("p:ch:{{public:lobby}}:idem:{user}:k")
        );
        assert_eq!(
            keys.channel_from_live("p:ch:{public:lobby}:live"),
            Some(channel)
        );
        assert_eq!(keys.channel_from_live("q:ch:{public:lobby}:live"), None);
    }

    #[test]
    fn secrets_are_keyed_by_digest() {
        let keys = RedisKeys::new("p").expect("valid prefix");
        let key = keys.ticket(&TokenHash::of("abc"));
        assert!(key.starts_with("p:ticket:ba7816bf"));
        assert!(!key.contains("abc"));
    }
}

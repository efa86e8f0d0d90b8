//! Channels: their names, and what crosses Redis for them.
//!
//! A channel name is `namespace:name`. The namespace selects the rules
//! (who may subscribe or publish, whether history is kept); the rules themselves
//! belong to the services, the syntax is shared so both accept the same names.
//!
//! * [`frame`]: the message frame clients receive (and the presence events),
//!   written and read here only, in Rust and in the Lua scripts alike.
//! * [`publish`](mod@publish): one Lua script appends a message to the channel's bounded
//!   history, assigns it the next offset and publishes the ready-to-send frame
//!   on the channel's live pub/sub name, atomically. Because the live payload
//!   *is* the frame a client receives, a ws-node fans it out without parsing or
//!   re-serialising it.
//! * [`history`]: reading a channel's history after an offset, a page at a time.

pub mod frame;
pub mod history;
pub mod publish;

pub use history::{HistorySince, PageSize, current_position, history_page};
pub use publish::{
    IDEMPOTENCY_WINDOW, MAX_IDEMPOTENCY_KEY_LEN, PublishError, PublishRequest, Published,
    Publisher, publish, publish_many, valid_idempotency_key,
};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Longest channel name accepted, namespace included.
pub const MAX_CHANNEL_LEN: usize = 128;
/// Longest namespace accepted.
pub const MAX_NAMESPACE_LEN: usize = 32;

/// A syntactically valid channel name: `namespace:name`.
///
/// The namespace is lowercase letters, digits, `-` and `_`; the name may use
/// letters, digits and `_ - . : @ = +`. Braces are excluded because they would
/// break the Redis Cluster hash tag that keeps a channel's keys together.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ChannelName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid channel name: expected `namespace:name`, at most {MAX_CHANNEL_LEN} characters, namespace of [a-z0-9_-], name of [A-Za-z0-9_.:@=+-]"
)]
pub struct InvalidChannel;

impl ChannelName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the first `:`.
    pub fn namespace(&self) -> &str {
        self.0.split_once(':').map_or("", |(ns, _)| ns)
    }

    /// The part after the first `:`.
    pub fn name(&self) -> &str {
        self.0.split_once(':').map_or("", |(_, name)| name)
    }

    /// The private channel of one user, which every connection of that user joins.
    pub fn for_user(user_id: uuid::Uuid) -> Self {
        Self(format!("user:{user_id}"))
    }
}

impl FromStr for ChannelName {
    type Err = InvalidChannel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (namespace, name) = s.split_once(':').ok_or(InvalidChannel)?;
        let namespace_ok = !namespace.is_empty()
            && namespace.len() <= MAX_NAMESPACE_LEN
            && namespace
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        let name_ok = !name.is_empty()
            && s.len() <= MAX_CHANNEL_LEN
            && name.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'=' | b'+')
            });
        if namespace_ok && name_ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidChannel)
        }
    }
}

impl TryFrom<String> for ChannelName {
    type Error = InvalidChannel;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ChannelName> for String {
    fn from(c: ChannelName) -> Self {
        c.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// How much history a channel keeps. Both bounds apply; whichever trims more wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Most entries kept (trimmed approximately, so slightly more may remain).
    pub max_len: u64,
    /// Oldest entry kept.
    pub max_age: Duration,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            max_len: 1000,
            max_age: Duration::from_secs(600),
        }
    }
}

/// Where a published message landed in its channel's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Identifies one incarnation of the history; a new epoch means earlier offsets are gone.
    pub epoch: String,
    /// The message's position, counting from 1 within the epoch.
    pub offset: u64,
}

/// Milliseconds for Redis, at least 1 (a `PX` or `PEXPIRE` of 0 is refused).
fn millis(d: Duration) -> u64 {
    crate::millis(d).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_valid_names() {
        let c: ChannelName = "public:lobby".parse().expect("valid");
        assert_eq!(c.namespace(), "public");
        assert_eq!(c.name(), "lobby");
        let c: ChannelName = "user:8f7e-aa:x@y.z=+".parse().expect("valid");
        assert_eq!(c.name(), "8f7e-aa:x@y.z=+");
    }

    #[test]
    fn rejects_invalid_names() {
        for bad in [
            "",
            "lobby",
            ":x",
            "public:",
            "Public:x",
            "pub lic:x",
            "public:a b",
            "public:{x}",
            "public:\u{e9}",
            "public:x\n",
        ] {
            assert!(
                bad.parse::<ChannelName>().is_err(),
                "{bad:?} should be refused"
            );
        }
        let long = format!("public:{}", "x".repeat(MAX_CHANNEL_LEN));
        assert!(long.parse::<ChannelName>().is_err());
    }
}

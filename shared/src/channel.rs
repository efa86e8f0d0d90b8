//! Channel names and publishing a message to a channel.
//!
//! A channel name is `namespace:name`. The namespace selects the rules
//! (who may subscribe or publish, whether history is kept); the rules themselves
//! belong to the services, the syntax is shared so both accept the same names.
//!
//! Publishing is one Lua script that appends the message to the channel's
//! bounded history stream, assigns it the next offset, and publishes the
//! ready-to-send client frame on the channel's live pub/sub name, atomically.
//! Because the live payload *is* the frame a client receives, a ws-node fans it
//! out without parsing or re-serialising it.

use crate::keys::RedisKeys;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;
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

/// How long a channel's epoch and offset counter outlive its last publish. Far
/// longer than any history age, so a client that saw the last message of a
/// quiet channel can still be told "nothing missed" rather than "resync".
const META_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Appends to history, bumps the offset and publishes the frame, in one step.
///
/// KEYS: history stream, meta hash, live channel (declared so Cluster routes the
/// script to the slot of the channel's hash tag).
/// ARGV: channel as a JSON string, data as JSON, max length, max age in ms,
/// a candidate epoch (used only when the channel has none yet), meta TTL in ms.
const PUBLISH_WITH_HISTORY: &str = r#"
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[5]
  redis.call('HSET', KEYS[2], 'epoch', epoch)
end
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 's', seq, 'd', ARGV[2])
local now = redis.call('TIME')
local oldest = (tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)) - tonumber(ARGV[4])
if oldest > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', oldest)
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local frame = '{"type":"message","channel":' .. ARGV[1] .. ',"epoch":"' .. epoch ..
  '","offset":' .. seq .. ',"data":' .. ARGV[2] .. '}'
redis.call('PUBLISH', KEYS[3], frame)
return {epoch, seq}
"#;

static PUBLISH_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(PUBLISH_WITH_HISTORY));

/// The client frame for a message on a channel without history.
pub fn message_frame(channel: &ChannelName, data: &RawValue) -> String {
    #[derive(Serialize)]
    struct Frame<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        data: &'a RawValue,
    }
    serde_json::to_string(&Frame {
        kind: "message",
        channel: channel.as_str(),
        data,
    })
    .unwrap_or_default()
}

/// The client frame for a message replayed from history (same bytes the live
/// path produced, so a client cannot tell a recovered message from a live one).
pub fn history_frame(channel: &ChannelName, position: &StreamPosition, data: &str) -> String {
    let channel_json = serde_json::to_string(channel.as_str()).unwrap_or_default();
    format!(
        r#"{{"type":"message","channel":{channel_json},"epoch":"{}","offset":{},"data":{data}}}"#,
        position.epoch, position.offset
    )
}

/// Publishes `data` to `channel` through Redis, reaching every ws-node.
///
/// With `history`, the message is appended to the channel's stream and carries
/// an epoch and offset; returns its position. Without, it is only published.
pub async fn publish(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &RedisKeys,
    channel: &ChannelName,
    data: &RawValue,
    history: Option<HistoryLimits>,
) -> redis::RedisResult<Option<StreamPosition>> {
    let Some(limits) = history else {
        let frame = message_frame(channel, data);
        redis::cmd("PUBLISH")
            .arg(keys.channel_live(channel))
            .arg(frame)
            .query_async::<()>(conn)
            .await?;
        return Ok(None);
    };
    let channel_json = serde_json::to_string(channel.as_str()).unwrap_or_default();
    let candidate_epoch = new_epoch();
    let (epoch, offset): (String, u64) = PUBLISH_SCRIPT
        .key(keys.channel_history(channel))
        .key(keys.channel_meta(channel))
        .key(keys.channel_live(channel))
        .arg(channel_json)
        .arg(data.get())
        .arg(limits.max_len)
        .arg(
            u64::try_from(limits.max_age.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        )
        .arg(candidate_epoch)
        .arg(u64::try_from(META_TTL.as_millis()).unwrap_or(u64::MAX))
        .invoke_async(conn)
        .await?;
    Ok(Some(StreamPosition { epoch, offset }))
}

/// A short random epoch id; only needs to differ between incarnations of one channel.
fn new_epoch() -> String {
    let bytes: [u8; 6] = rand::random();
    hex::encode(bytes)
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

    #[test]
    fn frames_are_the_documented_json() {
        let c: ChannelName = "public:a".parse().expect("valid");
        let data = RawValue::from_string(r#"{"n":1}"#.into()).expect("json");
        let live: serde_json::Value =
            serde_json::from_str(&message_frame(&c, &data)).expect("json");
        assert_eq!(
            live,
            serde_json::json!({"type":"message","channel":"public:a","data":{"n":1}})
        );
        let pos = StreamPosition {
            epoch: "ab12".into(),
            offset: 7,
        };
        let replay: serde_json::Value =
            serde_json::from_str(&history_frame(&c, &pos, r#"{"n":1}"#)).expect("json");
        assert_eq!(
            replay,
            serde_json::json!({"type":"message","channel":"public:a","epoch":"ab12","offset":7,"data":{"n":1}})
        );
    }
}

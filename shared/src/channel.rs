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
/// script to the slot of the channel's hash tag), and optionally the
/// idempotency key of this publish.
/// ARGV: channel as a JSON string, data as JSON, max length, max age in ms,
/// a candidate epoch (used only when the channel has none yet), meta TTL in ms,
/// idempotency window in ms.
/// Returns `{epoch, offset, duplicate}`; a repeated idempotency key returns the
/// first publish's position with `duplicate = 1` and publishes nothing.
const PUBLISH_WITH_HISTORY: &str = r#"
if KEYS[4] then
  local seen = redis.call('GET', KEYS[4])
  if seen then
    local sep = string.find(seen, ':', 1, true)
    return {string.sub(seen, 1, sep - 1), tonumber(string.sub(seen, sep + 1)), 1}
  end
end
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
if KEYS[4] then
  redis.call('SET', KEYS[4], epoch .. ':' .. seq, 'PX', ARGV[7])
end
local frame = '{"type":"message","channel":' .. ARGV[1] .. ',"epoch":"' .. epoch ..
  '","offset":' .. seq .. ',"data":' .. ARGV[2] .. '}'
redis.call('PUBLISH', KEYS[3], frame)
return {epoch, seq, 0}
"#;

/// How long an idempotency key is remembered: a retry within this window is
/// recognised and not delivered twice.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(600);

/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 64;

/// Whether an idempotency key is acceptable: 1-64 printable ASCII characters.
pub fn valid_idempotency_key(key: &str) -> bool {
    (1..=MAX_IDEMPOTENCY_KEY_LEN).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

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

/// The outcome of a publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// Where the message sits in the channel's history (`None` without history).
    pub position: Option<StreamPosition>,
    /// The idempotency key was seen before: nothing was published this time,
    /// and `position` is the first publish's.
    pub duplicate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("idempotency keys need a channel with history")]
    IdempotencyWithoutHistory,
    #[error("idempotency key must be 1-64 printable ASCII characters")]
    InvalidIdempotencyKey,
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// Publishes `data` to `channel` through Redis, reaching every ws-node.
///
/// With `history`, the message is appended to the channel's stream and carries
/// an epoch and offset; without, it is only published. An `idempotency_key`
/// (history channels only) makes retries safe: a key seen within
/// [`IDEMPOTENCY_WINDOW`] is not published again.
pub async fn publish(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &RedisKeys,
    channel: &ChannelName,
    data: &RawValue,
    history: Option<HistoryLimits>,
    idempotency_key: Option<&str>,
) -> Result<Published, PublishError> {
    let Some(limits) = history else {
        if idempotency_key.is_some() {
            return Err(PublishError::IdempotencyWithoutHistory);
        }
        let frame = message_frame(channel, data);
        redis::cmd("PUBLISH")
            .arg(keys.channel_live(channel))
            .arg(frame)
            .query_async::<()>(conn)
            .await?;
        return Ok(Published {
            position: None,
            duplicate: false,
        });
    };
    let channel_json = serde_json::to_string(channel.as_str()).unwrap_or_default();
    let mut invocation = PUBLISH_SCRIPT.prepare_invoke();
    invocation
        .key(keys.channel_history(channel))
        .key(keys.channel_meta(channel))
        .key(keys.channel_live(channel));
    if let Some(key) = idempotency_key {
        if !valid_idempotency_key(key) {
            return Err(PublishError::InvalidIdempotencyKey);
        }
        invocation.key(keys.channel_idempotency(channel, key));
    }
    invocation
        .arg(channel_json)
        .arg(data.get())
        .arg(limits.max_len)
        .arg(millis(limits.max_age))
        .arg(new_epoch())
        .arg(millis(META_TTL))
        .arg(millis(IDEMPOTENCY_WINDOW));
    let (epoch, offset, duplicate): (String, u64, u8) = invocation.invoke_async(conn).await?;
    Ok(Published {
        position: Some(StreamPosition { epoch, offset }),
        duplicate: duplicate == 1,
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Reads a channel's history after `since_offset`, atomically with its
/// current epoch and offset: the oldest `ARGV[3]` (page) of the messages
/// after it, and the stream id of the last one returned. A gap of more than
/// `ARGV[2]` (cap) messages is reported as not covered (no messages).
/// `ARGV[4]`, if not empty, is the stream id the previous page ended at: the
/// page is then read forward from there (O(page), not O(gap)).
const HISTORY_SINCE: &str = r#"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
if not epoch then
  return {'', 0, {}, ''}
end
local missing = seq - tonumber(ARGV[1])
local page = tonumber(ARGV[3])
if missing <= 0 or (ARGV[4] == '' and missing > tonumber(ARGV[2])) then
  return {epoch, seq, {}, ''}
end
local out = {}
local last_id = ''
local function take(entry)
  local fields = entry[2]
  local s, d
  for j = 1, #fields, 2 do
    if fields[j] == 's' then s = fields[j + 1] elseif fields[j] == 'd' then d = fields[j + 1] end
  end
  table.insert(out, s)
  table.insert(out, d)
  last_id = entry[1]
end
if ARGV[4] ~= '' then
  local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[4], '+', 'COUNT', page)
  for i = 1, #entries do take(entries[i]) end
else
  local entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', missing)
  local oldest_last = math.max(1, #entries - page + 1)
  for i = #entries, oldest_last, -1 do take(entries[i]) end
end
return {epoch, seq, out, last_id}
"#;

static HISTORY_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(HISTORY_SINCE));

/// What a channel's history holds after a given offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistorySince {
    /// The channel's current epoch (`None`: the channel has no history at all,
    /// e.g. it was never published to, or Redis lost its data).
    pub epoch: Option<String>,
    /// The channel's current (latest) offset.
    pub offset: u64,
    /// Messages after the requested offset, oldest first, as `(offset, data)`.
    pub messages: Vec<(u64, String)>,
    /// The stream id of the last message returned (where the next page of a
    /// [`history_page`] read continues); `None` if none was returned.
    pub last_id: Option<String>,
}

impl HistorySince {
    /// Whether the messages are exactly the first `page` after `since` in
    /// `epoch` (or all of them, if fewer remain): a page read by
    /// [`history_page`] with nothing trimmed away.
    pub fn covers_page(&self, epoch: &str, since: u64, page: u64) -> bool {
        if self.epoch.as_deref() != Some(epoch) || since > self.offset {
            return false;
        }
        let expected = (self.offset - since).min(page);
        self.messages.len() as u64 == expected
            && self
                .messages
                .iter()
                .zip(since + 1..)
                .all(|((offset, _), want)| *offset == want)
    }
}

/// Reads a channel's history after `since_offset`, with its current epoch
/// and offset: the oldest `page` messages after it. A replay is read a page
/// at a time, so memory holds one page, not the whole gap (up to `cap`
/// messages of up to 64 KiB each; a larger gap reads as not covered). Pass
/// the previous page's `last_id` as `after_id` to continue a replay: the read
/// then starts right there instead of scanning the gap again.
pub async fn history_page(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &RedisKeys,
    channel: &ChannelName,
    since_offset: u64,
    cap: u64,
    page: u64,
    after_id: Option<&str>,
) -> redis::RedisResult<HistorySince> {
    let (epoch, offset, flat, last_id): (String, u64, Vec<String>, String) = HISTORY_SCRIPT
        .key(keys.channel_history(channel))
        .key(keys.channel_meta(channel))
        .arg(since_offset)
        .arg(cap)
        .arg(page.max(1))
        .arg(after_id.unwrap_or(""))
        .invoke_async(conn)
        .await?;
    let messages = flat
        .chunks_exact(2)
        .filter_map(|pair| Some((pair[0].parse().ok()?, pair[1].clone())))
        .collect();
    Ok(HistorySince {
        epoch: (!epoch.is_empty()).then_some(epoch),
        offset,
        messages,
        last_id: (!last_id.is_empty()).then_some(last_id),
    })
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
    fn coverage_needs_the_same_epoch_and_every_offset() {
        let history = HistorySince {
            epoch: Some("e".into()),
            offset: 5,
            messages: vec![(4, "4".into()), (5, "5".into())],
            last_id: None,
        };
        assert!(history.covers_page("e", 3, u64::MAX));
        assert!(!history.covers_page("other", 3, u64::MAX));
        assert!(
            !history.covers_page("e", 2, u64::MAX),
            "offset 3 was trimmed"
        );
        assert!(
            !history.covers_page("e", 6, u64::MAX),
            "an offset from the future"
        );
        let caught_up = HistorySince {
            messages: vec![],
            ..history
        };
        assert!(caught_up.covers_page("e", 5, u64::MAX));
        // A page: the oldest two of four missing messages.
        let page = HistorySince {
            epoch: Some("e".into()),
            offset: 9,
            messages: vec![(6, "6".into()), (7, "7".into())],
            last_id: None,
        };
        assert!(page.covers_page("e", 5, 2));
        assert!(!page.covers_page("e", 5, u64::MAX), "not all of them");
        assert!(!page.covers_page("e", 5, 3), "a page of 3 would hold 8 too");
        assert!(!page.covers_page("e", 4, 2), "offset 5 was trimmed");
        assert!(valid_idempotency_key("order-17"));
        assert!(!valid_idempotency_key(""));
        assert!(!valid_idempotency_key("has space"));
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

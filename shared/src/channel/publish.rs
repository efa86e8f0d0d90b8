//! Publishing a message to a channel through Redis, reaching every ws-node.

use super::frame;
use super::{ChannelName, HistoryLimits, StreamPosition, millis};
use crate::keys::RedisKeys;
use serde_json::value::RawValue;
use std::sync::LazyLock;
use std::time::Duration;

/// How long a channel's epoch and offset counter outlive its last publish. Far
/// longer than any history age, so a client that saw the last message of a
/// quiet channel can still be told "nothing missed" rather than "resync".
const META_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Appends to history, bumps the offset and publishes the frame, in one step
/// (preceded by [`frame::MESSAGE_FRAME_LUA`], which builds the frame).
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
redis.call('PUBLISH', KEYS[3], message_frame(ARGV[1], epoch, seq, ARGV[2]))
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

static PUBLISH_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{}{PUBLISH_WITH_HISTORY}",
        frame::MESSAGE_FRAME_LUA
    ))
});

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
        let frame = frame::message(channel, None, data.get());
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
    let channel_json = frame::channel_json(channel);
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

/// A short random epoch id; only needs to differ between incarnations of one channel.
fn new_epoch() -> String {
    let bytes: [u8; 6] = rand::random();
    hex::encode(bytes)
}

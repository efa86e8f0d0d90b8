//! Publishing a message to a channel through Redis, reaching every ws-node.

use super::frame;
use super::{ChannelName, HistoryLimits, StreamPosition, millis};
use crate::json::{MAX_JSON_DEPTH, depth_within};
use crate::keys::RedisKeys;
use crate::redis_conn::{PubSubKind, Redis};
use serde_json::value::RawValue;
use std::sync::LazyLock;
use std::time::Duration;

/// The history's layout version, kept in its meta hash. A history of another
/// version (written before entries were keyed by offset, "1"; or before they
/// kept their sender, "2") is replaced by a new epoch at the next publish,
/// and reads as not covering anything meanwhile.
pub(super) const HISTORY_FORMAT: &str = "3";

/// Appends to history, bumps the offset and publishes the frame, in one step
/// (preceded by [`frame::MESSAGE_FRAME_LUA`], which builds the frame).
///
/// The history is a stream whose entry ids are `<offset>-0`, so that a
/// reader seeks to an offset directly (`XRANGE <offset>-0`) whatever the gap,
/// and a list of the entries' publish times, which trims it by age: both are
/// trimmed to the same oldest offset. All three keys (and the meta hash) live
/// as long as the history's maximum age after the last publish: a channel
/// quiet for longer has no history, and its epoch goes with it.
///
/// KEYS: history stream, meta hash, live channel (declared so Cluster routes
/// the script to the slot of the channel's hash tag), times list, and
/// optionally the idempotency key of this publish (scoped by its publisher).
/// ARGV: channel as a JSON string, data as JSON, max length, max age in ms,
/// a candidate epoch (used only when the channel has none yet), idempotency
/// window in ms, history format version, sender as JSON (the frame's `from`,
/// kept in the entry's field `f` beside the data's `d`), the publish command
/// (`PUBLISH`, or `SPUBLISH` on a cluster: see [`PubSubKind`]).
/// Returns `{epoch, offset, duplicate}`; a repeated idempotency key returns the
/// first publish's position with `duplicate = 1` and publishes nothing.
const PUBLISH_WITH_HISTORY: &str = r#"
if KEYS[5] then
  local seen = redis.call('GET', KEYS[5])
  if seen then
    local sep = string.find(seen, ':', 1, true)
    return {string.sub(seen, 1, sep - 1), tonumber(string.sub(seen, sep + 1)), 1}
  end
end
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch or redis.call('HGET', KEYS[2], 'v') ~= ARGV[7] then
  -- A new incarnation: whatever an earlier one left behind is not its history.
  epoch = ARGV[5]
  redis.call('DEL', KEYS[1], KEYS[4], KEYS[2])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'v', ARGV[7])
end
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('XADD', KEYS[1], seq .. '-0', 'd', ARGV[2], 'f', ARGV[8])
redis.call('RPUSH', KEYS[4], now_ms)
redis.call('LTRIM', KEYS[4], -tonumber(ARGV[3]), -1)
-- Entries past the maximum age leave from the head; each leaves once.
local oldest = now_ms - tonumber(ARGV[4])
while true do
  local first = redis.call('LINDEX', KEYS[4], 0)
  if not first or tonumber(first) >= oldest then break end
  redis.call('LPOP', KEYS[4])
end
local kept = redis.call('LLEN', KEYS[4])
redis.call('XTRIM', KEYS[1], 'MINID', (seq - kept + 1) .. '-0')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[4], ARGV[4])
if KEYS[5] then
  redis.call('SET', KEYS[5], epoch .. ':' .. seq, 'PX', ARGV[6])
end
redis.call(ARGV[9], KEYS[3], message_frame(ARGV[1], epoch, seq, ARGV[8], ARGV[2]))
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

/// Who publishes: the user behind the connection or API key, as the server
/// authenticated them (never what the client says). Idempotency keys are
/// scoped by it, and every message frame carries it as `from`
/// ([`frame::sender`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publisher {
    pub user_id: uuid::Uuid,
    pub username: String,
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
    /// `data` nests arrays and objects deeper than [`MAX_JSON_DEPTH`].
    #[error("`data` nests arrays and objects deeper than {MAX_JSON_DEPTH} levels")]
    TooDeep,
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// One message to publish: what [`publish`] takes, for [`publish_many`].
#[derive(Clone, Copy, Debug)]
pub struct PublishRequest<'a> {
    pub channel: &'a ChannelName,
    pub data: &'a RawValue,
    /// The channel's history limits, when its namespace keeps history.
    pub history: Option<HistoryLimits>,
    pub idempotency_key: Option<&'a str>,
}

/// Publishes `data` to `channel` through Redis, reaching every ws-node.
///
/// With `history`, the message is appended to the channel's stream and carries
/// an epoch and offset; without, it is only published. An `idempotency_key`
/// (history channels only) makes retries safe: a key the same `publisher`
/// used on this channel within [`IDEMPOTENCY_WINDOW`] is not published again
/// (another publisher's identical key is theirs, and does not interfere).
/// `data` nested deeper than [`MAX_JSON_DEPTH`] is refused, for both paths.
pub async fn publish(
    conn: &mut Redis,
    keys: &RedisKeys,
    channel: &ChannelName,
    data: &RawValue,
    history: Option<HistoryLimits>,
    publisher: &Publisher,
    idempotency_key: Option<&str>,
) -> Result<Published, PublishError> {
    let request = PublishRequest {
        channel,
        data,
        history,
        idempotency_key,
    };
    publish_many(conn, keys, publisher, &[request])
        .await
        .pop()
        .unwrap_or_else(|| unreachable!("one result per request"))
}

/// Publishes several messages of one `publisher` in one round trip to
/// Redis, in order: each as [`publish`] would, with one result per request.
///
/// A client that sends messages faster than one round trip each (a backend
/// publishing over one socket, or any client while the machine is loaded)
/// would otherwise see its messages queue behind each other's round trips;
/// a pipeline carries whatever has arrived meanwhile, and Redis runs the
/// commands in the order sent, so each channel's messages keep their order.
pub async fn publish_many(
    conn: &mut Redis,
    keys: &RedisKeys,
    publisher: &Publisher,
    requests: &[PublishRequest<'_>],
) -> Vec<Result<Published, PublishError>> {
    let sender = frame::sender(publisher);
    let kind = conn.pubsub_kind();
    let mut results: Vec<Option<Result<Published, PublishError>>> = Vec::new();
    let mut commands = Vec::new();
    for request in requests {
        match publish_command(keys, request, publisher, &sender, kind) {
            Ok(command) => {
                results.push(None);
                commands.push((results.len() - 1, command));
            }
            Err(e) => results.push(Some(Err(e))),
        }
    }
    let mut pending = commands;
    // Twice at most: a script missing from Redis's cache (after a restart or
    // SCRIPT FLUSH) fails unrun; it is loaded, and what failed runs again.
    for attempt in 0..2 {
        if pending.is_empty() {
            break;
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        if attempt > 0 {
            pipe.load_script(&PUBLISH_SCRIPT).ignore();
        }
        for (_, command) in &pending {
            pipe.add_command(command.cmd.clone());
        }
        let replies: Vec<redis::RedisResult<redis::Value>> = match pipe.query_async(conn).await {
            Ok(replies) => replies,
            Err(e) => {
                for (index, _) in pending.drain(..) {
                    results[index] = Some(Err(PublishError::Redis(e.clone())));
                }
                break;
            }
        };
        let mut retry = Vec::new();
        for ((index, command), reply) in pending.into_iter().zip(replies) {
            match reply {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                        && attempt == 0 =>
                {
                    retry.push((index, command));
                }
                reply => results[index] = Some(command.published(reply)),
            }
        }
        pending = retry;
    }
    results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| {
                Err(PublishError::Redis(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "Redis sent fewer replies than commands",
                ))))
            })
        })
        .collect()
}

/// A publish's Redis command, and what its reply means.
struct PublishCommand {
    cmd: redis::Cmd,
    with_history: bool,
}

impl PublishCommand {
    fn published(
        &self,
        reply: redis::RedisResult<redis::Value>,
    ) -> Result<Published, PublishError> {
        let reply = reply?;
        if !self.with_history {
            return Ok(Published {
                position: None,
                duplicate: false,
            });
        }
        let (epoch, offset, duplicate): (String, u64, u8) =
            redis::from_redis_value(reply).map_err(redis::RedisError::from)?;
        Ok(Published {
            position: Some(StreamPosition { epoch, offset }),
            duplicate: duplicate == 1,
        })
    }
}

/// Checks `request` and builds its command: a bare (S)PUBLISH of the frame
/// without history, else the history script.
fn publish_command(
    keys: &RedisKeys,
    request: &PublishRequest<'_>,
    publisher: &Publisher,
    sender: &str,
    kind: PubSubKind,
) -> Result<PublishCommand, PublishError> {
    let PublishRequest {
        channel,
        data,
        history,
        idempotency_key,
    } = *request;
    if !depth_within(data.get(), MAX_JSON_DEPTH) {
        return Err(PublishError::TooDeep);
    }
    let Some(limits) = history else {
        if idempotency_key.is_some() {
            return Err(PublishError::IdempotencyWithoutHistory);
        }
        let mut cmd = redis::cmd(kind.publish_command());
        cmd.arg(keys.channel_live(channel))
            .arg(frame::message(channel, None, sender, data.get()));
        return Ok(PublishCommand {
            cmd,
            with_history: false,
        });
    };
    let mut script_keys = vec![
        keys.channel_history(channel),
        keys.channel_meta(channel),
        keys.channel_live(channel),
        keys.channel_history_times(channel),
    ];
    if let Some(key) = idempotency_key {
        if !valid_idempotency_key(key) {
            return Err(PublishError::InvalidIdempotencyKey);
        }
        script_keys.push(keys.channel_idempotency(channel, publisher.user_id, key));
    }
    // EVALSHA, as `redis::Script` sends it; a pipeline cannot fall back to
    // EVAL by itself, so `publish_many` loads the script on NOSCRIPT.
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(PUBLISH_SCRIPT.get_hash())
        .arg(script_keys.len())
        .arg(&script_keys)
        .arg(frame::channel_json(channel))
        .arg(data.get())
        .arg(limits.max_len)
        .arg(millis(limits.max_age))
        .arg(new_epoch())
        .arg(millis(IDEMPOTENCY_WINDOW))
        .arg(HISTORY_FORMAT)
        .arg(sender)
        .arg(kind.publish_command());
    Ok(PublishCommand {
        cmd,
        with_history: true,
    })
}

/// A short random epoch id; only needs to differ between incarnations of one channel.
fn new_epoch() -> String {
    let bytes: [u8; 6] = rand::random();
    hex::encode(bytes)
}

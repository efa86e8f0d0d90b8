//! Presence: who is in a channel, with join and leave events.
//!
//! Each present connection is a member `<user id>|<username>|<node>:<conn>` of
//! two sorted sets under the channel's hash tag: one scored by lease expiry
//! (so a dead node's entries lapse by themselves), one scored 0 (so one user's
//! connections can be found by prefix). A user is one member however many tabs
//! they have: `join` goes out when their first connection arrives anywhere in
//! the cluster, `leave` when their last one goes (or lapses). All of it happens
//! in Lua scripts, so concurrent joins and leaves on different nodes agree.

use crate::protocol::frames::{Member, MemberUser};
use shared::channel::ChannelName;
use shared::channel::frame::{self, PRESENCE_FRAME_LUA, PresenceEvent};
use shared::keys::RedisKeys;
use shared::redis_conn::Redis;
use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;
use uuid::Uuid;

/// Whether one user (member prefix `prefix`) has a member whose lease (its
/// score in `KEYS[1]`) runs past `now` (ms). Reads the user's part of the
/// index a page at a time, each page starting after the last member read, and
/// stops at the first live one: a join or a leave costs a few commands however
/// many connections the user has in the channel. (Counting them all made a
/// join or leave cost one lookup per connection of the user: the benchmark's
/// fan-out to 18 000, one user with thousands of sockets in one channel, kept
/// Redis busy long after the sockets closed.) Lapsed members, the only ones
/// skipped, are removed by the sweeps.
const HAS_LIVE: &str = r"
local function has_live(prefix, now)
  local from, to = '[' .. prefix, '[' .. prefix .. '\255'
  while true do
    local page = redis.call('ZRANGEBYLEX', KEYS[2], from, to, 'LIMIT', 0, 32)
    for _, m in ipairs(page) do
      local score = redis.call('ZSCORE', KEYS[1], m)
      if score and tonumber(score) > now then return true end
    end
    if #page < 32 then return false end
    from = '(' .. page[#page]
  end
end
";

/// KEYS: presence, index, live channel. ARGV: user prefix, now ms, member,
/// expiry ms, key TTL ms, join frame, publish command. Publishes the frame if
/// the user was absent.
static JOIN: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r"{HAS_LIVE}
local present = has_live(ARGV[1], tonumber(ARGV[2]))
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[2], 0, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
if not present then redis.call(ARGV[7], KEYS[3], ARGV[6]) end
return present and 1 or 0
"
    ))
});

/// KEYS: presence, index, live channel. ARGV: user prefix, now ms, member,
/// leave frame, publish command. Publishes the frame if that was the user's
/// last connection.
static LEAVE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r"{HAS_LIVE}
local removed = redis.call('ZREM', KEYS[1], ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[3])
if removed == 1 and not has_live(ARGV[1], tonumber(ARGV[2])) then
  redis.call(ARGV[5], KEYS[3], ARGV[4])
end
return removed
"
    ))
});

/// KEYS: presence, index, live channel. ARGV: now ms, channel as JSON string,
/// publish command.
/// Removes lapsed members; publishes `leave` for users left with none.
static SWEEP: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r#"{HAS_LIVE}{PRESENCE_FRAME_LUA}
local now = tonumber(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
local users = {{}}
for _, m in ipairs(expired) do
  redis.call('ZREM', KEYS[1], m)
  redis.call('ZREM', KEYS[2], m)
  local id, name = string.match(m, '^([^|]+)|([^|]*)|')
  if id then users[id] = name end
end
for id, name in pairs(users) do
  if not has_live(id .. '|', now) then
    redis.call(ARGV[3], KEYS[3], presence_frame('leave', ARGV[2], id, name))
  end
end
return #expired
"#
    ))
});

/// One connection's presence in one channel.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Membership {
    pub channel: ChannelName,
    /// `<user id>|<username>|<node>:<conn>`.
    pub member: String,
}

impl Membership {
    pub fn new(channel: ChannelName, user_id: Uuid, username: &str, connection: &str) -> Self {
        Self {
            channel,
            member: format!("{user_id}|{username}|{connection}"),
        }
    }

    fn user_prefix(&self) -> &str {
        // The member starts with the 36-character user id and a `|`.
        &self.member[..37.min(self.member.len())]
    }
}

/// The `join` or `leave` frame of `membership`'s user.
fn event_frame(event: PresenceEvent, membership: &Membership) -> String {
    let mut parts = membership.member.splitn(3, '|');
    let id = parts.next().unwrap_or_default();
    let username = parts.next().unwrap_or_default();
    frame::presence(event, &membership.channel, id, username)
}

/// Enters the channel; announces `join` if the user was not there yet.
pub async fn join(
    redis: &mut Redis,
    keys: &RedisKeys,
    membership: &Membership,
    lease: Duration,
) -> redis::RedisResult<()> {
    let now = shared::unix_now_ms();
    JOIN.key(keys.channel_presence(&membership.channel))
        .key(keys.channel_presence_index(&membership.channel))
        .key(keys.channel_live(&membership.channel))
        .arg(membership.user_prefix())
        .arg(now)
        .arg(&membership.member)
        .arg(now + shared::millis(lease))
        .arg(shared::millis(lease) * 2)
        .arg(event_frame(PresenceEvent::Join, membership))
        .arg(redis.pubsub_kind().publish_command())
        .invoke_async::<i64>(redis)
        .await
        .map(|_| ())
}

/// Leaves the channel; announces `leave` if that was the user's last connection.
pub async fn leave(
    redis: &mut Redis,
    keys: &RedisKeys,
    membership: &Membership,
) -> redis::RedisResult<()> {
    LEAVE
        .key(keys.channel_presence(&membership.channel))
        .key(keys.channel_presence_index(&membership.channel))
        .key(keys.channel_live(&membership.channel))
        .arg(membership.user_prefix())
        .arg(shared::unix_now_ms())
        .arg(&membership.member)
        .arg(event_frame(PresenceEvent::Leave, membership))
        .arg(redis.pubsub_kind().publish_command())
        .invoke_async::<i64>(redis)
        .await
        .map(|_| ())
}

/// Extends the leases of this node's memberships. Returns those that were
/// gone from Redis (it lost its data, or was away longer than a lease): the
/// caller joins them again, which also tells the channel they are back.
pub async fn renew(
    redis: &mut Redis,
    keys: &RedisKeys,
    memberships: &[Membership],
    lease: Duration,
) -> redis::RedisResult<Vec<Membership>> {
    let expiry = shared::unix_now_ms() + shared::millis(lease);
    let mut missing = Vec::new();
    for chunk in memberships.chunks(500) {
        let mut pipe = redis::pipe();
        for m in chunk {
            let presence = keys.channel_presence(&m.channel);
            // XX: a member that left after the caller's snapshot stays gone;
            // CH: the reply says whether the member was still there.
            pipe.cmd("ZADD")
                .arg(&presence)
                .arg("XX")
                .arg("CH")
                .arg(expiry)
                .arg(&m.member);
            pipe.cmd("PEXPIRE")
                .arg(&presence)
                .arg(shared::millis(lease) * 2)
                .ignore();
            pipe.cmd("PEXPIRE")
                .arg(keys.channel_presence_index(&m.channel))
                .arg(shared::millis(lease) * 2)
                .ignore();
        }
        let renewed: Vec<i64> = pipe.query_async(redis).await?;
        missing.extend(
            chunk
                .iter()
                .zip(renewed)
                .filter(|(_, renewed)| *renewed == 0)
                .map(|(m, _)| m.clone()),
        );
    }
    Ok(missing)
}

/// Removes lapsed members of a channel (e.g. of a node that died) and
/// announces `leave` for users who have no connection left.
pub async fn sweep(
    redis: &mut Redis,
    keys: &RedisKeys,
    channel: &ChannelName,
) -> redis::RedisResult<u64> {
    SWEEP
        .key(keys.channel_presence(channel))
        .key(keys.channel_presence_index(channel))
        .key(keys.channel_live(channel))
        .arg(shared::unix_now_ms())
        .arg(frame::channel_json(channel))
        .arg(redis.pubsub_kind().publish_command())
        .invoke_async(redis)
        .await
}

/// Who is in the channel now (lapsed entries excluded), one entry per user.
pub async fn members(
    redis: &mut Redis,
    keys: &RedisKeys,
    channel: &ChannelName,
) -> redis::RedisResult<Vec<Member>> {
    let raw: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(keys.channel_presence(channel))
        .arg(format!("({}", shared::unix_now_ms()))
        .arg("+inf")
        .query_async(redis)
        .await?;
    let mut by_user: BTreeMap<(String, String), u32> = BTreeMap::new();
    for member in raw {
        let mut parts = member.splitn(3, '|');
        if let (Some(id), Some(name)) = (parts.next(), parts.next()) {
            *by_user.entry((id.to_owned(), name.to_owned())).or_default() += 1;
        }
    }
    Ok(by_user
        .into_iter()
        .map(|((id, username), connections)| Member {
            user: MemberUser { id, username },
            connections,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_events_are_well_formed() {
        let user = Uuid::nil();
        let m = Membership::new(
            "public:a".parse().expect("channel"),
            user,
            "ann",
            "node-a:7",
        );
        assert_eq!(m.member, format!("{user}|ann|node-a:7"));
        assert_eq!(m.user_prefix(), format!("{user}|"));
        let event: serde_json::Value =
            serde_json::from_str(&event_frame(PresenceEvent::Join, &m)).expect("json");
        assert_eq!(
            event,
            serde_json::json!({"type":"join","channel":"public:a","user":{"id":user.to_string(),"username":"ann"}})
        );
    }

    /// The sweep's `leave`, written in Lua, is the frame the Rust writer
    /// makes for a leave (so clients cannot tell who announced it).
    #[tokio::test]
    async fn a_swept_leave_is_the_rust_leave_frame() {
        use futures_util::StreamExt as _;
        let url = testkit::shared_redis_url();
        let keys = RedisKeys::new(&testkit::unique_prefix()).expect("prefix");
        let channel: ChannelName = "public:sweep".parse().expect("channel");
        let user = Uuid::new_v4();
        let membership = Membership::new(channel.clone(), user, "ann.b-c_d", "node-x:1");
        let client = redis::Client::open(url.as_str()).expect("client");
        let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
        pubsub
            .subscribe(keys.channel_live(&channel))
            .await
            .expect("subscribe");
        let mut messages = pubsub.on_message();
        let mut redis = shared::redis_conn::connect(&url).await.expect("redis");
        // Lapsed after the lease; the keys themselves live twice as long.
        join(&mut redis, &keys, &membership, Duration::from_millis(300))
            .await
            .expect("join");
        let mut next_frame = async || -> String {
            let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
                .await
                .expect("a frame in time")
                .expect("subscribed");
            message.get_payload().expect("a string payload")
        };
        assert_eq!(
            next_frame().await,
            event_frame(PresenceEvent::Join, &membership)
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(sweep(&mut redis, &keys, &channel).await.expect("sweep"), 1);
        assert_eq!(
            next_frame().await,
            frame::presence(
                PresenceEvent::Leave,
                &channel,
                &user.to_string(),
                "ann.b-c_d"
            )
        );
    }

    /// Whatever a member string holds (quotes, backslashes, a control
    /// character, in the username or the connection id), the sweep's `leave`
    /// is valid JSON naming that user, byte for byte the Rust frame.
    #[tokio::test]
    async fn a_swept_leave_escapes_what_the_member_holds() {
        use futures_util::StreamExt as _;
        let url = testkit::shared_redis_url();
        let keys = RedisKeys::new(&testkit::unique_prefix()).expect("prefix");
        let channel: ChannelName = "public:sweep-escapes".parse().expect("channel");
        let user = Uuid::new_v4();
        let username = "a\"n\\n\u{1}\t\u{e9}";
        let membership = Membership::new(channel.clone(), user, username, "node-\"x\\:1");
        let client = redis::Client::open(url.as_str()).expect("client");
        let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
        pubsub
            .subscribe(keys.channel_live(&channel))
            .await
            .expect("subscribe");
        let mut messages = pubsub.on_message();
        let mut redis = shared::redis_conn::connect(&url).await.expect("redis");
        join(&mut redis, &keys, &membership, Duration::from_millis(300))
            .await
            .expect("join");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(sweep(&mut redis, &keys, &channel).await.expect("sweep"), 1);
        let mut frames = Vec::new();
        while frames.len() < 2 {
            let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
                .await
                .expect("a frame in time")
                .expect("subscribed");
            frames.push(message.get_payload::<String>().expect("a string payload"));
        }
        let leave = &frames[1];
        let parsed: serde_json::Value = serde_json::from_str(leave).expect("valid JSON");
        assert_eq!(
            parsed,
            serde_json::json!({"type":"leave","channel":"public:sweep-escapes",
                "user":{"id":user.to_string(),"username":username}})
        );
        assert_eq!(
            *leave,
            frame::presence(PresenceEvent::Leave, &channel, &user.to_string(), username)
        );
    }
}

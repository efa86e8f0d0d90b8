//! Opening Redis connections with the timeouts both services need, to one
//! Redis server or to a Redis Cluster.
//!
//! [`Redis`] is the command connection both services hold. On one server it
//! is a `ConnectionManager`: all commands of a process multiplexed over one
//! socket that reconnects by itself. On a cluster it is redis-rs's cluster
//! connection, which keeps one multiplexed socket per node, routes each
//! command by its key's slot and follows `MOVED`/`ASK` redirects and
//! failovers. Code above this module sends the same commands either way; the
//! only differences it sees are [`Redis::is_cluster`] (pub/sub goes sharded
//! on a cluster, see [`PubSubKind`]) and that every script and `MULTI` must
//! keep to one hash tag, which the key layout ([`crate::keys`]) guarantees.
//!
//! The timeouts matter for failing closed: when Redis stops answering, a
//! handshake or mint must get an error within a bounded time (and answer 503)
//! rather than hang.

use crate::redact::SecretUrl;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Arg, Cmd, Pipeline, RedisFuture, Value};
use std::time::Duration;

/// How long one Redis command may take before the caller gets an error.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long opening a Redis connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the services find Redis: one server (`REDIS_URL`) or a cluster
/// (`REDIS_CLUSTER_URLS`, a few of its nodes to discover the rest from).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    Single(SecretUrl),
    Cluster(Vec<SecretUrl>),
}

impl std::fmt::Display for RedisTarget {
    /// Passwords redacted (see [`SecretUrl`]).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(url) => write!(f, "{url}"),
            Self::Cluster(seeds) => {
                f.write_str("cluster of ")?;
                for (i, seed) in seeds.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{seed}")?;
                }
                Ok(())
            }
        }
    }
}

/// How a channel's live messages travel: classic pub/sub on one server;
/// sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7) on a cluster, where
/// classic pub/sub would copy every message to every node of the cluster
/// while a shard channel's messages stay on the shard that owns its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PubSubKind {
    Classic,
    Sharded,
}

impl PubSubKind {
    /// The publish command, as a script calls it.
    pub fn publish_command(self) -> &'static str {
        match self {
            Self::Classic => "PUBLISH",
            Self::Sharded => "SPUBLISH",
        }
    }
}

/// The command connection to Redis, one server or a cluster. Cheap to
/// clone: clones share the connection.
#[derive(Clone)]
pub struct Redis(Connection);

#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Redis {
    pub fn is_cluster(&self) -> bool {
        matches!(self.0, Connection::Cluster(_))
    }

    /// How channel messages are published and subscribed on this Redis.
    pub fn pubsub_kind(&self) -> PubSubKind {
        if self.is_cluster() {
            PubSubKind::Sharded
        } else {
            PubSubKind::Classic
        }
    }
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => {
                if pipeline.is_transaction() {
                    c.req_packed_commands(pipeline, offset, count)
                } else {
                    Box::pin(pipeline_by_slot(c.clone(), pipeline))
                }
            }
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// Runs a plain (non-`MULTI`) pipeline on a cluster: one sub-pipeline per
/// slot, all at once, and the replies put back in the pipeline's order.
///
/// redis-rs sends a whole pipeline to the node of its first key and refuses
/// one that crosses slots, but many of ours do by nature (a user's quota
/// counter next to a channel's history, several users' connection sets).
/// Splitting them here, once, keeps each call site the same on both kinds of
/// Redis. Order holds within a slot, which is all a plain pipeline promises
/// about different keys anyway. A command that is not bound to one slot (no
/// key, or keys in several slots such as a multi-key `DEL`) is sent on its
/// own, which redis-rs routes (and splits) by itself, after everything before
/// it and before everything after it: it may touch any of their keys.
async fn pipeline_by_slot(
    mut connection: ClusterConnection,
    pipeline: &Pipeline,
) -> redis::RedisResult<Vec<Value>> {
    let commands: Vec<&Cmd> = pipeline.cmd_iter().collect();
    let slots: Vec<Option<Slot>> = commands.iter().map(|cmd| command_slot(cmd)).collect();
    if let Some(Some(first)) = slots.first()
        && slots.iter().all(|slot| *slot == Some(*first))
    {
        return connection
            .req_packed_commands(pipeline, 0, commands.len())
            .await;
    }
    let mut replies = vec![Value::Nil; commands.len()];
    let mut segment_start = 0;
    for end in 0..=commands.len() {
        if end < commands.len() && slots[end].is_some() {
            continue;
        }
        // `segment_start..end` are bound to slots: one sub-pipeline each, at once.
        let mut groups: Vec<(Slot, Pipeline, Vec<usize>)> = Vec::new();
        for index in segment_start..end {
            let Some(slot) = slots[index] else { continue };
            let cmd = commands[index].clone();
            match groups.iter_mut().find(|(s, _, _)| *s == slot) {
                Some((_, group, indices)) => {
                    group.add_command(cmd);
                    indices.push(index);
                }
                None => {
                    let mut group = redis::pipe();
                    group.add_command(cmd);
                    groups.push((slot, group, vec![index]));
                }
            }
        }
        let sent = groups.iter().map(|(_, group, _)| {
            let mut connection = connection.clone();
            async move { connection.req_packed_commands(group, 0, group.len()).await }
        });
        let answered = futures_util::future::try_join_all(sent).await?;
        for ((_, _, indices), values) in groups.iter().zip(answered) {
            for (&index, value) in indices.iter().zip(values) {
                replies[index] = value;
            }
        }
        // `end`, if any, is not: on its own.
        if end < commands.len() {
            replies[end] = connection.req_packed_command(commands[end]).await?;
        }
        segment_start = end + 1;
    }
    Ok(replies)
}

/// The one slot a command's keys hash to, or `None` for a command without
/// keys or with keys in several slots (sent on its own, see
/// [`pipeline_by_slot`]). redis-rs knows every command's key positions but
/// keeps that table private; this covers the commands tessera pipelines:
/// scripts (`EVAL`/`EVALSHA`, keys after `numkeys`), the multi-key `DEL`,
/// `EXISTS`, `UNLINK`, `TOUCH` and `MGET`, a few keyless ones, and otherwise
/// the key as first argument.
fn command_slot(cmd: &Cmd) -> Option<Slot> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|arg| match arg {
            Arg::Simple(bytes) => Some(bytes),
            _ => None,
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    let keys: &[&[u8]] = match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let count: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
            args.get(3..3 + count)?
        }
        b"DEL" | b"EXISTS" | b"UNLINK" | b"TOUCH" | b"MGET" => args.get(1..)?,
        b"PING" | b"ECHO" | b"TIME" | b"INFO" | b"SCRIPT" | b"CLIENT" | b"CLUSTER" | b"CONFIG"
        | b"DBSIZE" | b"FLUSHALL" | b"FLUSHDB" | b"PUBLISH" => return None,
        _ => args.get(1..2)?,
    };
    let slot = Slot::for_key(keys.first()?);
    keys.iter()
        .all(|key| Slot::for_key(key) == slot)
        .then_some(slot)
}

/// A client whose connections set `TCP_NODELAY`. redis-rs leaves Nagle's
/// algorithm on by default, which holds back a pipelined request behind an
/// unacknowledged one; on a multiplexed connection that costs latency under load.
pub fn client(url: &str) -> redis::RedisResult<redis::Client> {
    redis::Client::open(connection_info(url)?)
}

/// `url` with `TCP_NODELAY` set (see [`client`]).
fn connection_info(url: &str) -> redis::RedisResult<redis::ConnectionInfo> {
    use redis::IntoConnectionInfo as _;
    Ok(url
        .into_connection_info()?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)))
}

/// Opens the command connection to `target`.
pub async fn open(target: &RedisTarget) -> redis::RedisResult<Redis> {
    match target {
        RedisTarget::Single(url) => connect(url.expose()).await,
        RedisTarget::Cluster(seeds) => {
            let client = cluster_client(seeds).build()?;
            Ok(Redis(Connection::Cluster(
                client.get_async_connection().await?,
            )))
        }
    }
}

/// A cluster client with the same timeouts, `TCP_NODELAY` and RESP3 as the
/// single-server connection; the subscriber adds a push sender to it.
pub fn cluster_client(seeds: &[SecretUrl]) -> ClusterClientBuilder {
    ClusterClient::builder(seeds.iter().map(|s| s.expose().to_owned()))
        .use_protocol(redis::ProtocolVersion::RESP3)
        .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true))
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .overall_response_timeout(Some(RESPONSE_TIMEOUT * 2))
        .retries(3)
        .min_retry_wait(50)
        .max_retry_wait(500)
}

/// Opens a self-reconnecting, multiplexed connection to one server.
///
/// It speaks RESP3, with which the manager notices a dropped connection at
/// once and reconnects in the background; over RESP2 it would only notice when
/// the next command fails. That matters with auth-service's one connection per
/// serving thread: after Redis restarts, a thread that was quiet meanwhile would
/// otherwise fail its next request (a 503, or an error ack) even though Redis
/// has long been back.
pub async fn connect(url: &str) -> redis::RedisResult<Redis> {
    let info = connection_info(url)?;
    let resp3 = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(resp3))?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    Ok(Redis(Connection::Single(
        ConnectionManager::new_with_config(client, config).await?,
    )))
}

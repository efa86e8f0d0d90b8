//! The subscriber's pub/sub connection, to one Redis server or to a cluster.
//!
//! One server: a RESP2 pub/sub connection, classic `SUBSCRIBE` for
//! everything.
//!
//! A cluster: redis-rs's cluster connection with a RESP3 push sender, which
//! keeps one connection per node it needs. Channels are shard channels
//! (`SSUBSCRIBE`), each sent to the master that owns its slot, one command
//! per slot, since a shard command may not cross slots. Node-wide control
//! stays classic pub/sub (`SUBSCRIBE` on any node): Redis Cluster copies a
//! classic message to every node, which is what a message for every ws-node
//! needs and would be waste for channel traffic.
//!
//! redis-rs resubscribes by itself after it reconnects to a node or learns a
//! new slot map, but it cannot say what was published meanwhile. So every
//! sign that a subscription may have lapsed (a node's connection dropped, a
//! slot moved and Redis sent `SUNSUBSCRIBE`, a master that does not answer)
//! is reported as [`Event::Lost`]; the subscriber then drops the whole link,
//! makes a new one and replays every channel from history, exactly as after
//! losing its one connection to a single Redis. That costs a resubscription
//! of every channel for a fault on one shard, and keeps one well-tested path
//! for recovery.

use futures_util::StreamExt as _;
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, Slot};
use redis::{PushInfo, PushKind, RedisResult, Value};
use shared::redis_conn::RedisTarget;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a probe or a (un)subscribe may take before the link is deemed lost.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

pub enum Link {
    Single {
        sink: PubSubSink,
        stream: PubSubStream,
    },
    Cluster {
        connection: ClusterConnection,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
        /// Shard channels this link asked to leave, whose `SUNSUBSCRIBE`
        /// confirmations have not come through yet: those are not a slot
        /// that moved. (Without this, a channel left and joined again in
        /// quick succession would look like a lost subscription and cost a
        /// resubscription of everything.)
        leaving: HashMap<Vec<u8>, usize>,
    },
}

/// What the link brought.
pub enum Event {
    Message {
        channel: Vec<u8>,
        /// Copied out of the connection's buffer once (single Redis) or
        /// taken over as is (cluster); the hub shares it with every member.
        payload: bytes::Bytes,
    },
    /// A shard channel Redis unsubscribed us from (its slot moved).
    Unsubscribed { channel: Vec<u8> },
    /// The subscriptions can no longer be trusted: make a new link.
    Lost(String),
    /// A confirmation or other push that needs nothing done.
    Nothing,
}

impl Link {
    pub async fn open(target: &RedisTarget) -> RedisResult<Self> {
        let opening = async {
            match target {
                RedisTarget::Single(url) => {
                    let client = shared::redis_conn::client(url.expose())?;
                    let (sink, stream) = client.get_async_pubsub().await?.split();
                    Ok(Self::Single { sink, stream })
                }
                RedisTarget::Cluster(seeds) => {
                    let (tx, pushes) = mpsc::unbounded_channel();
                    let client = shared::redis_conn::cluster_client(seeds)
                        .push_sender(tx)
                        .build()?;
                    let connection = client.get_async_connection().await?;
                    Ok(Self::Cluster {
                        connection,
                        pushes,
                        leaving: HashMap::new(),
                    })
                }
            }
        };
        tokio::time::timeout(COMMAND_TIMEOUT, opening)
            .await
            .map_err(|_| timeout_error("connect"))?
    }

    /// Subscribes to channels' live messages (shard channels on a cluster).
    pub async fn subscribe(&mut self, names: &[String]) -> RedisResult<()> {
        match self {
            Self::Single { sink, .. } => {
                for chunk in names.chunks(1000) {
                    bounded("subscribe", sink.subscribe(chunk)).await?;
                }
                Ok(())
            }
            Self::Cluster { connection, .. } => {
                let requests = by_slot(names).into_values().map(|group| {
                    let mut connection = connection.clone();
                    async move { connection.ssubscribe(group).await }
                });
                bounded("ssubscribe", futures_util::future::try_join_all(requests))
                    .await
                    .map(drop)
            }
        }
    }

    pub async fn unsubscribe(&mut self, names: &[String]) -> RedisResult<()> {
        match self {
            Self::Single { sink, .. } => bounded("unsubscribe", sink.unsubscribe(names)).await,
            Self::Cluster {
                connection,
                leaving,
                ..
            } => {
                for name in names {
                    *leaving.entry(name.as_bytes().to_vec()).or_default() += 1;
                }
                let requests = by_slot(names).into_values().map(|group| {
                    let mut connection = connection.clone();
                    async move { connection.sunsubscribe(group).await }
                });
                bounded("sunsubscribe", futures_util::future::try_join_all(requests))
                    .await
                    .map(drop)
            }
        }
    }

    /// Subscribes to node-wide channels: classic pub/sub, which a cluster
    /// delivers from any node to every node.
    pub async fn subscribe_node_wide(&mut self, name: &str) -> RedisResult<()> {
        match self {
            Self::Single { sink, .. } => bounded("subscribe", sink.subscribe(name)).await,
            Self::Cluster { connection, .. } => {
                bounded("subscribe", connection.subscribe(name)).await
            }
        }
    }

    /// Checks that the link still answers (every master, on a cluster).
    pub async fn ping(&mut self) -> RedisResult<()> {
        match self {
            Self::Single { sink, .. } => bounded("ping", sink.ping::<Value>()).await.map(drop),
            Self::Cluster { connection, .. } => {
                let all_masters = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::AllSucceeded),
                ));
                bounded(
                    "ping",
                    connection.route_command(redis::cmd("PING"), all_masters),
                )
                .await
                .map(drop)
            }
        }
    }

    /// The next message or event; cancel-safe.
    pub async fn next(&mut self) -> Event {
        match self {
            Self::Single { stream, .. } => match stream.next().await {
                Some(message) => Event::Message {
                    channel: message.get_channel_name().as_bytes().to_vec(),
                    payload: bytes::Bytes::copy_from_slice(message.get_payload_bytes()),
                },
                None => Event::Lost("connection closed".into()),
            },
            Self::Cluster {
                pushes, leaving, ..
            } => match pushes.recv().await {
                Some(push) => match cluster_event(push) {
                    Event::Unsubscribed { channel } => match leaving.get_mut(&channel) {
                        Some(pending) => {
                            *pending -= 1;
                            if *pending == 0 {
                                leaving.remove(&channel);
                            }
                            Event::Nothing
                        }
                        None => Event::Unsubscribed { channel },
                    },
                    event => event,
                },
                None => Event::Lost("cluster connection closed".into()),
            },
        }
    }
}

fn cluster_event(push: PushInfo) -> Event {
    let mut data = push.data.into_iter();
    let mut bytes = || match data.next() {
        Some(Value::BulkString(bytes)) => Some(bytes),
        Some(Value::SimpleString(s)) => Some(s.into_bytes()),
        _ => None,
    };
    match push.kind {
        PushKind::Message | PushKind::SMessage => match (bytes(), bytes()) {
            (Some(channel), Some(payload)) => Event::Message {
                channel,
                payload: payload.into(),
            },
            _ => Event::Nothing,
        },
        PushKind::SUnsubscribe => match bytes() {
            Some(channel) => Event::Unsubscribed { channel },
            None => Event::Nothing,
        },
        PushKind::Disconnection => Event::Lost("a cluster node's connection dropped".into()),
        _ => Event::Nothing,
    }
}

/// Shard channels grouped by slot: one `SSUBSCRIBE` may not cross slots.
fn by_slot(names: &[String]) -> HashMap<Slot, Vec<&str>> {
    let mut groups: HashMap<Slot, Vec<&str>> = HashMap::new();
    for name in names {
        groups.entry(Slot::for_key(name)).or_default().push(name);
    }
    groups
}

/// One hash tag per master, from the cluster's slot map: a canary channel
/// tagged with it lives on that master, so canaries prove every shard.
pub async fn shard_tags(redis: &mut shared::redis_conn::Redis) -> RedisResult<Vec<String>> {
    let slots: Value = bounded(
        "cluster slots",
        redis::cmd("CLUSTER").arg("SLOTS").query_async(redis),
    )
    .await?;
    // Per master, the middle of its first range: a canary slot that is not
    // at a range's edge, where resharding takes slots from first.
    let mut slot_by_master: HashMap<String, (i64, i64)> = HashMap::new();
    if let Value::Array(ranges) = slots {
        for range in ranges {
            let Value::Array(fields) = range else {
                continue;
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                continue;
            };
            let address = format!("{:?}{:?}", master.first(), master.get(1));
            let first = slot_by_master.entry(address).or_insert((*start, *end));
            if *start < first.0 {
                *first = (*start, *end);
            }
        }
    }
    let mut tags: Vec<String> = slot_by_master
        .into_values()
        .filter_map(|(start, end)| {
            u16::try_from(start + (end - start) / 2)
                .ok()
                .and_then(tag_for_slot)
        })
        .collect();
    tags.sort();
    Ok(tags)
}

/// The shortest decimal hash tag whose slot is `slot` (there is one below
/// a few tens of thousands for every slot).
fn tag_for_slot(slot: u16) -> Option<String> {
    let wanted = Slot::new(slot)?;
    (0u32..1_000_000)
        .map(|n| n.to_string())
        .find(|tag| Slot::for_key(tag) == wanted)
}

async fn bounded<T>(
    what: &'static str,
    request: impl std::future::Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    tokio::time::timeout(COMMAND_TIMEOUT, request)
        .await
        .map_err(|_| timeout_error(what))?
}

fn timeout_error(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "timed out", what.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the shared test cluster: Redis confirms our own `SUNSUBSCRIBE`
    /// with the push it also sends when a slot moves away; only the latter
    /// may reach the subscriber as [`Event::Unsubscribed`].
    #[tokio::test]
    async fn our_own_unsubscribe_is_not_taken_for_a_moved_slot() {
        let seeds = testkit::shared_cluster_urls()
            .iter()
            .map(|u| u.as_str().into())
            .collect();
        let mut link = Link::open(&RedisTarget::Cluster(seeds))
            .await
            .expect("the test cluster (scripts/ensure-services.sh starts it)");
        let keys = shared::keys::RedisKeys::new(&testkit::unique_prefix()).expect("prefix");
        let name = keys.channel_live(&"public:own".parse().expect("channel"));
        let names = [name.clone()];
        for _ in 0..3 {
            link.subscribe(&names).await.expect("ssubscribe");
            link.unsubscribe(&names).await.expect("sunsubscribe");
        }
        link.subscribe(&names).await.expect("ssubscribe");
        // Every confirmation is already queued; none may read as a move.
        while let Ok(event) = tokio::time::timeout(Duration::from_millis(300), link.next()).await {
            assert!(
                matches!(event, Event::Nothing),
                "our own unsubscribe read as something else"
            );
        }
        let Link::Cluster { leaving, .. } = &link else {
            unreachable!("a cluster link")
        };
        assert!(leaving.is_empty(), "confirmations not matched: {leaving:?}");
    }

    #[test]
    fn every_slot_has_a_short_tag() {
        for slot in [0u16, 1, 5460, 5461, 10922, 10923, 16383] {
            let tag = tag_for_slot(slot).expect("a tag");
            assert_eq!(
                Slot::for_key(format!("x:{{{tag}}}:y")),
                Slot::new(slot).expect("slot")
            );
        }
    }
}

//! The node's local registry: which local connections are in which channel,
//! and the fan-out of each message arriving from Redis to them.
//!
//! Membership is reference-counted per channel: the first local member makes
//! the node SUBSCRIBE to the channel in Redis, the last one leaving makes it
//! UNSUBSCRIBE (the [`subscriber`](super::subscriber) carries the
//! [`SubscriberCommand`]s out, in order). A
//! message is serialised once (it arrives as the finished client frame) and the
//! same bytes are queued to every member, without waiting: a member whose queue
//! is full is too slow and is closed with 4008, and nobody else waits for it.

use crate::protocol::CloseReason;
use indexmap::IndexMap;
use shared::channel::ChannelName;
use shared::credential::AuthSource;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use uuid::Uuid;

/// A connection's id, unique within the node.
pub type ConnId = u64;

/// How long a join waits for Redis to confirm a new subscription.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// One message on its way to local connections. Created once per message and
/// shared by every receiver (each queue slot holds one pointer), so fan-out to
/// N connections costs N reference-count increments and idle queues stay small.
#[derive(Debug)]
pub struct Delivery {
    pub channel: ChannelName,
    /// The message's history offset, when its channel keeps history.
    pub offset: Option<u64>,
    pub frame: Utf8Bytes,
    /// The node lost track of the channel (a `recovery` notice): offsets seen
    /// so far no longer say anything about what comes next.
    pub resets: bool,
    /// When it was dispatched, for one message in [`FANOUT_SAMPLE_EVERY`]:
    /// the writes that carry it report their delay to
    /// [`crate::telemetry::FANOUT_LATENCY`].
    pub sampled_at: Option<std::time::Instant>,
}

/// One message in this many is timed from dispatch to its writes: timing
/// every one would add a histogram update to every socket write, the hot
/// path of fan-out.
pub const FANOUT_SAMPLE_EVERY: u64 = 16;

/// What the hub asks of the subscriber, which carries it out in Redis.
#[derive(Debug)]
pub enum SubscriberCommand {
    /// The channel's first local member joined: subscribe, and mark the
    /// entry of this generation subscribed once Redis confirms.
    Subscribe {
        channel: ChannelName,
        generation: u64,
    },
    /// The channel's last local member left.
    Unsubscribe { channel: ChannelName },
}

/// What other tasks may ask of a connection: close it, for a reason.
#[derive(Debug)]
pub struct ConnControl {
    pub user_id: Uuid,
    /// Unix seconds.
    pub connected_at: u64,
    /// The credential the connection was opened with (revoking it closes the connection).
    pub source: AuthSource,
    /// The requested [`CloseReason`] as its `u8`; 0 while none is.
    close: AtomicU8,
    notify: Notify,
}

impl ConnControl {
    pub fn new(user_id: Uuid, source: AuthSource) -> Self {
        Self {
            user_id,
            connected_at: shared::unix_now(),
            source,
            close: AtomicU8::new(0),
            notify: Notify::new(),
        }
    }

    /// Asks the connection to close for `reason`; the first request wins.
    ///
    /// Every [`Self::closed`] waiting is woken, not just one: the connection
    /// loop's own waiter sits idle while the loop is inside a write that
    /// waits for the same request. The permit left by `notify_one` serves a
    /// waiter that checked just before the request and registers after it.
    pub fn close(&self, reason: CloseReason) {
        if self
            .close
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.notify.notify_waiters();
            self.notify.notify_one();
        }
    }

    /// The close requested so far, if any.
    pub fn requested_close(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.close.load(Ordering::Acquire))
    }

    /// Resolves once a close has been requested.
    pub async fn closed(&self) -> CloseReason {
        loop {
            if let Some(reason) = self.requested_close() {
                return reason;
            }
            self.notify.notified().await;
        }
    }
}

/// The hub's handle on one connection.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    pub id: ConnId,
    pub tx: mpsc::Sender<Arc<Delivery>>,
    pub control: Arc<ConnControl>,
}

struct ChannelEntry {
    members: Members,
    /// Distinguishes this entry from an earlier one of the same channel that was
    /// removed and re-created while its Redis commands were still in flight.
    generation: u64,
    /// True once Redis confirmed the subscription made for this entry.
    subscribed: watch::Sender<bool>,
}

/// A channel's local members, in an `IndexMap`: a dense vector to iterate on
/// every message, with an index by connection id, so joining and leaving
/// (`swap_remove`) cost O(1) even for channels with tens of thousands of
/// members.
type Members = IndexMap<ConnId, ConnHandle>;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the node could not subscribe to the channel in time; retry later")]
    Unavailable,
}

pub struct Hub {
    /// Messages dispatched, to pick which are timed ([`FANOUT_SAMPLE_EVERY`])
    /// and to tell write coalescing whether there is fan-out at all.
    dispatched: AtomicU64,
    channels: RwLock<HashMap<ChannelName, ChannelEntry>>,
    connections: RwLock<HashMap<ConnId, ConnHandle>>,
    commands: mpsc::UnboundedSender<SubscriberCommand>,
    next_generation: AtomicU64,
}

/// Locks never poisoned in practice (no code panics while holding them); if one
/// were, the data is still consistent enough to keep serving, so recover it.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Hub {
    pub fn new(commands: mpsc::UnboundedSender<SubscriberCommand>) -> Self {
        Self {
            dispatched: AtomicU64::new(0),
            channels: RwLock::new(HashMap::new()),
            connections: RwLock::new(HashMap::new()),
            commands,
            next_generation: AtomicU64::new(1),
        }
    }

    pub fn register(&self, conn: ConnHandle) {
        write(&self.connections).insert(conn.id, conn);
        metrics::gauge!(crate::telemetry::CONNECTIONS).increment(1.0);
    }

    pub fn unregister(&self, id: ConnId) {
        if write(&self.connections).remove(&id).is_some() {
            metrics::gauge!(crate::telemetry::CONNECTIONS).decrement(1.0);
        }
    }

    /// Every local connection's credential and user.
    pub fn connection_credentials(&self) -> Vec<(ConnId, AuthSource, Uuid)> {
        read(&self.connections)
            .values()
            .map(|c| (c.id, c.control.source, c.control.user_id))
            .collect()
    }

    /// Every local connection with its user.
    pub fn connection_users(&self) -> Vec<(ConnId, Uuid)> {
        read(&self.connections)
            .values()
            .map(|c| (c.id, c.control.user_id))
            .collect()
    }

    /// For each of `ids` still connected: when it connected and the channels
    /// it is a member of (one pass over the channels; a rare, repair-only path).
    pub fn connection_details(&self, ids: &[ConnId]) -> HashMap<ConnId, (u64, Vec<ChannelName>)> {
        let mut details: HashMap<ConnId, (u64, Vec<ChannelName>)> = {
            let connections = read(&self.connections);
            ids.iter()
                .filter_map(|id| {
                    let conn = connections.get(id)?;
                    Some((*id, (conn.control.connected_at, Vec::new())))
                })
                .collect()
        };
        for (name, entry) in read(&self.channels).iter() {
            for id in entry.members.keys() {
                if let Some((_, channels)) = details.get_mut(id) {
                    channels.push(name.clone());
                }
            }
        }
        details
    }

    pub fn connection_count(&self) -> usize {
        read(&self.connections).len()
    }

    /// Adds a connection to a channel; returns once the node's Redis
    /// subscription to the channel is confirmed, so no message published after
    /// this returns can be missed.
    pub async fn join(&self, channel: &ChannelName, conn: &ConnHandle) -> Result<(), JoinError> {
        let mut subscribed = {
            let mut channels = write(&self.channels);
            let entry = channels.entry(channel.clone()).or_insert_with(|| {
                let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                let _ = self.commands.send(SubscriberCommand::Subscribe {
                    channel: channel.clone(),
                    generation,
                });
                ChannelEntry {
                    members: Members::default(),
                    generation,
                    subscribed: watch::channel(false).0,
                }
            });
            entry.members.entry(conn.id).or_insert_with(|| conn.clone());
            entry.subscribed.subscribe()
        };
        match tokio::time::timeout(JOIN_TIMEOUT, subscribed.wait_for(|s| *s)).await {
            Ok(Ok(_)) => Ok(()),
            _ => {
                self.leave(channel, conn.id);
                Err(JoinError::Unavailable)
            }
        }
    }

    /// Removes a connection from a channel (a no-op if it was not a member).
    pub fn leave(&self, channel: &ChannelName, id: ConnId) {
        let mut channels = write(&self.channels);
        let Some(entry) = channels.get_mut(channel) else {
            return;
        };
        entry.members.swap_remove(&id);
        if entry.members.is_empty() {
            channels.remove(channel);
            let _ = self.commands.send(SubscriberCommand::Unsubscribe {
                channel: channel.clone(),
            });
        }
    }

    /// Called by the subscriber when Redis confirmed a subscription.
    pub fn mark_subscribed(&self, channel: &ChannelName, generation: u64) {
        if let Some(entry) = read(&self.channels).get(channel)
            && entry.generation == generation
        {
            entry.subscribed.send_replace(true);
        }
    }

    /// Whether `channel` has local members now.
    pub fn has_channel(&self, channel: &ChannelName) -> bool {
        read(&self.channels).contains_key(channel)
    }

    /// Every channel with local members (to resubscribe after a reconnect),
    /// with the generation of its current entry.
    pub fn channels(&self) -> Vec<(ChannelName, u64)> {
        read(&self.channels)
            .iter()
            .map(|(name, entry)| (name.clone(), entry.generation))
            .collect()
    }

    /// Queues a message to every local member of `channel`; returns how many got it.
    pub fn dispatch(&self, channel: &ChannelName, offset: Option<u64>, frame: &Utf8Bytes) -> usize {
        self.dispatch_delivery(channel, offset, frame, false)
    }

    /// Queues a `recovery` notice (see [`Delivery::resets`]).
    pub fn dispatch_reset(&self, channel: &ChannelName, frame: &Utf8Bytes) -> usize {
        self.dispatch_delivery(channel, None, frame, true)
    }

    fn dispatch_delivery(
        &self,
        channel: &ChannelName,
        offset: Option<u64>,
        frame: &Utf8Bytes,
        resets: bool,
    ) -> usize {
        let channels = read(&self.channels);
        let Some(entry) = channels.get(channel) else {
            return 0;
        };
        let sampled = self
            .dispatched
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(FANOUT_SAMPLE_EVERY);
        let delivery = Arc::new(Delivery {
            channel: channel.clone(),
            offset,
            frame: frame.clone(),
            resets,
            sampled_at: sampled.then(std::time::Instant::now),
        });
        let mut delivered = 0;
        for member in entry.members.values() {
            match member.tx.try_send(delivery.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if member.control.requested_close().is_none() {
                        metrics::counter!(crate::telemetry::SLOW_CONSUMERS_CLOSED).increment(1);
                    }
                    member.control.close(CloseReason::SlowConsumer);
                }
                // The connection is already going away.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        delivered
    }

    /// Waits until every member of `channel` has room for `room` more
    /// deliveries (at most half its queue), or `patience` runs out. Replaying
    /// history pushes thousands of messages at once; pacing it by the slowest
    /// member that still drains keeps a healthy client from being taken for a
    /// slow consumer (4008). One that cannot drain in `patience` is slow.
    pub async fn wait_for_room(&self, channel: &ChannelName, room: usize, patience: Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let cramped = read(&self.channels).get(channel).is_some_and(|entry| {
                entry.members.values().any(|m| {
                    let wanted = room.min(m.tx.max_capacity() / 2).max(1);
                    m.tx.capacity() < wanted
                        && !m.tx.is_closed()
                        && m.control.requested_close().is_none()
                })
            });
            if !cramped || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Messages dispatched so far (each to all of its channel's members).
    pub fn messages_dispatched(&self) -> u64 {
        self.dispatched.load(Ordering::Relaxed)
    }

    /// Asks one local connection to close; returns 1 if it exists, else 0.
    pub fn close_connection(&self, id: ConnId, reason: CloseReason) -> usize {
        read(&self.connections).get(&id).map_or(0, |conn| {
            conn.control.close(reason);
            1
        })
    }

    /// Asks every local connection matching `predicate` to close for
    /// `reason`; returns how many were asked.
    pub fn close_where(
        &self,
        reason: CloseReason,
        predicate: impl Fn(&ConnControl) -> bool,
    ) -> usize {
        let connections = read(&self.connections);
        let mut closed = 0;
        for conn in connections.values() {
            if predicate(&conn.control) {
                conn.control.close(reason);
                closed += 1;
            }
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_close_request_wins() {
        let control = ConnControl::new(
            Uuid::nil(),
            AuthSource::ApiKey {
                key_id: Uuid::nil(),
            },
        );
        assert_eq!(control.requested_close(), None);
        control.close(CloseReason::Revoked);
        control.close(CloseReason::SlowConsumer);
        assert_eq!(control.requested_close(), Some(CloseReason::Revoked));
    }

    #[tokio::test]
    async fn a_close_request_wakes_every_waiter() {
        let control = ConnControl::new(
            Uuid::nil(),
            AuthSource::ApiKey {
                key_id: Uuid::nil(),
            },
        );
        let mut loop_waiter = Box::pin(control.closed());
        let mut write_waiter = Box::pin(control.closed());
        // Polled once each, so both wait on the `Notify`.
        let zero = Duration::ZERO;
        assert!(tokio::time::timeout(zero, &mut loop_waiter).await.is_err());
        assert!(tokio::time::timeout(zero, &mut write_waiter).await.is_err());
        control.close(CloseReason::ShuttingDown);
        let patience = Duration::from_secs(1);
        for waiter in [write_waiter, loop_waiter] {
            let woken = tokio::time::timeout(patience, waiter).await;
            assert_eq!(woken.ok(), Some(CloseReason::ShuttingDown));
        }
    }
}

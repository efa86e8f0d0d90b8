//! The node's local registry: which local connections are in which channel,
//! and the fan-out of each message arriving from Redis to them.
//!
//! Membership is reference-counted per channel: the first local member makes
//! the node SUBSCRIBE to the channel in Redis, the last one leaving makes it
//! UNSUBSCRIBE ([`crate::subscriber`] carries the commands out, in order). A
//! message is serialised once (it arrives as the finished client frame) and the
//! same bytes are queued to every member, without waiting: a member whose queue
//! is full is too slow and is closed with 4008, and nobody else waits for it.

use crate::subscriber::SubscriberCommand;
use shared::channel::ChannelName;
use shared::credential::AuthSource;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
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
    pub channel: Arc<str>,
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

/// What other tasks may ask of a connection: close it, with a code.
#[derive(Debug)]
pub struct ConnControl {
    pub user_id: Uuid,
    /// Unix seconds.
    pub connected_at: u64,
    /// The credential the connection was opened with (revoking it closes the connection).
    pub source: AuthSource,
    close_code: AtomicU16,
    notify: Notify,
}

impl ConnControl {
    pub fn new(user_id: Uuid, source: AuthSource) -> Self {
        Self {
            user_id,
            connected_at: shared::unix_now(),
            source,
            close_code: AtomicU16::new(0),
            notify: Notify::new(),
        }
    }

    /// Asks the connection to close with `code`; the first request wins.
    pub fn close(&self, code: u16) {
        if self
            .close_code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.notify.notify_one();
        }
    }

    /// The close code requested so far, if any.
    pub fn requested_close(&self) -> Option<u16> {
        match self.close_code.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }

    /// Resolves once a close has been requested.
    pub async fn closed(&self) -> u16 {
        loop {
            if let Some(code) = self.requested_close() {
                return code;
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

/// A channel's local members: a vector (fast to iterate on every message) with
/// an index by connection id, so joining and leaving cost O(1) even for
/// channels with tens of thousands of members.
#[derive(Default)]
struct Members {
    list: Vec<ConnHandle>,
    position: HashMap<ConnId, usize>,
}

impl Members {
    fn insert(&mut self, conn: &ConnHandle) {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.position.entry(conn.id) {
            slot.insert(self.list.len());
            self.list.push(conn.clone());
        }
    }

    fn remove(&mut self, id: ConnId) {
        let Some(index) = self.position.remove(&id) else {
            return;
        };
        self.list.swap_remove(index);
        if let Some(moved) = self.list.get(index) {
            self.position.insert(moved.id, index);
        }
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = &ConnHandle> {
        self.list.iter()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the node could not subscribe to the channel in time; retry later")]
    Unavailable,
}

pub struct Hub {
    /// Deliveries queued since the coalescing ticker last looked.
    delivered: AtomicU64,
    /// Messages dispatched, to pick which are timed ([`FANOUT_SAMPLE_EVERY`]).
    dispatched: AtomicU64,
    channels: RwLock<HashMap<String, ChannelEntry>>,
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
            delivered: AtomicU64::new(0),
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
    pub fn connection_details(&self, ids: &[ConnId]) -> HashMap<ConnId, (u64, Vec<String>)> {
        let mut details: HashMap<ConnId, (u64, Vec<String>)> = {
            let connections = read(&self.connections);
            ids.iter()
                .filter_map(|id| {
                    let conn = connections.get(id)?;
                    Some((*id, (conn.control.connected_at, Vec::new())))
                })
                .collect()
        };
        for (name, entry) in read(&self.channels).iter() {
            for member in entry.members.iter() {
                if let Some((_, channels)) = details.get_mut(&member.id) {
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
            let entry = channels
                .entry(channel.as_str().to_owned())
                .or_insert_with(|| {
                    let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                    let _ = self.commands.send(SubscriberCommand::Subscribe {
                        channel: channel.as_str().to_owned(),
                        generation,
                    });
                    ChannelEntry {
                        members: Members::default(),
                        generation,
                        subscribed: watch::channel(false).0,
                    }
                });
            entry.members.insert(conn);
            entry.subscribed.subscribe()
        };
        match tokio::time::timeout(JOIN_TIMEOUT, subscribed.wait_for(|s| *s)).await {
            Ok(Ok(_)) => Ok(()),
            _ => {
                self.leave(channel.as_str(), conn.id);
                Err(JoinError::Unavailable)
            }
        }
    }

    /// Removes a connection from a channel (a no-op if it was not a member).
    pub fn leave(&self, channel: &str, id: ConnId) {
        let mut channels = write(&self.channels);
        let Some(entry) = channels.get_mut(channel) else {
            return;
        };
        entry.members.remove(id);
        if entry.members.is_empty() {
            channels.remove(channel);
            let _ = self.commands.send(SubscriberCommand::Unsubscribe {
                channel: channel.to_owned(),
            });
        }
    }

    /// Called by the subscriber when Redis confirmed a subscription.
    pub fn mark_subscribed(&self, channel: &str, generation: u64) {
        if let Some(entry) = read(&self.channels).get(channel)
            && entry.generation == generation
        {
            entry.subscribed.send_replace(true);
        }
    }

    /// Whether `channel` has local members now.
    pub fn has_channel(&self, channel: &str) -> bool {
        read(&self.channels).contains_key(channel)
    }

    /// Every channel with local members (to resubscribe after a reconnect),
    /// with the generation of its current entry.
    pub fn channels(&self) -> Vec<(String, u64)> {
        read(&self.channels)
            .iter()
            .map(|(name, entry)| (name.clone(), entry.generation))
            .collect()
    }

    /// Queues a message to every local member of `channel`; returns how many got it.
    pub fn dispatch(&self, channel: &str, offset: Option<u64>, frame: &Utf8Bytes) -> usize {
        self.dispatch_delivery(channel, offset, frame, false)
    }

    /// Queues a `recovery` notice (see [`Delivery::resets`]).
    pub fn dispatch_reset(&self, channel: &str, frame: &Utf8Bytes) -> usize {
        self.dispatch_delivery(channel, None, frame, true)
    }

    fn dispatch_delivery(
        &self,
        channel: &str,
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
            channel: Arc::from(channel),
            offset,
            frame: frame.clone(),
            resets,
            sampled_at: sampled.then(std::time::Instant::now),
        });
        let mut delivered = 0;
        for member in entry.members.iter() {
            match member.tx.try_send(delivery.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if member.control.requested_close().is_none() {
                        metrics::counter!(crate::telemetry::SLOW_CONSUMERS_CLOSED).increment(1);
                    }
                    member.control.close(crate::protocol::close::RATE_LIMITED);
                }
                // The connection is already going away.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        self.delivered
            .fetch_add(delivered as u64, Ordering::Relaxed);
        delivered
    }

    /// Waits until every member of `channel` has room for `room` more
    /// deliveries (at most half its queue), or `patience` runs out. Replaying
    /// history pushes thousands of messages at once; pacing it by the slowest
    /// member that still drains keeps a healthy client from being taken for a
    /// slow consumer (4008). One that cannot drain in `patience` is slow.
    pub async fn wait_for_room(&self, channel: &str, room: usize, patience: Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let cramped = read(&self.channels).get(channel).is_some_and(|entry| {
                entry.members.iter().any(|m| {
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

    /// Deliveries queued since the last call (for the node's load estimate).
    pub fn take_delivered(&self) -> u64 {
        self.delivered.swap(0, Ordering::Relaxed)
    }

    /// Asks one local connection to close; returns 1 if it exists, else 0.
    pub fn close_connection(&self, id: ConnId, code: u16) -> usize {
        read(&self.connections).get(&id).map_or(0, |conn| {
            conn.control.close(code);
            1
        })
    }

    /// Asks every local connection matching `predicate` to close with `code`;
    /// returns how many were asked.
    pub fn close_where(&self, code: u16, predicate: impl Fn(&ConnControl) -> bool) -> usize {
        let connections = read(&self.connections);
        let mut closed = 0;
        for conn in connections.values() {
            if predicate(&conn.control) {
                conn.control.close(code);
                closed += 1;
            }
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(id: ConnId) -> ConnHandle {
        let (tx, _rx) = mpsc::channel(1);
        ConnHandle {
            id,
            tx,
            control: Arc::new(ConnControl::new(
                Uuid::nil(),
                AuthSource::ApiKey {
                    key_id: Uuid::nil(),
                },
            )),
        }
    }

    #[test]
    fn members_join_and_leave_in_constant_time_and_stay_consistent() {
        let mut members = Members::default();
        for id in 0..5 {
            members.insert(&handle(id));
        }
        members.insert(&handle(2));
        assert_eq!(members.list.len(), 5, "joining twice is one membership");
        members.remove(1);
        members.remove(1);
        members.remove(4);
        let mut ids: Vec<ConnId> = members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        assert_eq!(ids, [0, 2, 3]);
        for (i, m) in members.list.iter().enumerate() {
            assert_eq!(members.position[&m.id], i);
        }
        for id in [0, 2, 3] {
            members.remove(id);
        }
        assert!(members.is_empty());
    }
}

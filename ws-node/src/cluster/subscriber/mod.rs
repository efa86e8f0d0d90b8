//! The node's Redis subscription: one connection to a single Redis, or one
//! per shard it needs on a cluster ([`link`]).
//!
//! Redis pub/sub is at-most-once: if this connection drops, messages published
//! meanwhile are gone from pub/sub. So the subscriber watches the connection
//! (the message stream ends when it drops; a periodic PING catches a half-open
//! socket), reports not-ready at once, reconnects with exponential backoff and
//! jitter, and resubscribes every channel that has local members.
//!
//! Commands from the hub (SUBSCRIBE on the first local member of a channel,
//! UNSUBSCRIBE after the last) are applied strictly in order; consecutive
//! commands of one kind are batched into one Redis command.
//!
//! Nothing lost: for every channel with history the subscriber keeps a cursor
//! (epoch and last offset dispatched). A live message that skips offsets makes
//! it fetch the missing ones from history first; after a reconnect it replays,
//! per channel, everything published while it was away. Where history cannot
//! cover the gap (trimmed, or a new epoch after Redis lost its data) members
//! get an explicit `{"type":"recovery","channel":…,"recovered":false}` frame:
//! never a silent gap. Duplicates (a message both replayed and live) are
//! dropped by offset.

mod gaps;
mod link;

use crate::cluster::canary::Canary;
use crate::cluster::hub::{Hub, SubscriberCommand};
use crate::protocol::CloseReason;
use link::{COMMAND_TIMEOUT, Event, Link};
use shared::channel::{ChannelName, frame};
use shared::control::ControlMessage;
use shared::keys::RedisKeys;
use shared::namespace::Namespaces;
use shared::redis_conn::{Redis, RedisTarget};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// How often the subscriber connection is probed with PING.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Capped low: after Redis comes back, every second spent reconnecting is a
/// second of messages that must then come from (bounded) history.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

pub struct Subscriber {
    /// Where the subscription connects: one Redis, or a cluster.
    pub target: RedisTarget,
    /// For history reads (gap filling); separate from the subscriber connection.
    pub redis: Redis,
    pub keys: RedisKeys,
    pub namespaces: Arc<Namespaces>,
    pub node_id: Arc<str>,
    pub hub: Arc<Hub>,
    pub commands: mpsc::UnboundedReceiver<SubscriberCommand>,
    /// True while the subscription is live; `/readyz` reports it.
    pub ready: watch::Sender<bool>,
    /// Sent with every probe, read back through the subscription.
    pub canary: Arc<Canary>,
    /// The channels this node's canaries travel on: one, or one per shard.
    pub canary_channels: Vec<String>,
    /// Per history channel: the position of the last message dispatched.
    pub cursors: HashMap<ChannelName, gaps::Cursor>,
}

impl Subscriber {
    /// Runs until the process ends: connect, serve, and on loss reconnect.
    pub async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.connect().await {
                Ok(link) => {
                    backoff = BACKOFF_MIN;
                    self.ready.send_replace(true);
                    tracing::info!("redis subscription live");
                    let reason = self.serve(link).await;
                    self.ready.send_replace(false);
                    metrics::counter!(crate::telemetry::SUBSCRIPTION_LOSSES).increment(1);
                    tracing::warn!(%reason, "redis subscription lost; reconnecting");
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot subscribe to redis");
                }
            }
            // Jitter (50–100 % of the backoff): a fleet of nodes that lost
            // Redis together does not reconnect in lockstep.
            let sleep = backoff.mul_f64(rand::random_range(0.5..=1.0));
            tokio::time::sleep(sleep).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Opens the connection, subscribes to the control channel and every
    /// channel that currently has local members, and replays what those
    /// channels missed while the node was not subscribed.
    ///
    /// Cursors of channels new to the subscriber are read *before* the
    /// SUBSCRIBE (as in [`Self::apply`]): a message published in between is
    /// then a gap that history fills, never mistaken for a duplicate.
    async fn connect(&mut self) -> redis::RedisResult<Link> {
        self.discard_queued_commands();
        let mut link = Link::open(&self.target).await?;
        self.canary_channels = if self.redis.is_cluster() {
            link::shard_tags(&mut self.redis)
                .await?
                .iter()
                .map(|tag| self.keys.shard_canary(&self.node_id, tag))
                .collect()
        } else {
            vec![self.keys.canary(&self.node_id)]
        };
        let channels = self.hub.channels();
        self.prepare_cursors(&channels).await?;
        let mut names: Vec<String> = channels
            .iter()
            .map(|(c, _)| self.keys.channel_live(c))
            .collect();
        names.extend(self.canary_channels.iter().cloned());
        link.subscribe_node_wide(&self.keys.control()).await?;
        link.subscribe(&names).await?;
        self.replay_missed().await?;
        for (channel, generation) in channels {
            self.hub.mark_subscribed(&channel, generation);
        }
        self.canary.restart(self.canary_channels.len());
        Ok(link)
    }

    /// Drops the hub's commands queued while no connection was serving them.
    /// A connection starts from the hub's channels as they are *after* this
    /// (see [`Self::connect`]), which covers every command queued before; a
    /// command queued after it is applied as usual. Without this, joins and
    /// leaves during a long Redis outage (clients retrying subscriptions)
    /// would pile up in the unbounded queue for as long as the outage lasts.
    fn discard_queued_commands(&mut self) {
        let mut discarded = 0u64;
        while self.commands.try_recv().is_ok() {
            discarded += 1;
        }
        if discarded > 0 {
            metrics::counter!(crate::telemetry::SUBSCRIBER_COMMANDS_DISCARDED).increment(discarded);
            tracing::debug!(
                discarded,
                "dropped subscription commands superseded by a reconnect"
            );
        }
    }

    /// Dispatches messages and applies commands until the connection is lost.
    async fn serve(&mut self, mut link: Link) -> String {
        let mut probe = tokio::time::interval(PROBE_INTERVAL);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                event = link.next() => match event {
                    Event::Message { channel, payload } => self.on_message(&channel, payload).await,
                    Event::Unsubscribed { channel } => {
                        if let Some(reason) = self.on_unsubscribed(&channel) {
                            return reason;
                        }
                    }
                    Event::Lost(reason) => return reason,
                    Event::Nothing => {}
                },
                Some(first) = self.commands.recv() => {
                    if let Err(e) = self.apply(&mut link, first).await {
                        return format!("command failed: {e}");
                    }
                }
                _ = probe.tick() => {
                    if let Err(e) = link.ping().await {
                        return format!("ping failed: {e}");
                    }
                    // Caught up with the stream (this arm runs only when no
                    // message waits) and still no recent canary: messages
                    // published now do not reach this subscription. Make a
                    // new one; the replay fills what was missed.
                    if self.canary.is_late() {
                        return "the subscription stopped delivering (canary late)".into();
                    }
                    self.send_canary();
                }
            }
        }
    }

    /// Redis dropped a shard channel (its slot moved to another master):
    /// a reason to make the subscription anew if the node still needs it.
    fn on_unsubscribed(&self, name: &[u8]) -> Option<String> {
        let name = std::str::from_utf8(name).ok()?;
        let needed = self
            .keys
            .channel_from_live(name)
            .is_some_and(|channel| self.hub.has_channel(&channel))
            || self.canary_channels.iter().any(|c| c == name);
        needed.then(|| format!("redis dropped the subscription of {name} (slot moved)"))
    }

    /// Applies `first` and every command already queued behind it, batching
    /// runs of the same kind into one SUBSCRIBE or UNSUBSCRIBE.
    async fn apply(&mut self, link: &mut Link, first: SubscriberCommand) -> redis::RedisResult<()> {
        let mut pending = vec![first];
        while pending.len() < 1000 {
            match self.commands.try_recv() {
                Ok(cmd) => pending.push(cmd),
                Err(_) => break,
            }
        }
        // An UNSUBSCRIBE whose channel has members again (a Subscribe for a
        // new entry is queued behind it) would open a window in which those
        // members miss messages: keep the subscription and the cursor instead.
        pending.retain(|cmd| match cmd {
            SubscriberCommand::Unsubscribe { channel } => !self.hub.has_channel(channel),
            SubscriberCommand::Subscribe { .. } => true,
        });
        if pending.is_empty() {
            return Ok(());
        }
        let mut i = 0;
        while i < pending.len() {
            let subscribing = matches!(pending[i], SubscriberCommand::Subscribe { .. });
            let run_end = pending[i..]
                .iter()
                .position(|c| matches!(c, SubscriberCommand::Subscribe { .. }) != subscribing)
                .map_or(pending.len(), |n| i + n);
            let run = &pending[i..run_end];
            let names: Vec<String> = run
                .iter()
                .map(|c| match c {
                    SubscriberCommand::Subscribe { channel, .. }
                    | SubscriberCommand::Unsubscribe { channel } => self.keys.channel_live(channel),
                })
                .collect();
            if subscribing {
                let channels: Vec<&ChannelName> = run
                    .iter()
                    .filter_map(|c| match c {
                        SubscriberCommand::Subscribe { channel, .. } => Some(channel),
                        SubscriberCommand::Unsubscribe { .. } => None,
                    })
                    .collect();
                self.start_cursors(&channels).await?;
                link.subscribe(&names).await?;
                for cmd in run {
                    if let SubscriberCommand::Subscribe {
                        channel,
                        generation,
                    } = cmd
                    {
                        self.hub.mark_subscribed(channel, *generation);
                    }
                }
            } else {
                link.unsubscribe(&names).await?;
                for cmd in run {
                    if let SubscriberCommand::Unsubscribe { channel } = cmd {
                        self.cursors.remove(channel);
                    }
                }
            }
            i = run_end;
        }
        Ok(())
    }

    /// Publishes a canary on the command connection, as clients' messages
    /// go, without waiting for it: a publish that hangs (Redis paused) must
    /// hold up neither this loop nor the next canary. Readiness sees the
    /// result, or its absence, in [`Canary::age`].
    fn send_canary(&self) {
        let mut redis = self.redis.clone();
        let publish_command = redis.pubsub_kind().publish_command();
        let mut pipe = redis::pipe();
        let payload = Canary::payload();
        for channel in &self.canary_channels {
            pipe.cmd(publish_command)
                .arg(channel)
                .arg(&payload)
                .ignore();
        }
        tokio::spawn(async move {
            let sent = pipe.exec_async(&mut redis);
            if let Ok(Err(e)) = tokio::time::timeout(COMMAND_TIMEOUT, sent).await {
                tracing::debug!(error = %e, "could not publish the canary");
            }
        });
    }

    async fn on_message(&mut self, name: &[u8], payload: bytes::Bytes) {
        let Ok(name) = std::str::from_utf8(name) else {
            return;
        };
        if let Some(channel) = self.keys.channel_from_live(name) {
            let Ok(frame) = Utf8Bytes::try_from(payload) else {
                tracing::warn!(%channel, "dropping a message that is not UTF-8");
                return;
            };
            metrics::counter!(crate::telemetry::MESSAGES_RECEIVED).increment(1);
            let Some(position) = frame::position(&frame) else {
                // No history position: a message of a channel without history, or a presence event.
                self.deliver(&channel, None, &frame);
                return;
            };
            if !self.admit(&channel, &position).await {
                return;
            }
            self.deliver(&channel, Some(position.offset), &frame);
            self.cursors.insert(
                channel,
                gaps::Cursor {
                    epoch: Some(position.epoch),
                    offset: position.offset,
                },
            );
        } else if name == self.keys.control() {
            self.on_control(&payload);
        } else if let Some(index) = self.canary_channels.iter().position(|c| c == name) {
            self.canary.returned(index, &payload);
        }
    }

    fn deliver(&self, channel: &ChannelName, offset: Option<u64>, frame: &Utf8Bytes) {
        let delivered = self.hub.dispatch(channel, offset, frame);
        metrics::counter!(crate::telemetry::DELIVERIES).increment(delivered as u64);
    }

    fn on_control(&self, payload: &[u8]) {
        let Ok(message) = serde_json::from_slice::<ControlMessage>(payload) else {
            tracing::warn!("ignoring an unreadable control message");
            return;
        };
        let closed = match message {
            ControlMessage::CredentialRevoked { source } => self
                .hub
                .close_where(CloseReason::Revoked, |c| c.source == source),
            ControlMessage::UserDisabled { user_id }
            | ControlMessage::DisconnectUser { user_id } => self
                .hub
                .close_where(CloseReason::Revoked, |c| c.user_id == user_id),
            ControlMessage::DisconnectConnection { connection_id } => {
                match connection_id.rsplit_once(':') {
                    Some((node, id)) if node == &*self.node_id => id
                        .parse()
                        .map_or(0, |id| self.hub.close_connection(id, CloseReason::Revoked)),
                    _ => 0,
                }
            }
        };
        if closed > 0 {
            tracing::info!(
                closed,
                "closed connections on request of the control channel"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::hub::{ConnControl, ConnHandle};

    /// A subscriber and its hub on the machine's Redis, under a prefix of its own.
    async fn subscriber() -> (Subscriber, mpsc::UnboundedSender<SubscriberCommand>) {
        let url = testkit::shared_redis_url();
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let subscriber = Subscriber {
            target: RedisTarget::Single(url.as_str().into()),
            redis: shared::redis_conn::connect(&url).await.expect("redis"),
            keys: RedisKeys::new(&testkit::unique_prefix()).expect("keys"),
            namespaces: Arc::default(),
            node_id: "test-node".into(),
            hub: Arc::new(Hub::new(commands_tx.clone())),
            commands,
            ready: watch::channel(false).0,
            canary: Arc::new(Canary::new(Duration::from_secs(5))),
            canary_channels: Vec::new(),
            cursors: HashMap::new(),
        };
        (subscriber, commands_tx)
    }

    /// What a long Redis outage leaves behind: joins that timed out and the
    /// leaves that followed them, and one join still waiting. Reconnecting
    /// subscribes the waiting join's channel (from the hub's channels) and
    /// leaves nothing queued.
    #[tokio::test]
    async fn reconnecting_serves_waiting_joins_and_drops_stale_commands() {
        let (mut subscriber, commands_tx) = subscriber().await;
        for generation in 0..10_000 {
            let channel: ChannelName = format!("public:gone-{generation}")
                .parse()
                .expect("channel");
            let subscribe = SubscriberCommand::Subscribe {
                channel: channel.clone(),
                generation,
            };
            commands_tx.send(subscribe).expect("queue");
            commands_tx
                .send(SubscriberCommand::Unsubscribe { channel })
                .expect("queue");
        }
        let (tx, _rx) = mpsc::channel(8);
        let member = ConnHandle {
            id: 1,
            tx,
            control: Arc::new(ConnControl::new(
                uuid::Uuid::new_v4(),
                shared::credential::AuthSource::ApiKey {
                    key_id: uuid::Uuid::new_v4(),
                },
            )),
        };
        let hub = subscriber.hub.clone();
        let channel: ChannelName = "public:waiting".parse().expect("channel");
        let join = tokio::spawn(async move { hub.join(&channel, &member).await });
        // The join has queued its SUBSCRIBE behind the stale commands.
        let waiting: ChannelName = "public:waiting".parse().expect("channel");
        while !subscriber.hub.has_channel(&waiting) {
            tokio::task::yield_now().await;
        }

        let _link = subscriber.connect().await.expect("connect");

        assert!(subscriber.commands.is_empty(), "commands still queued");
        let joined = tokio::time::timeout(Duration::from_secs(2), join).await;
        assert!(
            matches!(joined, Ok(Ok(Ok(())))),
            "the waiting join was not served: {joined:?}"
        );
    }
}

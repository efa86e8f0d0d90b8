//! The node's one Redis subscriber connection.
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

use crate::hub::Hub;
use crate::protocol::close;
use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt as _;
use redis::aio::{PubSubSink, PubSubStream};
use shared::control::ControlMessage;
use shared::keys::RedisKeys;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How often the subscriber connection is probed with PING.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a probe or a (un)subscribe may take before the connection is deemed lost.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub enum SubscriberCommand {
    Subscribe { channel: String, generation: u64 },
    Unsubscribe { channel: String },
}

pub struct Subscriber {
    pub client: redis::Client,
    pub keys: RedisKeys,
    pub hub: Arc<Hub>,
    pub commands: mpsc::UnboundedReceiver<SubscriberCommand>,
    /// True while the subscription is live; `/readyz` reports it.
    pub ready: watch::Sender<bool>,
}

impl Subscriber {
    /// Runs until the process ends: connect, serve, and on loss reconnect.
    pub async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.connect().await {
                Ok((sink, stream)) => {
                    backoff = BACKOFF_MIN;
                    self.ready.send_replace(true);
                    tracing::info!("redis subscription live");
                    let reason = self.serve(sink, stream).await;
                    self.ready.send_replace(false);
                    metrics::counter!("ws_subscription_losses_total").increment(1);
                    tracing::warn!(%reason, "redis subscription lost; reconnecting");
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot subscribe to redis");
                }
            }
            // Full jitter: a fleet of nodes that lost Redis together does not reconnect in lockstep.
            let sleep = backoff.mul_f64(rand::random_range(0.5..=1.0));
            tokio::time::sleep(sleep).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Opens the connection and subscribes to the control channel and every
    /// channel that currently has local members.
    async fn connect(&mut self) -> redis::RedisResult<(PubSubSink, PubSubStream)> {
        let pubsub = tokio::time::timeout(COMMAND_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| timeout_error("connect"))??;
        let (mut sink, stream) = pubsub.split();
        let channels = self.hub.channels();
        let mut names: Vec<String> = channels.iter().map(|(c, _)| self.live_name(c)).collect();
        names.push(self.keys.control());
        for chunk in names.chunks(1000) {
            tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(chunk))
                .await
                .map_err(|_| timeout_error("subscribe"))??;
        }
        for (channel, generation) in channels {
            self.hub.mark_subscribed(&channel, generation);
        }
        Ok((sink, stream))
    }

    /// Dispatches messages and applies commands until the connection is lost.
    async fn serve(&mut self, mut sink: PubSubSink, mut stream: PubSubStream) -> String {
        let mut probe = tokio::time::interval(PROBE_INTERVAL);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                message = stream.next() => match message {
                    Some(message) => self.on_message(&message),
                    None => return "connection closed".into(),
                },
                Some(first) = self.commands.recv() => {
                    if let Err(e) = self.apply(&mut sink, first).await {
                        return format!("command failed: {e}");
                    }
                }
                _ = probe.tick() => {
                    match tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return format!("ping failed: {e}"),
                        Err(_) => return "ping timed out".into(),
                    }
                }
            }
        }
    }

    /// Applies `first` and every command already queued behind it, batching
    /// runs of the same kind into one SUBSCRIBE or UNSUBSCRIBE.
    async fn apply(
        &mut self,
        sink: &mut PubSubSink,
        first: SubscriberCommand,
    ) -> redis::RedisResult<()> {
        let mut pending = vec![first];
        while pending.len() < 1000 {
            match self.commands.try_recv() {
                Ok(cmd) => pending.push(cmd),
                Err(_) => break,
            }
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
                    | SubscriberCommand::Unsubscribe { channel } => self.live_name(channel),
                })
                .collect();
            if subscribing {
                tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(&names))
                    .await
                    .map_err(|_| timeout_error("subscribe"))??;
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
                tokio::time::timeout(COMMAND_TIMEOUT, sink.unsubscribe(&names))
                    .await
                    .map_err(|_| timeout_error("unsubscribe"))??;
            }
            i = run_end;
        }
        Ok(())
    }

    fn on_message(&self, message: &redis::Msg) {
        let name = message.get_channel_name();
        if let Some(channel) = self.keys.channel_from_live(name) {
            let Ok(frame) =
                Utf8Bytes::try_from(bytes::Bytes::copy_from_slice(message.get_payload_bytes()))
            else {
                tracing::warn!(channel, "dropping a message that is not UTF-8");
                return;
            };
            let delivered = self.hub.dispatch(channel, frame_offset(&frame), &frame);
            metrics::counter!("ws_messages_received_total").increment(1);
            metrics::counter!("ws_deliveries_total").increment(delivered as u64);
        } else if name == self.keys.control() {
            self.on_control(message.get_payload_bytes());
        }
    }

    fn on_control(&self, payload: &[u8]) {
        let Ok(message) = serde_json::from_slice::<ControlMessage>(payload) else {
            tracing::warn!("ignoring an unreadable control message");
            return;
        };
        let closed = match message {
            ControlMessage::CredentialRevoked { source } => self
                .hub
                .close_where(close::FORBIDDEN, |c| c.source == source),
            ControlMessage::UserDisabled { user_id } => self
                .hub
                .close_where(close::FORBIDDEN, |c| c.user_id == user_id),
        };
        if closed > 0 {
            tracing::info!(closed, "closed connections of a revoked credential");
        }
    }

    fn live_name(&self, channel: &str) -> String {
        match channel.parse() {
            Ok(name) => self.keys.channel_live(&name),
            // Hub channels are parsed names; this is unreachable, and harmless if not.
            Err(_) => format!("{}:invalid", self.keys.prefix()),
        }
    }
}

fn timeout_error(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "timed out", what.to_owned()))
}

/// The `offset` of a history-bearing message frame. The frame's layout is ours
/// (`shared::channel`): channel names and epochs contain no quotes, so a
/// `"offset":` before the first `"data":` is the field (one after it would be
/// inside the payload).
pub fn frame_offset(frame: &str) -> Option<u64> {
    let header = &frame[..frame.find("\"data\":")?];
    let start = header.find("\"offset\":")? + "\"offset\":".len();
    let digits = &header[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::frame_offset;

    #[test]
    fn reads_offsets_from_frames() {
        assert_eq!(
            frame_offset(
                r#"{"type":"message","channel":"public:a","epoch":"ab","offset":42,"data":{"offset":1}}"#
            ),
            Some(42)
        );
        assert_eq!(
            frame_offset(r#"{"type":"message","channel":"public:a","data":{}}"#),
            None
        );
        assert_eq!(
            frame_offset(r#"{"type":"message","channel":"public:a","data":{"offset":1}}"#),
            None
        );
    }
}

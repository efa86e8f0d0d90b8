//! One WebSocket connection: a task that `select!`s over the client's frames,
//! the deliveries the hub queued for it, the heartbeat, close requests
//! (revocation, slow consumer) and the node's shutdown.
//!
//! Deliveries are written in batches (`feed` what is queued, one `flush`), so
//! a busy connection costs one syscall per batch, not per message. The queue is
//! bounded: a client that does not read fills it and is closed with 4008,
//! while everyone else keeps receiving and memory stays flat.

use crate::handshake;
use crate::hub::{ConnControl, ConnHandle, ConnId, Delivery};
use crate::limits::{PendingSlot, TokenBucket};
use crate::protocol::{self, Request, RequestId, ServerFrame, UserInfo, close};
use crate::state::NodeState;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt as _;
use shared::channel::ChannelName;
use shared::namespace::Access;
use shared::scope::{Scope, Scopes};
use shared::ticket::AuthSource;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Who is on the other end, as established at the handshake.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user_id: Uuid,
    pub username: String,
    pub source: AuthSource,
    pub scopes: Scopes,
}

/// Deliveries written per flush at most (bounds one batch's latency).
const MAX_BATCH: usize = 64;
/// How long a close frame may take to go out before the socket is just dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Consecutive over-rate frames tolerated (each answered with an error) before closing with 4008.
const RATE_STRIKES: u32 = 10;

/// Serves a socket opened without credentials: waits for its `auth` frame.
pub async fn run_unauthenticated(
    node: NodeState,
    mut socket: WebSocket,
    origin: Option<String>,
    slot: PendingSlot,
) {
    let deadline = tokio::time::sleep(node.config.auth_timeout());
    tokio::pin!(deadline);
    let principal = loop {
        tokio::select! {
            () = &mut deadline => {
                return close_socket(&mut socket, close::AUTH_TIMEOUT, "no auth frame in time").await;
            }
            frame = socket.recv() => {
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(Message::Binary(_))) => {
                        return close_socket(&mut socket, close::UNAUTHORIZED, "expected an auth frame").await;
                    }
                };
                let ticket = match protocol::parse(&text) {
                    Ok((_, Request::Auth { ticket })) => ticket,
                    _ => return close_socket(&mut socket, close::UNAUTHORIZED, "expected an auth frame").await,
                };
                match handshake::consume(&node, &ticket, origin.as_deref()).await {
                    Ok(principal) => break principal,
                    Err(crate::error::Error::Unavailable(_)) => {
                        return close_socket(&mut socket, close::TRY_AGAIN_LATER, "redis unavailable").await;
                    }
                    Err(crate::error::Error::OriginMismatch | crate::error::Error::InsufficientScope) => {
                        return close_socket(&mut socket, close::FORBIDDEN, "ticket not valid for this origin").await;
                    }
                    Err(_) => return close_socket(&mut socket, close::UNAUTHORIZED, "invalid ticket").await,
                }
            }
        }
    };
    drop(slot);
    let id = node.new_connection_id();
    let name = node.connection_name(id);
    let mut redis = node.redis.clone();
    match crate::limits::acquire_user_slot(
        &mut redis,
        &node.keys,
        principal.user_id,
        &name,
        node.config.max_connections_per_user,
    )
    .await
    {
        Ok(true) => run(node, socket, id, principal).await,
        Ok(false) => {
            close_socket(
                &mut socket,
                close::RATE_LIMITED,
                "too many connections for this user",
            )
            .await
        }
        Err(_) => close_socket(&mut socket, close::TRY_AGAIN_LATER, "redis unavailable").await,
    }
}

/// Serves an authenticated socket until it closes. The caller has already
/// taken the connection's place against the per-user cap.
pub async fn run(node: NodeState, socket: WebSocket, id: ConnId, principal: Principal) {
    let (tx, rx) = mpsc::channel(node.config.send_queue_frames);
    let control = Arc::new(ConnControl::new(principal.user_id, principal.source));
    let handle = ConnHandle {
        id,
        tx,
        control: control.clone(),
    };
    node.hub.register(handle.clone());
    let mut conn = Connection {
        guard: Registration {
            node: node.clone(),
            id,
            user_id: principal.user_id,
            channels: HashSet::new(),
        },
        node,
        socket,
        rx,
        handle,
        control,
        bucket: TokenBucket::new(0, 1),
        strikes: 0,
        principal,
        last_heard: Instant::now(),
    };
    conn.bucket = TokenBucket::new(
        conn.node.config.client_messages_per_sec,
        conn.node.config.client_message_burst,
    );
    let (code, reason) = conn.serve().await;
    if let Some(code) = code {
        close_socket(&mut conn.socket, code, reason).await;
    }
}

/// Undoes a connection's registrations however its task ends (even by panic).
struct Registration {
    node: NodeState,
    id: ConnId,
    user_id: Uuid,
    channels: HashSet<String>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        for channel in &self.channels {
            self.node.hub.leave(channel, self.id);
        }
        self.node.hub.unregister(self.id);
        let (node, user_id, name) = (
            self.node.clone(),
            self.user_id,
            self.node.connection_name(self.id),
        );
        tokio::spawn(async move {
            let mut redis = node.redis.clone();
            if let Err(e) =
                crate::limits::release_user_slot(&mut redis, &node.keys, user_id, &name).await
            {
                tracing::debug!(error = %e, "could not release connection slot; its lease will expire");
            }
        });
    }
}

struct Connection {
    node: NodeState,
    socket: WebSocket,
    rx: mpsc::Receiver<Delivery>,
    handle: ConnHandle,
    control: Arc<ConnControl>,
    principal: Principal,
    bucket: TokenBucket,
    strikes: u32,
    last_heard: Instant,
    guard: Registration,
}

/// How a request went: a reply to send, and whether to close afterwards.
type Outcome = Result<String, (u16, &'static str)>;

impl Connection {
    /// The connection's main loop; returns the close code to send, if any.
    async fn serve(&mut self) -> (Option<u16>, &'static str) {
        let own_channel = ChannelName::for_user(self.principal.user_id);
        if self
            .node
            .hub
            .join(&own_channel, &self.handle)
            .await
            .is_err()
        {
            return (Some(close::TRY_AGAIN_LATER), "cannot subscribe right now");
        }
        self.guard.channels.insert(own_channel.as_str().to_owned());
        let name = self.node.connection_name(self.handle.id);
        let welcome = ServerFrame::Welcome {
            connection_id: &name,
            user: UserInfo {
                id: self.principal.user_id,
                username: &self.principal.username,
            },
            node: &self.node.node_id,
        }
        .to_json();
        if let Err(stop) = self.send(Message::Text(welcome.into())).await {
            return stop;
        }
        let draining = NodeState::drained(self.node.draining.clone());
        tokio::pin!(draining);
        let mut heartbeat = tokio::time::interval(self.node.config.ping_interval());
        heartbeat.reset();
        // When the last ping went out; a peer is only reaped after it had a ping to answer.
        let mut ping_sent: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                code = self.control.closed() => return (Some(code), close_reason(code)),
                () = &mut draining => return (Some(close::GOING_AWAY), "node shutting down"),
                delivery = self.rx.recv() => {
                    let Some(delivery) = delivery else { return (None, "") };
                    let control = self.control.clone();
                    // A peer that stopped reading blocks the write; a close
                    // request (slow consumer, revocation) must still get through.
                    tokio::select! {
                        biased;
                        code = control.closed() => return (Some(code), close_reason(code)),
                        written = self.write_batch(delivery) => {
                            if written.is_err() {
                                return (None, "");
                            }
                        }
                    }
                }
                frame = self.socket.recv() => {
                    self.last_heard = Instant::now();
                    match frame {
                        Some(Ok(Message::Text(text))) => match self.on_text(&text).await {
                            Ok(reply) => {
                                if let Err(stop) = self.send(Message::Text(reply.into())).await {
                                    return stop;
                                }
                            }
                            Err((code, reason)) => return (Some(code), reason),
                        },
                        Some(Ok(Message::Binary(_))) => {
                            let reply = protocol::error(None, "unsupported", "binary frames are not supported; send JSON text");
                            if let Err(stop) = self.send(Message::Text(reply.into())).await {
                                return stop;
                            }
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(Message::Close(_))) | None => return (None, ""),
                        Some(Err(e)) => {
                            return if is_too_big(&e) {
                                (Some(close::TOO_BIG), "message too big")
                            } else {
                                (None, "")
                            };
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    let unanswered = ping_sent.is_some_and(|sent| self.last_heard < sent);
                    if unanswered && self.last_heard.elapsed() > self.node.config.idle_timeout() {
                        metrics::counter!("ws_idle_timeouts_total").increment(1);
                        return (Some(close::GOING_AWAY), "idle timeout");
                    }
                    if !unanswered {
                        ping_sent = Some(Instant::now());
                    }
                    if let Err(stop) = self.send(Message::Ping(bytes::Bytes::new())).await {
                        return stop;
                    }
                }
            }
        }
    }

    /// Sends one frame, unless a close is requested while the peer is not reading.
    async fn send(&mut self, message: Message) -> Result<(), (Option<u16>, &'static str)> {
        let control = self.control.clone();
        tokio::select! {
            biased;
            code = control.closed() => Err((Some(code), close_reason(code))),
            sent = self.socket.send(message) => sent.map_err(|_| (None, "")),
        }
    }

    /// Writes `first` and whatever else is already queued, then flushes once.
    async fn write_batch(&mut self, first: Delivery) -> Result<(), axum::Error> {
        self.socket.feed(Message::Text(first.frame)).await?;
        for _ in 1..MAX_BATCH {
            match self.rx.try_recv() {
                Ok(next) => self.socket.feed(Message::Text(next.frame)).await?,
                Err(_) => break,
            }
        }
        self.socket.flush().await
    }

    /// Handles one client frame; `Err` closes the connection.
    async fn on_text(&mut self, text: &Utf8Bytes) -> Outcome {
        if !self.bucket.try_take() {
            self.strikes += 1;
            metrics::counter!("ws_rate_limited_frames_total").increment(1);
            if self.strikes > RATE_STRIKES {
                return Err((close::RATE_LIMITED, "message rate exceeded"));
            }
            return Ok(protocol::error(
                None,
                "rate_limited",
                "too many messages; slow down",
            ));
        }
        self.strikes = 0;
        let (id, request) = match protocol::parse(text) {
            Ok(parsed) => parsed,
            Err(bad) => return Ok(protocol::error(bad.id.as_ref(), bad.code, &bad.message)),
        };
        let id = id.as_ref();
        Ok(match request {
            Request::Ping => protocol::ack(id),
            Request::Auth { .. } => protocol::error(
                id,
                "already_authenticated",
                "this connection is already authenticated",
            ),
            Request::Subscribe { channel, since: _ } => self.subscribe(id, channel).await,
            Request::Unsubscribe { channel } => self.unsubscribe(id, &channel),
            Request::Publish { channel, data } => self.publish(id, &channel, data).await,
            Request::Presence { channel: _ } => {
                protocol::error(id, "unsupported", "presence is not enabled on this node")
            }
        })
    }

    /// Whether the namespace rule `access` admits this connection to `channel`.
    fn admits(&self, access: Access, channel: &ChannelName) -> bool {
        match access {
            Access::Any => true,
            Access::Owner => channel.name() == self.principal.user_id.to_string(),
            Access::Server => false,
        }
    }

    async fn subscribe(&mut self, id: Option<&RequestId>, channel: ChannelName) -> String {
        let Some(rule) = self.node.namespaces.rule_for(&channel) else {
            return protocol::error(id, "unknown_namespace", "no such channel namespace");
        };
        if !self.admits(rule.subscribe, &channel) {
            return protocol::error(id, "forbidden", "you may not subscribe to this channel");
        }
        if self.guard.channels.contains(channel.as_str()) {
            return subscribed_ack(id, &channel);
        }
        // The connection's own user channel is not counted against the limit.
        if self.guard.channels.len() > self.node.config.max_subscriptions_per_connection {
            return protocol::error(id, "too_many_subscriptions", "subscription limit reached");
        }
        if self.node.hub.join(&channel, &self.handle).await.is_err() {
            return protocol::error(id, "unavailable", "cannot subscribe right now; retry later");
        }
        self.guard.channels.insert(channel.as_str().to_owned());
        subscribed_ack(id, &channel)
    }

    fn unsubscribe(&mut self, id: Option<&RequestId>, channel: &ChannelName) -> String {
        if *channel == ChannelName::for_user(self.principal.user_id) {
            return protocol::error(
                id,
                "forbidden",
                "a connection always receives its own user channel",
            );
        }
        if self.guard.channels.remove(channel.as_str()) {
            self.node.hub.leave(channel.as_str(), self.handle.id);
        }
        protocol::ack(id)
    }

    async fn publish(
        &mut self,
        id: Option<&RequestId>,
        channel: &ChannelName,
        data: &serde_json::value::RawValue,
    ) -> String {
        if !self.principal.scopes.contains(Scope::Publish) {
            return protocol::error(id, "forbidden", "this connection may not publish (scope)");
        }
        let Some(rule) = self.node.namespaces.rule_for(channel) else {
            return protocol::error(id, "unknown_namespace", "no such channel namespace");
        };
        if !self.admits(rule.publish, channel) {
            return protocol::error(id, "forbidden", "you may not publish to this channel");
        }
        let mut redis = self.node.redis.clone();
        match shared::channel::publish(&mut redis, &self.node.keys, channel, data, rule.history)
            .await
        {
            Ok(position) => {
                metrics::counter!("ws_client_publishes_total").increment(1);
                ServerFrame::Ack {
                    id,
                    channel: Some(channel.as_str()),
                    recovered: None,
                    epoch: position.as_ref().map(|p| p.epoch.as_str()),
                    offset: position.as_ref().map(|p| p.offset),
                }
                .to_json()
            }
            Err(e) => {
                tracing::warn!(error = %e, "publish failed");
                protocol::error(
                    id,
                    "unavailable",
                    "the message could not be published; retry",
                )
            }
        }
    }
}

fn close_reason(code: u16) -> &'static str {
    match code {
        close::FORBIDDEN => "credential revoked",
        close::RATE_LIMITED => "too slow a consumer",
        _ => "closed by the server",
    }
}

fn subscribed_ack(id: Option<&RequestId>, channel: &ChannelName) -> String {
    ServerFrame::Ack {
        id,
        channel: Some(channel.as_str()),
        recovered: None,
        epoch: None,
        offset: None,
    }
    .to_json()
}

/// Whether a read error was the message size limit (answered with 1009).
fn is_too_big(e: &axum::Error) -> bool {
    use std::error::Error as _;
    let mut source: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(err) = source {
        if let Some(tungstenite) = err.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
            return matches!(
                tungstenite,
                tokio_tungstenite::tungstenite::Error::Capacity(_)
            );
        }
        source = err.source();
    }
    false
}

/// Sends a close frame (bounded in time: a peer that does not read gets dropped).
async fn close_socket(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.send(frame)).await;
}

//! One WebSocket connection: a task that `select!`s over the client's frames,
//! the deliveries the hub queued for it, the heartbeat, close requests
//! (revocation, slow consumer) and the node's shutdown.
//!
//! Deliveries are written in batches (`feed` what is queued, one `flush`), so
//! a busy connection costs one syscall per batch, not per message. The queue is
//! bounded: a client that does not read fills it and is closed with 4008,
//! while everyone else keeps receiving and memory stays flat.

use crate::handshake::{self, Principal};
use crate::hub::{ConnControl, ConnHandle, ConnId, Delivery};
use crate::limits::{PendingSlot, TokenBucket};
use crate::presence::{self, Membership};
use crate::protocol::{self, Request, RequestId, ServerFrame, Since, UserInfo, close};
use crate::state::NodeState;
use crate::stream::Socket as WebSocket;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::value::RawValue;
use shared::channel::{ChannelName, HistorySince, PublishError, StreamPosition, frame};
use shared::connections;
use shared::namespace::{Access, NamespaceRule};
use shared::scope::Scope;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use uuid::Uuid;

/// Deliveries written per flush at most (bounds one batch's latency).
const MAX_BATCH: usize = 256;
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
    let draining = NodeState::drained(node.draining.clone());
    tokio::pin!(draining);
    let candidate = loop {
        tokio::select! {
            () = &mut deadline => {
                return close_socket(&mut socket, close::AUTH_TIMEOUT, "no auth frame in time").await;
            }
            () = &mut draining => {
                return close_socket(&mut socket, close::GOING_AWAY, "server shutting down").await;
            }
            frame = socket.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    // Raw frames are never read back; only listed to be exhaustive.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Err(e)) if is_too_big(&e) => {
                        return close_socket(&mut socket, close::TOO_BIG, "message too big").await;
                    }
                    Some(Ok(Message::Close(_))) => return answer_close(&mut socket).await,
                    None | Some(Err(_)) => return,
                    Some(Ok(Message::Binary(_))) => {
                        return close_socket(&mut socket, close::UNAUTHORIZED, "expected an auth frame").await;
                    }
                };
                let ticket = match protocol::parse(&text) {
                    Ok((_, Request::Auth { ticket })) => ticket,
                    _ => return close_socket(&mut socket, close::UNAUTHORIZED, "expected an auth frame").await,
                };
                match handshake::consume(&node, &ticket, origin.as_deref()).await {
                    Ok(candidate) => break candidate,
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
    match handshake::admit(&node, candidate).await {
        Ok((admitted, principal)) => run(node, socket, admitted.hand_over(), principal).await,
        Err(crate::error::Error::TooManyConnections) => {
            close_socket(
                &mut socket,
                close::RATE_LIMITED,
                "too many connections for this user",
            )
            .await;
        }
        Err(crate::error::Error::Unavailable(_)) => {
            close_socket(&mut socket, close::TRY_AGAIN_LATER, "redis unavailable").await;
        }
        Err(_) => close_socket(&mut socket, close::UNAUTHORIZED, "invalid ticket").await,
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
    let bucket = TokenBucket::new(
        node.config.client_messages_per_sec,
        node.config.client_message_burst,
    );
    let mut conn = Connection {
        guard: Registration {
            node: node.clone(),
            id,
            user_id: principal.user_id,
            channels: HashSet::new(),
            presence: Vec::new(),
        },
        name: node.connection_name(id),
        node,
        socket,
        rx,
        handle,
        control,
        bucket,
        strikes: 0,
        principal,
        last_heard: Instant::now(),
        floors: HashMap::new(),
        replay: None,
    };
    match conn.serve().await {
        Ending::Close(code, reason) => close_socket(&mut conn.socket, code, reason).await,
        Ending::ClientClosed => answer_close(&mut conn.socket).await,
        Ending::Lost => {}
    }
}

/// How a connection's loop ended, and so what is left to do with its socket.
enum Ending {
    /// The node closes it, with this code and reason.
    Close(u16, &'static str),
    /// The client sent a close frame: the node answers it, then ends.
    ClientClosed,
    /// The connection is gone (end of stream, a read or write error):
    /// nothing more can be sent.
    Lost,
}

/// Undoes a connection's registrations however its task ends (even by panic):
/// hub membership at once, and in the background its cluster-wide traces
/// (per-user slot, directory entry, presence, with `leave` events).
struct Registration {
    node: NodeState,
    id: ConnId,
    user_id: Uuid,
    channels: HashSet<String>,
    presence: Vec<Membership>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        for channel in &self.channels {
            self.node.hub.leave(channel, self.id);
        }
        self.node.hub.unregister(self.id);
        self.node.forget_presence(&self.presence);
        let node = self.node.clone();
        let presence = std::mem::take(&mut self.presence);
        let name = self.node.connection_name(self.id);
        let user_id = self.user_id;
        let cleanup = node.cleanups.start();
        tokio::spawn(async move {
            let mut redis = node.redis.clone();
            for membership in &presence {
                let _ = presence::leave(&mut redis, &node.keys, membership).await;
            }
            forget_connection(node, user_id, name).await;
            drop(cleanup);
        });
    }
}

/// Removes a connection's cluster-wide traces (per-user slot, directory entry).
/// If Redis cannot be reached they lapse with their lease.
pub async fn forget_connection(node: NodeState, user_id: Uuid, name: String) {
    let mut redis = node.redis.clone();
    let mut pipe = redis::pipe();
    connections::add_removal(&mut pipe, &node.keys, user_id, &name);
    if let Err(e) = pipe.query_async::<()>(&mut redis).await {
        tracing::debug!(error = %e, "could not clear a closed connection's entries; their leases will expire");
    }
}

/// Writes again the per-user slots and directory entries of live connections
/// whose entries Redis lost (see [`shared::connections::renew`]).
pub async fn restore_connection_entries(node: &NodeState, lost: &[(ConnId, Uuid)]) {
    let ids: Vec<ConnId> = lost.iter().map(|(id, _)| *id).collect();
    let details = node.hub.connection_details(&ids);
    let lease = node.config.connection_lease();
    let mut pipe = redis::pipe();
    for (id, user_id) in lost {
        // Gone since the renewal's snapshot: nothing to restore.
        let Some((connected_at, channels)) = details.get(id) else {
            continue;
        };
        let name = node.connection_name(*id);
        let mut channels: Vec<&str> = channels.iter().map(String::as_str).collect();
        channels.sort_unstable();
        connections::add_slot(&mut pipe, &node.keys, *user_id, &name, lease);
        add_directory_entry(&mut pipe, node, &name, *user_id, *connected_at, &channels);
    }
    let mut redis = node.redis.clone();
    match pipe.query_async::<()>(&mut redis).await {
        Ok(()) => tracing::info!(
            restored = details.len(),
            "restored connection entries that redis had lost"
        ),
        Err(e) => tracing::warn!(error = %e, "could not restore lost connection entries"),
    }
}

/// Adds the writing of a connection's directory entry (what the control API
/// lists), leased, to `pipe`; no replies.
pub fn add_directory_entry(
    pipe: &mut redis::Pipeline,
    node: &NodeState,
    name: &str,
    user_id: Uuid,
    connected_at: u64,
    channels: &[&str],
) {
    let entry = connections::DirectoryEntry {
        connection: name,
        node: &node.node_id,
        user_id,
        connected_at,
        channels,
    };
    connections::add_directory_entry(pipe, &node.keys, &entry, node.config.connection_lease());
}

struct Connection {
    node: NodeState,
    /// `<node>:<id>`, as in the `welcome` frame.
    name: String,
    socket: WebSocket,
    rx: mpsc::Receiver<Arc<Delivery>>,
    handle: ConnHandle,
    control: Arc<ConnControl>,
    principal: Principal,
    bucket: TokenBucket,
    strikes: u32,
    last_heard: Instant,
    /// Per channel subscribed with `since`: the last offset replayed from
    /// history. Live copies of those messages (queued while the replay ran)
    /// are skipped, so the hand-over from history to live has no duplicate.
    floors: HashMap<String, u64>,
    /// A replay from history still in progress (boxed: idle connections pay
    /// one pointer for it).
    replay: Option<Box<Replay>>,
    guard: Registration,
}

/// The rest of a `since` replay, sent a page at a time after the `ack`.
struct Replay {
    channel: ChannelName,
    epoch: String,
    /// The last offset replayed so far.
    sent: u64,
    /// The channel's offset when the replay began; later ones arrive live.
    until: u64,
    /// The most messages history is asked for (the namespace's bound).
    cap: u64,
    /// The stream id of the last message replayed: the next page starts there.
    after_id: Option<String>,
}

/// Messages read from history and written per page of a replay: what one
/// replay holds in memory at most.
const REPLAY_PAGE: u64 = 256;

/// How a request went: a reply to send, or a close code to end with.
type Outcome = Result<Vec<String>, (u16, &'static str)>;

impl Connection {
    /// The connection's main loop; returns the close code to send, if any.
    async fn serve(&mut self) -> Ending {
        let own_channel = ChannelName::for_user(self.principal.user_id);
        if self
            .node
            .hub
            .join(&own_channel, &self.handle)
            .await
            .is_err()
        {
            return Ending::Close(close::TRY_AGAIN_LATER, "cannot subscribe right now");
        }
        self.guard.channels.insert(own_channel.as_str().to_owned());
        let welcome = ServerFrame::Welcome {
            connection_id: &self.name,
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
        // One timer per connection (each costs memory and a timer-wheel entry),
        // reset to the earliest of: the next ping, the credential's end.
        // (Re-validation against revocations runs node-wide, in one pipeline;
        // see `revalidate_connections` in lib.rs.)
        let ping_interval = self.node.config.ping_interval();
        let mut next_ping = Instant::now() + ping_interval;
        let expires = self
            .principal
            .expires_at
            .map(|at| Instant::now() + Duration::from_secs(at.saturating_sub(shared::unix_now())));
        let next_wake = |ping: Instant| expires.map_or(ping, |e| ping.min(e));
        let timer = tokio::time::sleep_until(next_wake(next_ping).into());
        tokio::pin!(timer);
        // When the last ping went out; a peer is only reaped after it had a ping to answer.
        let mut ping_sent: Option<Instant> = None;
        // One close-request future for the whole loop: creating one per
        // iteration would register and unregister with the Notify every time.
        let control = self.control.clone();
        let closed = control.closed();
        tokio::pin!(closed);
        let mut flush_tick = self.node.coalescing.tick.clone();
        loop {
            tokio::select! {
                biased;
                code = &mut closed => return Ending::Close(code, close_reason(code)),
                () = &mut draining => return Ending::Close(close::GOING_AWAY, "node shutting down"),
                delivery = self.rx.recv() => {
                    let Some(delivery) = delivery else { return Ending::Lost };
                    // Under heavy load, write on the node's next flush tick
                    // rather than at once: what queues meanwhile goes out in
                    // the same write (one syscall for many messages).
                    if self.node.coalescing.is_on() {
                        flush_tick.borrow_and_update();
                        tokio::select! {
                            biased;
                            code = &mut closed => return Ending::Close(code, close_reason(code)),
                            _ = flush_tick.changed() => {}
                        }
                    }
                    // A peer that stopped reading blocks the write; a close
                    // request (slow consumer, revocation) must still get through.
                    tokio::select! {
                        biased;
                        code = &mut closed => return Ending::Close(code, close_reason(code)),
                        written = self.write_batch(delivery) => {
                            if written.is_err() {
                                return Ending::Lost;
                            }
                        }
                    }
                }
                frame = self.socket.next() => {
                    self.last_heard = Instant::now();
                    match frame {
                        // Boxed: handling a request awaits Redis through deep
                        // futures; inline they would sit in every idle
                        // connection's task, boxed only while a request runs.
                        Some(Ok(Message::Text(text))) => match Box::pin(self.on_text(&text)).await {
                            Ok(replies) => {
                                for reply in replies {
                                    if let Err(stop) = self.send(Message::Text(reply.into())).await {
                                        return stop;
                                    }
                                }
                                // A long `since` replay goes on a page at a time.
                                while let Some(replay) = self.replay.take() {
                                    for frame in Box::pin(self.replay_page(replay)).await {
                                        if let Err(stop) = self.send(Message::Text(frame.into())).await {
                                            return stop;
                                        }
                                    }
                                }
                            }
                            Err((code, reason)) => return Ending::Close(code, reason),
                        },
                        Some(Ok(Message::Binary(_))) => {
                            let reply = protocol::error(None, "unsupported", "binary frames are not supported; send JSON text");
                            if let Err(stop) = self.send(Message::Text(reply.into())).await {
                                return stop;
                            }
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                        Some(Ok(Message::Close(_))) => return Ending::ClientClosed,
                        None => return Ending::Lost,
                        Some(Err(e)) => {
                            return if is_too_big(&e) {
                                Ending::Close(close::TOO_BIG, "message too big")
                            } else {
                                Ending::Lost
                            };
                        }
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if expires.is_some_and(|e| now >= e) {
                        return Ending::Close(close::UNAUTHORIZED, "credential expired");
                    }
                    if now >= next_ping {
                        next_ping = now + ping_interval;
                        let unanswered = ping_sent.is_some_and(|sent| self.last_heard < sent);
                        if unanswered && self.last_heard.elapsed() > self.node.config.idle_timeout() {
                            metrics::counter!(crate::telemetry::IDLE_TIMEOUTS).increment(1);
                            return Ending::Close(close::GOING_AWAY, "idle timeout");
                        }
                        if !unanswered {
                            ping_sent = Some(now);
                        }
                        if let Err(stop) = self.send(Message::Ping(bytes::Bytes::new())).await {
                            return stop;
                        }
                    }
                    timer.as_mut().reset(next_wake(next_ping).into());
                }
            }
        }
    }

    /// Sends one frame, unless a close is requested while the peer is not reading.
    async fn send(&mut self, message: Message) -> Result<(), Ending> {
        let control = self.control.clone();
        tokio::select! {
            biased;
            code = control.closed() => Err(Ending::Close(code, close_reason(code))),
            sent = self.socket.send(message) => sent.map_err(|_| Ending::Lost),
        }
    }

    /// Writes `first` and whatever else is already queued, then flushes once.
    async fn write_batch(
        &mut self,
        first: Arc<Delivery>,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        // The batch's oldest message: its delay is the batch's longest.
        let sampled_at = first.sampled_at;
        let mut next = Some(first);
        let mut written = 0;
        while let Some(delivery) = next.take() {
            if self.admit(&delivery) {
                self.socket
                    .feed(Message::Text(delivery.frame.clone()))
                    .await?;
                written += 1;
            }
            if written < MAX_BATCH {
                next = self.rx.try_recv().ok();
            }
        }
        self.socket.flush().await?;
        if let Some(dispatched) = sampled_at {
            metrics::histogram!(crate::telemetry::FANOUT_LATENCY)
                .record(dispatched.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Whether a delivery goes out: not if history already replayed it.
    fn admit(&mut self, delivery: &Delivery) -> bool {
        if self.floors.is_empty() {
            return true;
        }
        let Some(floor) = self.floors.get(&*delivery.channel).copied() else {
            return true;
        };
        match delivery.offset {
            Some(offset) if offset <= floor => false,
            // Past the replay: live from here on.
            Some(_) => {
                self.floors.remove(&*delivery.channel);
                true
            }
            None => {
                if delivery.resets {
                    self.floors.remove(&*delivery.channel);
                }
                true
            }
        }
    }

    /// Handles one client frame: replies to send, or a reason to close.
    async fn on_text(&mut self, text: &Utf8Bytes) -> Outcome {
        if !self.bucket.try_take() {
            self.strikes += 1;
            metrics::counter!(crate::telemetry::RATE_LIMITED_FRAMES).increment(1);
            if self.strikes > RATE_STRIKES {
                return Err((close::RATE_LIMITED, "message rate exceeded"));
            }
            return Ok(vec![protocol::error(
                None,
                "rate_limited",
                "too many messages; slow down",
            )]);
        }
        self.strikes = 0;
        let (id, request) = match protocol::parse(text) {
            Ok(parsed) => parsed,
            Err(bad) => {
                return Ok(vec![protocol::error(
                    bad.id.as_ref(),
                    bad.code,
                    &bad.message,
                )]);
            }
        };
        let id = id.as_ref();
        Ok(match request {
            Request::Ping => vec![protocol::ack(id)],
            Request::Auth { .. } => vec![protocol::error(
                id,
                "already_authenticated",
                "this connection is already authenticated",
            )],
            Request::Subscribe { channel, since } => self.subscribe(id, channel, since).await,
            Request::Unsubscribe { channel } => vec![self.unsubscribe(id, &channel).await],
            Request::Publish {
                channel,
                data,
                idempotency_key,
            } => vec![
                self.publish(id, &channel, data, idempotency_key.as_deref())
                    .await,
            ],
            Request::Presence { channel } => vec![self.presence(id, &channel).await],
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

    /// The namespace rule of `channel` if this connection may subscribe to it.
    fn readable_rule(
        &self,
        channel: &ChannelName,
    ) -> Result<NamespaceRule, (&'static str, &'static str)> {
        let rule = self
            .node
            .namespaces
            .rule_for(channel)
            .ok_or(("unknown_namespace", "no such channel namespace"))?;
        if !self.admits(rule.subscribe, channel) {
            return Err(("forbidden", "you may not subscribe to this channel"));
        }
        Ok(rule.clone())
    }

    async fn subscribe(
        &mut self,
        id: Option<&RequestId>,
        channel: ChannelName,
        since: Option<Since>,
    ) -> Vec<String> {
        let rule = match self.readable_rule(&channel) {
            Ok(rule) => rule,
            Err((code, message)) => return vec![protocol::error(id, code, message)],
        };
        let already = self.guard.channels.contains(channel.as_str());
        if !already {
            // The connection's own user channel is not counted against the limit.
            if self.guard.channels.len() > self.node.config.max_subscriptions_per_connection {
                return vec![protocol::error(
                    id,
                    "too_many_subscriptions",
                    "subscription limit reached",
                )];
            }
            if self.node.hub.join(&channel, &self.handle).await.is_err() {
                return vec![protocol::error(
                    id,
                    "unavailable",
                    "cannot subscribe right now; retry later",
                )];
            }
            self.guard.channels.insert(channel.as_str().to_owned());
            self.publish_directory_entry().await;
            if rule.presence {
                let membership = Membership::new(
                    channel.clone(),
                    self.principal.user_id,
                    &self.principal.username,
                    &self.name,
                );
                let mut redis = self.node.redis.clone();
                match presence::join(
                    &mut redis,
                    &self.node.keys,
                    &membership,
                    self.node.config.connection_lease(),
                )
                .await
                {
                    Ok(()) => {
                        self.node.remember_presence(&membership);
                        self.guard.presence.push(membership);
                    }
                    Err(e) => tracing::warn!(error = %e, "could not record presence"),
                }
            }
        }
        let Some(since) = since else {
            return vec![ack_subscribed(id, &channel, None, None)];
        };
        // Recovery: everything after `since` from history, then live. The
        // subscription is already live, so nothing published from now on is
        // missed; what the replay covers is skipped when it arrives live.
        let Some(limits) = rule.history else {
            return vec![ack_subscribed(id, &channel, Some(false), None)];
        };
        let cap = limits.max_len.saturating_mul(2).max(100);
        let mut redis = self.node.redis.clone();
        let history = match shared::channel::history_page(
            &mut redis,
            &self.node.keys,
            &channel,
            since.offset,
            cap,
            REPLAY_PAGE,
            None,
        )
        .await
        {
            Ok(history) => history,
            Err(_) => {
                // Not subscribed half-way: the client retries the whole
                // subscribe-with-`since`, and a channel it had already is kept.
                if !already {
                    self.leave_channel(&channel).await;
                }
                return vec![protocol::error(
                    id,
                    "unavailable",
                    "cannot read the channel history right now; retry",
                )];
            }
        };
        let recovered = history.covers_page(&since.epoch, since.offset, REPLAY_PAGE);
        metrics::counter!(crate::telemetry::RECOVERIES, "recovered" => if recovered { "true" } else { "false" }).increment(1);
        let position = history.epoch.clone().map(|epoch| StreamPosition {
            epoch,
            offset: history.offset,
        });
        let mut replies = vec![ack_subscribed(
            id,
            &channel,
            Some(recovered),
            position.as_ref(),
        )];
        if let Some(position) = &position {
            self.floors
                .insert(channel.as_str().to_owned(), position.offset);
            if recovered {
                let replay = Box::new(Replay {
                    channel,
                    epoch: position.epoch.clone(),
                    sent: since.offset,
                    until: position.offset,
                    cap,
                    after_id: None,
                });
                replies.extend(self.take_page(replay, history));
            }
        }
        replies
    }

    /// The next page of a replay; queues the rest, if any. If history no longer
    /// holds what comes next (trimmed meanwhile, or Redis lost it), the client
    /// is told with a `recovery` notice instead of being left with a gap.
    async fn replay_page(&mut self, replay: Box<Replay>) -> Vec<String> {
        let mut redis = self.node.redis.clone();
        let page = shared::channel::history_page(
            &mut redis,
            &self.node.keys,
            &replay.channel,
            replay.sent,
            replay.cap,
            REPLAY_PAGE,
            replay.after_id.as_deref(),
        )
        .await;
        match page {
            Ok(page) if page.covers_page(&replay.epoch, replay.sent, REPLAY_PAGE) => {
                self.take_page(replay, page)
            }
            _ => {
                metrics::counter!(crate::telemetry::UNRECOVERABLE_GAPS).increment(1);
                vec![protocol::recovery_lost(replay.channel.as_str())]
            }
        }
    }

    /// The frames of one (checked) page of a replay, up to its `until`; queues
    /// the rest of the replay, if any.
    fn take_page(&mut self, mut replay: Box<Replay>, page: HistorySince) -> Vec<String> {
        let mut frames = Vec::with_capacity(page.messages.len());
        for (offset, data) in &page.messages {
            if *offset > replay.until {
                break;
            }
            let at = StreamPosition {
                epoch: replay.epoch.clone(),
                offset: *offset,
            };
            frames.push(frame::message(&replay.channel, Some(&at), data));
            replay.sent = *offset;
        }
        if replay.sent < replay.until && !frames.is_empty() {
            replay.after_id = page.last_id;
            self.replay = Some(replay);
        }
        frames
    }

    async fn unsubscribe(&mut self, id: Option<&RequestId>, channel: &ChannelName) -> String {
        if *channel == ChannelName::for_user(self.principal.user_id) {
            return protocol::error(
                id,
                "forbidden",
                "a connection always receives its own user channel",
            );
        }
        self.leave_channel(channel).await;
        protocol::ack(id)
    }

    /// Leaves `channel` (a no-op if not a member): the hub, the directory
    /// entry and presence.
    async fn leave_channel(&mut self, channel: &ChannelName) {
        if self.guard.channels.remove(channel.as_str()) {
            self.node.hub.leave(channel.as_str(), self.handle.id);
            self.floors.remove(channel.as_str());
            self.publish_directory_entry().await;
            if let Some(i) = self
                .guard
                .presence
                .iter()
                .position(|m| m.channel == *channel)
            {
                let membership = self.guard.presence.swap_remove(i);
                self.node.forget_presence(std::slice::from_ref(&membership));
                let mut redis = self.node.redis.clone();
                if let Err(e) = presence::leave(&mut redis, &self.node.keys, &membership).await {
                    tracing::debug!(error = %e, "could not clear presence; its lease will expire");
                }
            }
        }
    }

    async fn publish(
        &mut self,
        id: Option<&RequestId>,
        channel: &ChannelName,
        data: &RawValue,
        idempotency_key: Option<&str>,
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
        match shared::channel::publish(
            &mut redis,
            &self.node.keys,
            channel,
            data,
            rule.history,
            idempotency_key,
        )
        .await
        {
            Ok(published) => {
                metrics::counter!(crate::telemetry::CLIENT_PUBLISHES).increment(1);
                let mut ack = serde_json::json!({ "type": "ack", "channel": channel.as_str() });
                if let Some(id) = id {
                    ack["id"] = serde_json::to_value(id).unwrap_or_default();
                }
                if let Some(position) = published.position {
                    ack["epoch"] = position.epoch.into();
                    ack["offset"] = position.offset.into();
                }
                if published.duplicate {
                    ack["duplicate"] = true.into();
                }
                ack.to_string()
            }
            Err(PublishError::IdempotencyWithoutHistory) => protocol::error(
                id,
                "idempotency_unsupported",
                "idempotency keys need a channel with history",
            ),
            Err(PublishError::InvalidIdempotencyKey) => protocol::error(
                id,
                "bad_request",
                "idempotency_key must be 1-64 printable ASCII characters",
            ),
            Err(PublishError::Redis(e)) => {
                tracing::warn!(error = %e, "publish failed");
                protocol::error(
                    id,
                    "unavailable",
                    "the message could not be published; retry",
                )
            }
        }
    }

    async fn presence(&mut self, id: Option<&RequestId>, channel: &ChannelName) -> String {
        let rule = match self.readable_rule(channel) {
            Ok(rule) => rule,
            Err((code, message)) => return protocol::error(id, code, message),
        };
        if !rule.presence {
            return protocol::error(
                id,
                "presence_disabled",
                "this channel namespace does not track presence",
            );
        }
        let mut redis = self.node.redis.clone();
        match presence::members(&mut redis, &self.node.keys, channel).await {
            Ok(members) => ServerFrame::Presence {
                id,
                channel: channel.as_str(),
                members: &members,
            }
            .to_json(),
            Err(_) => protocol::error(
                id,
                "unavailable",
                "presence is unavailable right now; retry",
            ),
        }
    }

    /// Rewrites this connection's directory entry after its channels changed.
    /// Best effort: the directory is informational.
    async fn publish_directory_entry(&mut self) {
        let mut channels: Vec<&str> = self.guard.channels.iter().map(String::as_str).collect();
        channels.sort_unstable();
        let mut pipe = redis::pipe();
        add_directory_entry(
            &mut pipe,
            &self.node,
            &self.name,
            self.principal.user_id,
            self.control.connected_at,
            &channels,
        );
        let mut redis = self.node.redis.clone();
        if let Err(e) = pipe.query_async::<()>(&mut redis).await {
            tracing::debug!(error = %e, "could not update the connection directory");
        }
    }
}

fn close_reason(code: u16) -> &'static str {
    match code {
        close::FORBIDDEN => "credential revoked or disconnected by the server",
        close::RATE_LIMITED => "too slow a consumer",
        _ => "closed by the server",
    }
}

fn ack_subscribed(
    id: Option<&RequestId>,
    channel: &ChannelName,
    recovered: Option<bool>,
    position: Option<&StreamPosition>,
) -> String {
    ServerFrame::Ack {
        id,
        channel: Some(channel.as_str()),
        recovered,
        epoch: position.map(|p| p.epoch.as_str()),
        offset: position.map(|p| p.offset),
    }
    .to_json()
}

/// Whether a read error was the message size limit (answered with 1009).
fn is_too_big(e: &tokio_tungstenite::tungstenite::Error) -> bool {
    matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_))
}

/// Completes a close the client started. tungstenite queued the echo of the
/// client's close frame (same code) when it read it; flushing sends it, and
/// then the node ends the TCP connection (RFC 6455 §7.1.1: the server closes
/// first), all within [`CLOSE_TIMEOUT`]. Without the echo, every clean close
/// reads as 1006 (`wasClean: false`) to the client, as if the network had
/// failed.
async fn answer_close(socket: &mut WebSocket) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, futures_util::SinkExt::close(socket)).await;
}

/// Closes the WebSocket properly: sends the close frame, then reads (and
/// discards) until the peer's close reply, all within [`CLOSE_TIMEOUT`]. Just
/// dropping the socket would make the kernel answer with a reset if the peer
/// still had data in flight, and a reset can destroy the close frame (and its
/// code, which tells the client what to do) before the client reads it.
async fn close_socket(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
    let frame = Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: Utf8Bytes::from_static(reason),
    }));
    if !matches!(
        tokio::time::timeout_at(deadline, socket.send(frame)).await,
        Ok(Ok(()))
    ) {
        return;
    }
    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, socket.next()).await {}
}

//! One WebSocket connection: a task that `select!`s over the client's frames,
//! the deliveries the hub queued for it, the heartbeat, close requests
//! (revocation, slow consumer) and the node's shutdown.
//!
//! Deliveries are written in batches (`feed` what is queued, one `flush`), so
//! a busy connection costs one syscall per batch, not per message. The queue is
//! bounded: a client that does not read fills it and is closed with 4008,
//! while everyone else keeps receiving and memory stays flat. Every write has
//! a deadline (`write.rs`), so a client that stops reading cannot hold the
//! connection's task or what it buffered either.

mod rate;
mod replay;
mod requests;
mod write;

use crate::cluster::hub::{ConnControl, ConnHandle, ConnId, Delivery};
use crate::cluster::presence::{self, Membership};
use crate::cluster::registry;
use crate::handshake::Principal;
use crate::protocol::{CloseReason, RequestError, ServerFrame, UserInfo};
use crate::state::NodeState;
use crate::transport::closing::{answer_close, close_socket, read_failure};
use crate::transport::stream::Socket;
use futures_util::{FutureExt as _, StreamExt as _};
use rate::TokenBucket;
use replay::Replay;
use shared::channel::ChannelName;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use uuid::Uuid;

/// Deliveries written per flush at most (bounds one batch's latency).
const MAX_BATCH: usize = 256;

/// Publishes of one connection sent to Redis together at most.
const MAX_PUBLISH_BATCH: usize = 64;

/// The connection's next frame: the one held back while gathering
/// publishes, if any, else the socket's next.
async fn next_frame(
    held_back: &mut Option<Box<Option<Result<Message, WsError>>>>,
    socket: &mut Socket,
) -> Option<Result<Message, WsError>> {
    match held_back.take() {
        Some(frame) => *frame,
        None => socket.next().await,
    }
}

/// Serves an authenticated socket until it closes. The caller has already
/// taken the connection's place against the per-user cap.
pub async fn run(node: NodeState, socket: Socket, id: ConnId, principal: Principal) {
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
    let expires = principal
        .expires_at
        .map(|at| Instant::now() + Duration::from_secs(at.saturating_sub(shared::unix_now())));
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
        history_reads: None,
        principal,
        expires,
        last_heard: Instant::now(),
        floors: HashMap::new(),
        replay: None,
        held_back: None,
    };
    match conn.serve().await {
        Ending::Close(reason) => close_socket(&mut conn.socket, reason).await,
        Ending::ClientClosed => answer_close(&mut conn.socket).await,
        Ending::Lost => {}
    }
}

/// How a connection's loop ended, and so what is left to do with its socket.
enum Ending {
    /// The node closes it, for this reason.
    Close(CloseReason),
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
    channels: HashSet<ChannelName>,
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
            registry::forget_connection(node, user_id, name).await;
            drop(cleanup);
        });
    }
}

struct Connection {
    node: NodeState,
    /// `<node>:<id>`, as in the `welcome` frame.
    name: String,
    socket: Socket,
    rx: mpsc::Receiver<Arc<Delivery>>,
    handle: ConnHandle,
    control: Arc<ConnControl>,
    principal: Principal,
    /// When the credential ends (a session's absolute expiry), if it does.
    expires: Option<Instant>,
    bucket: TokenBucket,
    strikes: u32,
    /// History reads (subscriptions with `since`, replay pages), made on
    /// first use: most connections never read history.
    history_reads: Option<Box<TokenBucket>>,
    last_heard: Instant,
    /// Per channel subscribed with `since`: the last offset replayed from
    /// history. Live copies of those messages (queued while the replay ran)
    /// are skipped, so the hand-over from history to live has no duplicate.
    floors: HashMap<ChannelName, u64>,
    /// A replay from history still in progress (boxed: idle connections pay
    /// one pointer for it).
    replay: Option<Box<Replay>>,
    /// A frame read while gathering publishes that was not one of them: the
    /// next frame the loop handles (boxed, as `replay`).
    held_back: Option<Box<Option<Result<Message, WsError>>>>,
    guard: Registration,
}

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
            return Ending::Close(CloseReason::RedisUnavailable);
        }
        self.guard.channels.insert(own_channel);
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
        // (Re-validation against revocations runs node-wide, in one pipeline:
        // see `cluster::revalidation`.)
        let ping_interval = self.node.config.ping_interval();
        let mut next_ping = Instant::now() + ping_interval;
        let expires = self.expires;
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
                reason = &mut closed => return Ending::Close(reason),
                () = &mut draining => return Ending::Close(CloseReason::ShuttingDown),
                delivery = self.rx.recv(), if self.replay.is_none() => {
                    let Some(delivery) = delivery else { return Ending::Lost };
                    // Under heavy load, write on the node's next flush tick
                    // rather than at once: what queues meanwhile goes out in
                    // the same write (one syscall for many messages).
                    if self.node.coalescing.is_on() {
                        flush_tick.borrow_and_update();
                        tokio::select! {
                            biased;
                            reason = &mut closed => return Ending::Close(reason),
                            _ = flush_tick.changed() => {}
                        }
                    }
                    // A peer that stopped reading blocks the write; a close
                    // request (slow consumer, revocation, drain) must still
                    // get through, and the deadline ends the wait.
                    let deadline = match self.write_deadline() {
                        Ok(deadline) => deadline,
                        Err(stop) => return stop,
                    };
                    let written = self.write_batch(delivery);
                    if let Err(stop) = write::guarded(&mut closed, deadline, expires, written).await {
                        return stop;
                    }
                }
                frame = next_frame(&mut self.held_back, &mut self.socket), if self.replay.is_none() => {
                    self.last_heard = Instant::now();
                    if let Some(Ok(message)) = &frame {
                        match self.within_rate(message).await {
                            Ok(true) => {}
                            Ok(false) => continue,
                            Err(stop) => return stop,
                        }
                    }
                    match frame {
                        // Boxed: handling a request awaits Redis through deep
                        // futures; inline they would sit in every idle
                        // connection's task, boxed only while a request runs.
                        // Publishes already waiting behind this one go to
                        // Redis with it, in one round trip.
                        Some(Ok(Message::Text(text))) if requests::is_publish(&text) => {
                            let batch = self.gather_publishes(text);
                            let replies = Box::pin(self.on_publishes(&batch)).await;
                            if let Err(stop) = self.send_all(replies).await {
                                return stop;
                            }
                        }
                        Some(Ok(Message::Text(text))) => match Box::pin(self.on_text(&text)).await {
                            // With a `since`, the replies hold the replay's
                            // first page; the rest goes a page per turn (the
                            // last branch).
                            Ok(replies) => {
                                if let Err(stop) = self.send_all(replies).await {
                                    return stop;
                                }
                            }
                            Err(reason) => return Ending::Close(reason),
                        },
                        Some(Ok(Message::Binary(_))) => {
                            let reply = RequestError::Unsupported.frame(None);
                            if let Err(stop) = self.send(Message::Text(reply.into())).await {
                                return stop;
                            }
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                        Some(Ok(Message::Close(_))) => return Ending::ClientClosed,
                        None => return Ending::Lost,
                        Some(Err(e)) => return read_failure(&e).map_or(Ending::Lost, Ending::Close),
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if expires.is_some_and(|e| now >= e) {
                        return Ending::Close(CloseReason::CredentialExpired);
                    }
                    if now >= next_ping {
                        next_ping = now + ping_interval;
                        let unanswered = ping_sent.is_some_and(|sent| self.last_heard < sent);
                        if unanswered && self.last_heard.elapsed() > self.node.config.idle_timeout() {
                            metrics::counter!(crate::telemetry::IDLE_TIMEOUTS).increment(1);
                            return Ending::Close(CloseReason::IdleTimeout);
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
                // A long `since` replay goes on a page per turn, so that the
                // heartbeat, expiry, close requests and the drain act between
                // pages. Deliveries and client frames wait until it ends: its
                // channel's live messages must follow it.
                () = std::future::ready(()), if self.replay.is_some() => {
                    if let Err(stop) = self.replay_step().await {
                        return stop;
                    }
                }
            }
        }
    }

    /// Takes one history read from the connection's allowance
    /// (`HISTORY_READS_PER_SEC`, `HISTORY_READ_BURST`), if there is one:
    /// a history read costs Redis in proportion to the page's bytes.
    fn take_history_read(&mut self) -> bool {
        let config = &self.node.config;
        self.history_reads
            .get_or_insert_with(|| {
                Box::new(TokenBucket::new(
                    config.history_reads_per_sec,
                    config.history_read_burst,
                ))
            })
            .try_take()
    }

    /// `first` and the publish requests that already wait behind it on the
    /// socket, up to [`MAX_PUBLISH_BATCH`], each counted against the message
    /// rate. The first other frame (or a publish over the rate, which the
    /// loop then refuses as usual) is held back for the loop.
    fn gather_publishes(&mut self, first: Utf8Bytes) -> Vec<Utf8Bytes> {
        let mut batch = vec![first];
        while batch.len() < MAX_PUBLISH_BATCH {
            let Some(frame) = self.socket.next().now_or_never() else {
                break;
            };
            match frame {
                Some(Ok(Message::Text(text)))
                    if requests::is_publish(&text) && self.bucket.try_take() =>
                {
                    self.strikes = 0;
                    self.last_heard = Instant::now();
                    batch.push(text);
                }
                other => {
                    self.held_back = Some(Box::new(other));
                    break;
                }
            }
        }
        batch
    }

    /// Whether a delivery goes out: not if history already replayed it.
    fn admit(&mut self, delivery: &Delivery) -> bool {
        if self.floors.is_empty() {
            return true;
        }
        let Some(floor) = self.floors.get(&delivery.channel).copied() else {
            return true;
        };
        match delivery.offset {
            Some(offset) if offset <= floor => false,
            // Past the replay: live from here on.
            Some(_) => {
                self.floors.remove(&delivery.channel);
                true
            }
            None => {
                if delivery.resets {
                    self.floors.remove(&delivery.channel);
                }
                true
            }
        }
    }
}

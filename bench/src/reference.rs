//! The reference: a minimal broadcast server, measured in the same run as the
//! stack so that every fan-out, latency and handshake figure has a yardstick
//! taken on the same machine at the same time. These VMs differ by 2–3×
//! from one session to the next; a ratio to this server does not.
//!
//! It is what a competent engineer writes for the job in one sitting, with
//! no authentication, no Redis and no history: one process, tokio-tungstenite,
//! each message serialised once and its bytes queued to every member's task,
//! which writes what is queued and flushes once. It speaks just enough of
//! tessera's protocol for the bench's clients to drive it unchanged:
//!
//! - `POST /v1/tickets` answers `201 {"ticket": …}` (any `Authorization`);
//!   the ticket is kept in memory and spent by the upgrade, once.
//! - `GET /ws?ticket=…` upgrades and sends a `welcome` frame.
//! - `subscribe` and `publish` frames are acknowledged with `ack`; a publish
//!   goes to the channel's members as `{"type":"message","channel":…,"data":…}`.
//! - `GET /readyz` answers 200, so the harness waits for it like for a node.
//!
//! A member whose queue is full is dropped from the channel and closed with
//! 4008, as tessera closes a slow consumer: nobody waits for it.

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes, handshake::derive_accept_key};

/// Frames queued per connection before it counts as too slow (tessera's
/// `SEND_QUEUE_FRAMES` default).
const QUEUE_FRAMES: usize = 1024;
/// Frames written per flush at most.
const MAX_BATCH: usize = 256;

/// Entry point of `tessera-bench reference --listen ADDR`.
pub fn main(listen: SocketAddr) -> anyhow::Result<()> {
    rlimit::increase_nofile_limit(u64::MAX).context("raising the open-file limit")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let server = Arc::new(Server::default());
        loop {
            let (stream, _) = listener.accept().await?;
            let server = server.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let _ = serve_http(server, stream).await;
            });
        }
    })
}

#[derive(Default)]
struct Server {
    tickets: Mutex<HashSet<String>>,
    channels: RwLock<HashMap<String, Vec<Member>>>,
    next_id: AtomicU64,
}

#[derive(Clone)]
struct Member {
    id: u64,
    tx: mpsc::Sender<Utf8Bytes>,
    /// Woken when the member is dropped for being too slow.
    kick: Arc<Notify>,
}

/// Answers HTTP requests on one kept-alive connection until it upgrades.
async fn serve_http(server: Arc<Server>, mut stream: TcpStream) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let (len, request) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            if let httparse::Status::Complete(len) = req.parse(&buf)? {
                break (len, Request::from(&req));
            }
            if buf.len() > 16 * 1024 || stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        buf.drain(..len);
        match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/v1/tickets") => {
                let ticket = format!("{:032x}", rand::random::<u128>());
                let body = format!(r#"{{"ticket":"{ticket}","expires_in":30}}"#);
                server
                    .tickets
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(ticket);
                respond(&mut stream, "201 Created", &body).await?;
            }
            ("GET", "/readyz") => respond(&mut stream, "200 OK", r#"{"status":"ready"}"#).await?,
            ("GET", "/ws") => {
                let spent = request.ticket.as_ref().is_some_and(|t| {
                    server
                        .tickets
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(t)
                });
                let Some(key) = request.websocket_key.filter(|_| spent) else {
                    respond(&mut stream, "401 Unauthorized", r#"{"error":"ticket"}"#).await?;
                    return Ok(());
                };
                let head = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                     Upgrade: websocket\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    derive_accept_key(key.as_bytes())
                );
                stream.write_all(head.as_bytes()).await?;
                let ws =
                    WebSocketStream::from_partially_read(stream, buf, Role::Server, None).await;
                return serve_socket(server, ws).await;
            }
            _ => respond(&mut stream, "404 Not Found", r#"{"error":"not_found"}"#).await?,
        }
    }
}

/// The parts of a request head the reference looks at.
struct Request {
    method: String,
    path: String,
    ticket: Option<String>,
    websocket_key: Option<String>,
}

impl From<&httparse::Request<'_, '_>> for Request {
    fn from(req: &httparse::Request<'_, '_>) -> Self {
        let target = req.path.unwrap_or("/");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Self {
            method: req.method.unwrap_or("").to_owned(),
            path: path.to_owned(),
            ticket: query
                .split('&')
                .find_map(|pair| pair.strip_prefix("ticket="))
                .map(str::to_owned),
            websocket_key: req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(|v| v.trim().to_owned()),
        }
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await
}

/// A client frame, with only what the reference acts on.
#[derive(Deserialize)]
struct ClientFrame<'a> {
    action: &'a str,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

/// Serves one WebSocket: its requests, and the frames queued for it.
async fn serve_socket(
    server: Arc<Server>,
    mut ws: WebSocketStream<TcpStream>,
) -> anyhow::Result<()> {
    let id = server.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(QUEUE_FRAMES);
    let kick = Arc::new(Notify::new());
    let me = Member {
        id,
        tx,
        kick: kick.clone(),
    };
    let mut joined: Vec<String> = Vec::new();
    let welcome = format!(
        r#"{{"type":"welcome","connection_id":"reference:{id}","user":{{"id":"00000000-0000-0000-0000-000000000000","username":"reference"}},"node":"reference"}}"#
    );
    ws.send(Message::text(welcome)).await?;
    let result = async {
        loop {
            tokio::select! {
                () = kick.notified() => {
                    let close = CloseFrame { code: CloseCode::from(4008), reason: "slow consumer".into() };
                    let _ = ws.close(Some(close)).await;
                    return Ok(());
                }
                frame = rx.recv() => {
                    let Some(frame) = frame else { return Ok(()) };
                    ws.feed(Message::Text(frame)).await?;
                    for _ in 1..MAX_BATCH {
                        let Ok(frame) = rx.try_recv() else { break };
                        ws.feed(Message::Text(frame)).await?;
                    }
                    ws.flush().await?;
                }
                message = ws.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        let reply = handle(&server, &me, &mut joined, text.as_str());
                        ws.send(Message::text(reply)).await?;
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                    Some(Ok(_)) => {}
                },
            }
        }
    }
    .await;
    let mut channels = server.channels.write().unwrap_or_else(|e| e.into_inner());
    for name in joined {
        if let Some(members) = channels.get_mut(&name) {
            members.retain(|m| m.id != id);
            if members.is_empty() {
                channels.remove(&name);
            }
        }
    }
    result
}

/// Acts on one client frame; returns the reply.
fn handle(server: &Server, me: &Member, joined: &mut Vec<String>, text: &str) -> String {
    let Ok(frame) = serde_json::from_str::<ClientFrame<'_>>(text) else {
        return r#"{"type":"error","code":"bad_request"}"#.to_owned();
    };
    let id = frame.id.unwrap_or(0);
    let ack = format!(r#"{{"type":"ack","id":{id}}}"#);
    match (frame.action, frame.channel) {
        ("subscribe", Some(channel)) => {
            if !joined.contains(&channel) {
                let mut channels = server.channels.write().unwrap_or_else(|e| e.into_inner());
                channels
                    .entry(channel.clone())
                    .or_default()
                    .push(me.clone());
                joined.push(channel);
            }
            ack
        }
        ("publish", Some(channel)) => {
            let data = frame.data.map_or("null", RawValue::get);
            let name = serde_json::to_string(&channel).unwrap_or_default();
            let message = Utf8Bytes::from(format!(
                r#"{{"type":"message","channel":{name},"data":{data}}}"#
            ));
            broadcast(server, &channel, &message);
            ack
        }
        _ => format!(r#"{{"type":"error","id":{id},"code":"bad_request"}}"#),
    }
}

/// Queues `message` to every member of `channel`; drops the ones that are full.
fn broadcast(server: &Server, channel: &str, message: &Utf8Bytes) {
    let mut slow = Vec::new();
    if let Some(members) = server
        .channels
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(channel)
    {
        for member in members {
            if let Err(mpsc::error::TrySendError::Full(_)) = member.tx.try_send(message.clone()) {
                slow.push(member.id);
                member.kick.notify_one();
            }
        }
    }
    if !slow.is_empty() {
        let mut channels = server.channels.write().unwrap_or_else(|e| e.into_inner());
        if let Some(members) = channels.get_mut(channel) {
            members.retain(|m| !slow.contains(&m.id));
        }
    }
}

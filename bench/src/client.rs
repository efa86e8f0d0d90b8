//! The client side of the public interfaces, as a real client uses them:
//! mint a ticket with an API key over HTTP, open a WebSocket with it (from a
//! chosen 127.0.0.x source address), read `welcome`, speak the JSON frames.

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

pub type Ws = WebSocketStream<TcpStream>;

/// How long one frame exchange during setup (welcome, subscribe ack) may take.
const FRAME_TIMEOUT: Duration = Duration::from_secs(15);

/// Wall-clock time in nanoseconds: what payloads carry, so a receiver in
/// another process on the same machine can compute the delivery latency.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// An HTTP client for the auth-service: keep-alive, no proxy (loopback only),
/// bounded in time. For the stack's setup and the Rust mint load; the
/// connection workers mint with the leaner [`Minter`].
pub fn http_client(max_idle_per_host: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(max_idle_per_host)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")
}

#[derive(Deserialize)]
struct TicketResponse {
    ticket: String,
}

/// Mints tickets with `POST /v1/tickets` over kept-alive HTTP/1.1 connections,
/// written and read by hand: the one request the connection workers repeat.
///
/// The load generator shares the machine's two CPUs with the servers, so its
/// cost per handshake is taken from them. reqwest (a request future talking
/// to a connection task, URL parsing, a header map per request) cost the
/// workers more CPU per mint than auth-service spent serving it.
pub struct Minter {
    addr: SocketAddr,
    /// Everything before the `Authorization` header.
    head: String,
    idle: std::sync::Mutex<Vec<HttpConn>>,
}

/// A kept-alive connection and the bytes read past the last response.
struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Minter {
    /// For `auth_url` = `http://host:port` (the address is resolved once).
    pub async fn new(auth_url: &str) -> anyhow::Result<Self> {
        let authority = auth_url
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .with_context(|| format!("{auth_url}: only http:// URLs are supported"))?;
        let addr = tokio::net::lookup_host(authority)
            .await
            .with_context(|| format!("resolving {authority}"))?
            .next()
            .with_context(|| format!("{authority} resolves to nothing"))?;
        Ok(Self {
            addr,
            head: format!(
                "POST /v1/tickets HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\n"
            ),
            idle: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// One single-use ticket for `api_key`.
    pub async fn mint(&self, api_key: &str) -> anyhow::Result<String> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => {
                let stream = TcpStream::connect(self.addr)
                    .await
                    .with_context(|| format!("connecting to auth-service at {}", self.addr))?;
                stream.set_nodelay(true)?;
                HttpConn {
                    stream,
                    buf: Vec::with_capacity(1024),
                }
            }
        };
        let request = format!("{}Authorization: Bearer {api_key}\r\n\r\n", self.head);
        conn.stream
            .write_all(request.as_bytes())
            .await
            .context("sending a mint request")?;
        let head = read_head(&mut conn.stream, &mut conn.buf)
            .await
            .context("reading a mint response")?;
        let body = read_body(&mut conn.stream, &mut conn.buf, &head).await?;
        if !head.close {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
        }
        if head.status != 201 {
            bail!(
                "minting a ticket: HTTP {}: {}",
                head.status,
                truncate(&String::from_utf8_lossy(&body), 200)
            );
        }
        Ok(serde_json::from_slice::<TicketResponse>(&body)
            .context("parsing the ticket response")?
            .ticket)
    }
}

/// What the load generator needs of an HTTP response head.
struct Head {
    status: u16,
    /// Bytes of `buf` the head took.
    len: usize,
    content_length: usize,
    close: bool,
    websocket_accept: Option<String>,
}

/// Reads until `buf` holds a whole response head; bytes after it stay in `buf`.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<Head> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 24];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(len) = response.parse(buf)? {
            let mut head = Head {
                status: response.code.unwrap_or(0),
                len,
                content_length: 0,
                close: response.version == Some(0),
                websocket_accept: None,
            };
            for header in response.headers.iter() {
                let value = std::str::from_utf8(header.value).unwrap_or("").trim();
                if header.name.eq_ignore_ascii_case("content-length") {
                    head.content_length = value.parse().context("a bad Content-Length")?;
                } else if header.name.eq_ignore_ascii_case("connection") {
                    head.close = value.eq_ignore_ascii_case("close");
                } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                    bail!("a response with Transfer-Encoding: {value} (not supported here)");
                } else if header.name.eq_ignore_ascii_case("sec-websocket-accept") {
                    head.websocket_accept = Some(value.to_owned());
                }
            }
            return Ok(head);
        }
        read_more(stream, buf).await?;
    }
}

/// The body after `head` (by its Content-Length), removed from the buffer with it.
async fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: &Head,
) -> anyhow::Result<Vec<u8>> {
    let end = head.len + head.content_length;
    while buf.len() < end {
        read_more(stream, buf).await?;
    }
    let body = buf[head.len..end].to_vec();
    buf.drain(..end);
    Ok(body)
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    if buf.len() > 64 * 1024 {
        bail!("response head too large");
    }
    buf.reserve(1024);
    if stream.read_buf(buf).await? == 0 {
        bail!("connection closed mid-response");
    }
    Ok(())
}

/// Small buffers, as a thin client would use: what matters is the server's
/// memory, and the worker must fit 14 000 sockets.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Opens `ws://<node>/ws?ticket=…` from `source` (port chosen by the kernel)
/// and completes the upgrade. `welcome` is not read here.
///
/// The upgrade request is written and its answer checked by hand (status 101
/// and `Sec-WebSocket-Accept`), for the same reason as [`Minter`]; bytes the
/// node sent after its answer (the `welcome` frame, often) are handed on.
pub async fn connect(node: SocketAddr, ticket: &str, source: IpAddr) -> anyhow::Result<Ws> {
    let socket = if node.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .context("creating a socket")?;
    // Lets the kernel reuse ports still in TIME_WAIT from an earlier scenario.
    socket.set_reuseaddr(true)?;
    // Defers the choice of the source port to connect(), which only needs the
    // 4-tuple to be unique. Without it, bind() scans for a port unused on the
    // source address, and with thousands of bound sockets that scan cost the
    // load generator more CPU than the servers spent on the handshakes.
    if node.is_ipv4() {
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        )
        .context("setting IP_BIND_ADDRESS_NO_PORT")?;
    }
    socket
        .bind(SocketAddr::new(source, 0))
        .with_context(|| format!("binding to source address {source}"))?;
    let mut stream = socket
        .connect(node)
        .await
        .with_context(|| format!("connecting to {node} from {source}"))?;
    stream.set_nodelay(true)?;
    let key = generate_key();
    let request = format!(
        "GET /ws?ticket={ticket} HTTP/1.1\r\nHost: {node}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    );
    let upgrade = async {
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::with_capacity(512);
        let head = read_head(&mut stream, &mut buf).await?;
        if head.status != 101 {
            let body = read_body(&mut stream, &mut buf, &head)
                .await
                .unwrap_or_default();
            bail!(
                "HTTP {}: {}",
                head.status,
                truncate(&String::from_utf8_lossy(&body), 200)
            );
        }
        if head.websocket_accept.as_deref() != Some(&derive_accept_key(key.as_bytes())) {
            bail!("wrong or missing Sec-WebSocket-Accept");
        }
        let rest = buf.split_off(head.len);
        Ok(
            WebSocketStream::from_partially_read(stream, rest, Role::Client, Some(ws_config()))
                .await,
        )
    };
    upgrade
        .await
        .with_context(|| format!("WebSocket upgrade at {node}"))
}

/// A frame from the node, with only the fields the bench looks at.
#[derive(Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default, borrow)]
    pub code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub message: Option<Cow<'a, str>>,
    #[serde(default)]
    pub data: Option<Payload>,
}

/// What the bench publishes as `data`: the send time and a sequence number.
#[derive(Deserialize, Clone, Copy, Debug)]
pub struct Payload {
    pub t: u64,
    pub seq: u64,
}

/// The payload of a delivery (`message` frame), or `None` for other frames.
///
/// This is the workers' hot path (hundreds of thousands of frames a second on
/// a machine the servers share), so the frame the node builds,
/// `{"type":"message",…,"data":{"t":…,"seq":…}}`, is scanned directly; anything
/// else falls back to a real JSON parse.
pub fn parse_delivery(text: &str) -> Option<Payload> {
    const START: &str = r#"{"type":"message""#;
    const DATA: &str = r#""data":{"t":"#;
    if !text.starts_with(START) {
        return None;
    }
    // Read backwards from the end, `…"data":{"t":T,"seq":S}}`: no substring
    // search, no UTF-8 work, just bytes.
    let fast = || {
        let rest = text.strip_suffix("}}")?;
        let (rest, seq) = trailing_u64(rest)?;
        let (rest, t) = trailing_u64(rest.strip_suffix(r#","seq":"#)?)?;
        rest.ends_with(DATA).then_some(Payload { t, seq })
    };
    fast().or_else(|| {
        serde_json::from_str::<Frame<'_>>(text)
            .ok()
            .filter(|f| f.kind == "message")
            .and_then(|f| f.data)
    })
}

/// The decimal number at the end of `s`, and what precedes it.
fn trailing_u64(s: &str) -> Option<(&str, u64)> {
    let bytes = s.as_bytes();
    let start = bytes
        .iter()
        .rposition(|b| !b.is_ascii_digit())
        .map_or(0, |i| i + 1);
    if start == bytes.len() || bytes.len() - start > 19 {
        return None;
    }
    let value = bytes[start..]
        .iter()
        .fold(0u64, |n, b| n * 10 + u64::from(b - b'0'));
    Some((&s[..start], value))
}

/// A `publish` frame carrying `{"t": <now>, "seq": seq}`; `t` is taken as
/// late as possible, right before the frame is written.
pub fn publish_frame(id: u64, channel: &str, seq: u64) -> String {
    format!(
        r#"{{"action":"publish","id":{id},"channel":"{channel}","data":{{"t":{},"seq":{seq}}}}}"#,
        unix_nanos()
    )
}

/// Waits for the next text frame (answering nothing else), bounded in time.
async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    let read = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code));
                    bail!("closed by the node (code {code:?})");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(anyhow::Error::new(e).context("reading a frame")),
                None => bail!("connection closed"),
            }
        }
    };
    tokio::time::timeout(FRAME_TIMEOUT, read)
        .await
        .context("timed out waiting for a frame")?
}

/// Reads the `welcome` frame that completes an authenticated connection.
pub async fn expect_welcome(ws: &mut Ws) -> anyhow::Result<()> {
    let text = next_text(ws).await?;
    let frame: Frame<'_> = serde_json::from_str(&text).context("parsing the first frame")?;
    if frame.kind != "welcome" {
        bail!("expected welcome, got {}", truncate(&text, 200));
    }
    Ok(())
}

/// Subscribes to `channel` and waits for the `ack` of request `id`.
pub async fn subscribe(ws: &mut Ws, channel: &str, id: u64) -> anyhow::Result<()> {
    let frame = format!(r#"{{"action":"subscribe","id":{id},"channel":"{channel}"}}"#);
    ws.send(Message::text(frame)).await.context("subscribing")?;
    loop {
        let text = next_text(ws).await?;
        let frame: Frame<'_> = serde_json::from_str(&text).context("parsing a reply")?;
        match (&*frame.kind, frame.id) {
            ("ack", Some(got)) if got == id => return Ok(()),
            ("error", Some(got)) if got == id => bail!(
                "subscribe refused: {} {}",
                frame.code.unwrap_or_default(),
                frame.message.unwrap_or_default()
            ),
            _ => {}
        }
    }
}

pub fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_delivery_and_builds_a_publish() {
        let text = r#"{"type":"message","channel":"public:x","epoch":"e1","offset":7,"data":{"t":123,"seq":4}}"#;
        let frame: Frame<'_> = serde_json::from_str(text).expect("parses");
        assert_eq!(frame.kind, "message");
        let data = frame.data.expect("data");
        assert_eq!((data.t, data.seq), (123, 4));

        let fast = parse_delivery(text).expect("a delivery");
        assert_eq!((fast.t, fast.seq), (123, 4));
        // Same frame, other field order or spacing: the slow path still reads it.
        let odd = r#"{"type":"message","data":{"seq":4, "t":123},"channel":"public:x"}"#;
        let slow = parse_delivery(odd).expect("a delivery");
        assert_eq!((slow.t, slow.seq), (123, 4));
        assert!(parse_delivery(r#"{"type":"ack","id":1}"#).is_none());

        let publish = publish_frame(9, "public:x", 4);
        let value: serde_json::Value = serde_json::from_str(&publish).expect("valid JSON");
        assert_eq!(value["data"]["seq"], 4);
        assert_eq!(value["id"], 9);
        assert!(value["data"]["t"].as_u64().expect("t") > 0);
    }
}

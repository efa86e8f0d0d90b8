//! Frame-level behaviour over real sockets: every frame type counts against
//! the message rate, and frames that break RFC 6455 get the documented close
//! code (1002, 1007), sent before the TCP connection ends.

use crate::helpers::*;
use bytes::Bytes;
use futures_util::SinkExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A node allowing 5 frames a second, 5 at once.
async fn slow_rate_stack() -> Stack {
    Stack::start_with(StackOptions {
        nodes: 1,
        customise_node: Box::new(|c| {
            c.client_messages_per_sec = 5;
            c.client_message_burst = 5;
        }),
        ..StackOptions::default()
    })
    .await
}

#[tokio::test]
async fn a_flood_of_pings_pongs_or_binary_frames_is_rate_limited_and_closed_4008() {
    let stack = slow_rate_stack().await;
    let user = stack.create_user("flo").await;
    let key = stack.api_key(&user, "connect").await;
    let floods = [
        ("ping", Message::Ping(Bytes::from_static(b"p"))),
        ("pong", Message::Pong(Bytes::from_static(b"p"))),
        ("binary", Message::Binary(Bytes::from_static(b"\x00\x01"))),
    ];
    for (kind, frame) in floods {
        let mut client = stack.connect(0, &key).await;
        for _ in 0..40 {
            // The node may close mid-flood; later sends then fail.
            let _ = client.socket.send(frame.clone()).await;
        }
        let mut limited = 0;
        let code = loop {
            match client.next_event(PATIENCE).await {
                // Binary frames within the rate are answered `unsupported`.
                Event::Frame(f) if f["code"] == "unsupported" => {}
                Event::Frame(f) if f["code"] == "rate_limited" => limited += 1,
                Event::Frame(f) => panic!("{kind}: unexpected {f}"),
                Event::Closed(code) => break code.map(|c| c.0),
                other => panic!("{kind}: {other:?}"),
            }
        };
        assert_eq!(code, Some(4008), "{kind} frames count against the rate");
        if kind == "binary" {
            assert!(limited >= 1, "over-rate binary frames get errors first");
        } else {
            assert_eq!(limited, 0, "control frames get no error frames");
        }
    }
}

#[tokio::test]
async fn pings_within_the_rate_keep_the_socket_open() {
    let stack = slow_rate_stack().await;
    let user = stack.create_user("pia").await;
    let key = stack.api_key(&user, "connect").await;
    let mut client = stack.connect(0, &key).await;
    for _ in 0..3 {
        client
            .socket
            .send(Message::Ping(Bytes::new()))
            .await
            .expect("ping");
    }
    let reply = client
        .request(serde_json::json!({ "action": "ping" }), 1)
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
}

/// A WebSocket client written by hand, over a raw TCP socket: it can send
/// what no library would (unmasked frames, reserved bits), and reads the
/// node's frames as bytes.
struct RawClient {
    stream: TcpStream,
    read: Vec<u8>,
}

impl RawClient {
    /// Upgrades a raw connection to `node`, with `ticket` if given (then past
    /// the `welcome` frame), or unauthenticated (first-message auth).
    async fn connect(node: std::net::SocketAddr, ticket: Option<&str>) -> Self {
        let query = ticket.map_or(String::new(), |t| format!("?ticket={t}"));
        let mut stream = TcpStream::connect(node).await.expect("connect");
        let request = format!(
            "GET /ws{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let (head, read) = testkit::raw_http::read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let mut client = Self { stream, read };
        if ticket.is_some() {
            let (opcode, welcome) = client.frame().await.expect("the welcome frame");
            assert_eq!(opcode, 0x1, "{}", String::from_utf8_lossy(&welcome));
        }
        client
    }

    /// The next whole frame: its opcode and payload, or `None` at the end of
    /// the TCP stream.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((opcode, start, len)) = parse_header(&self.read)
                && self.read.len() >= start + len
            {
                let payload = self.read[start..start + len].to_vec();
                self.read.drain(..start + len);
                return Some((opcode, payload));
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
                .await
                .expect("the node answers or closes in time")
                .unwrap_or(0);
            if n == 0 {
                assert!(self.read.is_empty(), "the stream ended mid-frame");
                return None;
            }
            self.read.extend_from_slice(&chunk[..n]);
        }
    }

    /// Skips frames until the close frame; returns its code, and checks that
    /// the node then ends the TCP connection.
    async fn close_code(&mut self) -> u16 {
        loop {
            match self.frame().await {
                Some((0x8, payload)) => {
                    assert!(payload.len() >= 2, "a close frame with a code");
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    assert!(self.frame().await.is_none(), "the TCP connection ends");
                    return code;
                }
                Some(_) => {}
                None => panic!("the connection ended without a close frame"),
            }
        }
    }
}

/// A server frame's opcode, where its payload starts, and its length, once
/// the whole header has arrived. Server frames are never masked.
fn parse_header(read: &[u8]) -> Option<(u8, usize, usize)> {
    let (&first, &second) = (read.first()?, read.get(1)?);
    let (start, len) = match second & 0x7F {
        126 => (
            4,
            usize::from(u16::from_be_bytes([*read.get(2)?, *read.get(3)?])),
        ),
        127 => panic!("no server frame here is that large"),
        len => (2, usize::from(len)),
    };
    (read.len() >= start).then_some((first & 0x0F, start, len))
}

/// A client frame: `first` is the FIN, RSV and opcode byte; masked as a
/// client must unless `masked` is false.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut bytes = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match u16::try_from(payload.len()) {
        Ok(len) if len < 126 => bytes.push(mask_bit | u8::try_from(len).expect("short")),
        Ok(len) => {
            bytes.push(mask_bit | 126);
            bytes.extend_from_slice(&len.to_be_bytes());
        }
        Err(_) => panic!("frames here are small"),
    }
    if masked {
        bytes.extend_from_slice(&mask);
        bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        bytes.extend_from_slice(payload);
    }
    bytes
}

#[tokio::test]
async fn frames_that_break_rfc_6455_are_closed_1002_or_1007() {
    let stack = Stack::start(1).await;
    let user = stack.create_user("rex").await;
    let key = stack.api_key(&user, "connect").await;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "a text frame that is not UTF-8",
            frame(0x81, b"{\xff\xfe}", true),
            1007,
        ),
        (
            "a fragmented text message that is not UTF-8",
            [
                frame(0x01, b"{\"a", true),
                frame(0x80, b"\xc3\x28\"}", true),
            ]
            .concat(),
            1007,
        ),
        ("an unmasked frame", frame(0x81, b"{}", false), 1002),
        ("reserved bits set", frame(0xC1, b"{}", true), 1002),
        ("a fragmented ping", frame(0x09, b"p", true), 1002),
        (
            "a control frame over 125 bytes",
            frame(0x89, &[0; 126], true),
            1002,
        ),
        ("a reserved data opcode", frame(0x83, b"{}", true), 1002),
        ("a reserved control opcode", frame(0x8B, b"", true), 1002),
        ("a continuation of nothing", frame(0x80, b"{}", true), 1002),
        (
            "a close frame of one byte",
            frame(0x88, b"\x03", true),
            1002,
        ),
        (
            "a close reason that is not UTF-8",
            frame(0x88, b"\x03\xe8\xff", true),
            1007,
        ),
    ];
    for (case, bytes, expected) in cases {
        let ticket = stack.ticket(&key).await;
        let mut client = RawClient::connect(stack.nodes[0].addr, Some(&ticket)).await;
        // More bytes behind the bad frame, which the node never reads as
        // frames: closing over them must not reset the connection and
        // destroy the close frame.
        let mut bytes = bytes;
        bytes.extend_from_slice(&[0u8; 32 * 1024]);
        client.stream.write_all(&bytes).await.expect("write");
        assert_eq!(client.close_code().await, expected, "{case}");
    }
    // The socket is no longer counted anywhere.
    let node = &stack.nodes[0].state;
    let deadline = std::time::Instant::now() + PATIENCE;
    while node.hub.connection_count() > 0 {
        assert!(std::time::Instant::now() < deadline, "sockets left behind");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_socket_awaiting_its_auth_frame_gets_the_same_close_codes() {
    let stack = Stack::start(1).await;
    let mut client = RawClient::connect(stack.nodes[0].addr, None).await;
    let bytes = frame(0x81, b"{\"action\":\"auth\",\"ticket\":\"\xff\"}", true);
    client.stream.write_all(&bytes).await.expect("write");
    assert_eq!(client.close_code().await, 1007);
    let mut client = RawClient::connect(stack.nodes[0].addr, None).await;
    let bytes = frame(0x81, b"{}", false);
    client.stream.write_all(&bytes).await.expect("write");
    assert_eq!(client.close_code().await, 1002);
}

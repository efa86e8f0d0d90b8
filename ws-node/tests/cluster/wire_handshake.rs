//! RFC 6455's handshake rules, with upgrade requests written by hand over raw
//! TCP: the version, the key, and no body. Each refusal comes before the
//! ticket is spent, on both paths a request can take (the node's own parser
//! for a connection's first request, hyper for a later one).

use crate::helpers::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// An upgrade request for `/ws?ticket=…` whose headers are `headers` (and
/// `body` after them).
fn upgrade_request(ticket: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut request = format!(
        "GET /ws?ticket={ticket} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    request
}

const VERSION: (&str, &str) = ("Sec-WebSocket-Version", "13");
const KEY: (&str, &str) = ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");

/// Writes `request` on `stream` and reads the answer: its status, lowercased
/// head, and `error.code`.
async fn refusal(stream: &mut TcpStream, request: &str) -> (u16, String, String) {
    stream.write_all(request.as_bytes()).await.expect("write");
    let (head, body) = testkit::raw_http::read_response(stream).await;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let body: Value = serde_json::from_slice(&body).expect("a JSON body");
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(body["error"]["message"].is_string(), "{body}");
    (status, head.to_ascii_lowercase(), code)
}

/// A bad upgrade request, and the refusal it gets.
struct Bad {
    case: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static str,
    status: u16,
    code: &'static str,
    /// A header the answer must carry (lowercase, with its line end).
    header: Option<&'static str>,
}

fn bad(
    case: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    status: u16,
    code: &'static str,
) -> Bad {
    Bad {
        case,
        headers,
        body: "",
        status,
        code,
        header: (status == 426).then_some("sec-websocket-version: 13\r\n"),
    }
}

fn bad_requests() -> Vec<Bad> {
    let invalid_key = "invalid_websocket_key";
    vec![
        bad(
            "version 8",
            vec![("Sec-WebSocket-Version", "8"), KEY],
            426,
            "unsupported_version",
        ),
        bad("no version", vec![KEY], 426, "unsupported_version"),
        bad("no key", vec![VERSION], 400, invalid_key),
        bad(
            "a short key",
            vec![VERSION, ("Sec-WebSocket-Key", "c2hvcnQ=")],
            400,
            invalid_key,
        ),
        bad(
            "a key not base64",
            vec![VERSION, ("Sec-WebSocket-Key", "not base64 at all, no!!")],
            400,
            invalid_key,
        ),
        bad("two keys", vec![VERSION, KEY, KEY], 400, invalid_key),
        Bad {
            body: "hello",
            ..bad(
                "a body",
                vec![VERSION, KEY, ("Content-Length", "5")],
                400,
                "upgrade_with_body",
            )
        },
        Bad {
            body: "5\r\nhello\r\n0\r\n\r\n",
            ..bad(
                "a chunked body",
                vec![VERSION, KEY, ("Transfer-Encoding", "chunked")],
                400,
                "upgrade_with_body",
            )
        },
    ]
}

#[tokio::test]
async fn bad_upgrade_requests_are_refused_before_the_ticket_is_spent() {
    let stack = Stack::start(1).await;
    let user = stack.create_user("uma").await;
    let key = stack.api_key(&user, "connect").await;
    let node = stack.nodes[0].addr;
    for Bad {
        case,
        headers,
        body,
        status,
        code,
        header,
    } in bad_requests()
    {
        let ticket = stack.ticket(&key).await;
        // A connection's first request: the node parses it itself.
        let mut stream = TcpStream::connect(node).await.expect("connect");
        let request = upgrade_request(&ticket, &headers, body);
        let (got_status, head, got_code) = refusal(&mut stream, &request).await;
        assert_eq!((got_status, got_code.as_str()), (status, code), "{case}");
        if let Some(header) = header {
            assert!(head.contains(header), "{case}: {head}");
        }
        // A later request on a kept-alive connection: hyper reads it.
        let mut stream = TcpStream::connect(node).await.expect("connect");
        let (health, _, _) = refusal(&mut stream, "GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(health, 404);
        let (got_status, head, got_code) = refusal(&mut stream, &request).await;
        assert_eq!(
            (got_status, got_code.as_str()),
            (status, code),
            "{case}, through hyper"
        );
        if let Some(header) = header {
            assert!(head.contains(header), "{case}, through hyper: {head}");
        }
        // Neither refusal spent the ticket.
        let mut client =
            Client::connect(&format!("{}?ticket={ticket}", stack.nodes[0].ws_url()), &[])
                .await
                .unwrap_or_else(|r| panic!("{case}: the ticket still opens a socket: {r:?}"));
        assert_eq!(client.recv().await["type"], "welcome");
    }
}

#[tokio::test]
async fn an_upgrade_with_an_empty_body_is_accepted() {
    let stack = Stack::start(1).await;
    let user = stack.create_user("val").await;
    let key = stack.api_key(&user, "connect").await;
    let ticket = stack.ticket(&key).await;
    let mut stream = TcpStream::connect(stack.nodes[0].addr)
        .await
        .expect("connect");
    let request = upgrade_request(&ticket, &[VERSION, KEY, ("Content-Length", "0")], "");
    stream.write_all(request.as_bytes()).await.expect("write");
    let (head, _) = testkit::raw_http::read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
}

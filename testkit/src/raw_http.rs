//! Reading an HTTP/1.1 answer straight off a TCP socket, for tests that write
//! requests by hand: several on one kept-alive connection, or an upgrade
//! whose first frames follow the head in the same read.

use std::time::Duration;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

/// How long each read may wait for the server.
const PATIENCE: Duration = Duration::from_secs(5);

/// Reads from `stream` until a whole HTTP head has arrived; returns the head
/// and whatever followed it.
pub async fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut read = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "closed before the head ended");
        read.extend_from_slice(&chunk[..n]);
        if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = read.split_off(end + 4);
            return (String::from_utf8(read).expect("utf-8 head"), rest);
        }
    }
}

/// The `Content-Length` a head announces.
fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .expect("content-length")
        .trim()
        .parse()
        .expect("length")
}

/// Reads the rest of a body of `length` bytes, of which `body` has arrived
/// with the head; asserts that nothing beyond it came along.
async fn read_body(stream: &mut TcpStream, mut body: Vec<u8>, length: usize) -> Vec<u8> {
    assert!(body.len() <= length, "nothing beyond the first answer");
    let mut rest = vec![0; length - body.len()];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut rest))
        .await
        .expect("the body in time")
        .expect("the whole body");
    body.extend_from_slice(&rest);
    body
}

/// Reads one whole answer with a `Content-Length` body: its head and body.
pub async fn read_response(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let (head, body) = read_head(stream).await;
    let length = content_length(&head);
    let body = read_body(stream, body, length).await;
    (head, body)
}

//! The byte stream under a client's WebSocket, and the WebSocket type itself.
//!
//! Most sockets are upgraded by [`super::server`] itself, from the first
//! request on a TCP connection: the stream is then the bare `TcpStream`, and
//! the `101 Switching Protocols` head is held back and written together with
//! the first frame (the `welcome`), one write and one segment for the two.
//! An upgrade that hyper served (a later request on a kept-alive connection,
//! as proxies send) arrives as hyper's `Upgraded` instead. The same type also
//! hands hyper a connection whose first request head was already read, by
//! replaying those bytes before reading the socket again.

use bytes::{Buf as _, Bytes};
use hyper_util::rt::TokioIo;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;

/// A client's WebSocket, whichever way it was upgraded.
pub type Socket = WebSocketStream<ClientStream>;

/// A client connection's bytes: the TCP stream (or hyper's upgraded one), plus
/// bytes already read that readers get first and bytes to write before any
/// other. Both extras are in one box that is freed once they are used up, so
/// an idle socket pays a pointer for them.
pub struct ClientStream {
    transport: Transport,
    extra: Option<Box<Extra>>,
}

enum Transport {
    Tcp(TcpStream),
    /// Boxed: rare, and larger than a `TcpStream`.
    Upgraded(Box<TokioIo<hyper::upgrade::Upgraded>>),
}

struct Extra {
    /// Read from the socket already (a request head, or what followed it).
    read_ahead: Bytes,
    /// Accepted from writers but not yet written to the socket.
    unsent: Vec<u8>,
}

/// Calls the same poll method on whichever stream the transport is.
macro_rules! on_transport {
    ($transport:expr, $stream:ident => $call:expr) => {
        match $transport {
            Transport::Tcp($stream) => {
                let $stream = Pin::new($stream);
                $call
            }
            Transport::Upgraded($stream) => {
                let $stream = Pin::new(&mut **$stream);
                $call
            }
        }
    };
}

impl ClientStream {
    /// A TCP stream whose first `read_ahead` bytes were read already and
    /// which must send `unsent` before anything else.
    pub fn tcp(stream: TcpStream, read_ahead: Bytes, unsent: Vec<u8>) -> Self {
        let extra = (!read_ahead.is_empty() || !unsent.is_empty())
            .then(|| Box::new(Extra { read_ahead, unsent }));
        Self {
            transport: Transport::Tcp(stream),
            extra,
        }
    }

    /// A stream hyper upgraded.
    pub fn upgraded(upgraded: hyper::upgrade::Upgraded) -> Self {
        Self {
            transport: Transport::Upgraded(Box::new(TokioIo::new(upgraded))),
            extra: None,
        }
    }

    /// Frees the extras once neither holds anything.
    fn settle(&mut self) {
        if self
            .extra
            .as_ref()
            .is_some_and(|e| e.read_ahead.is_empty() && e.unsent.is_empty())
        {
            self.extra = None;
        }
    }

    /// Writes what is unsent; ready once nothing is.
    fn poll_send_unsent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(extra) = self.extra.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while !extra.unsent.is_empty() {
            let written =
                ready!(on_transport!(&mut self.transport, s => s.poll_write(cx, &extra.unsent)))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            extra.unsent.drain(..written);
        }
        self.settle();
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(extra) = this.extra.as_mut()
            && !extra.read_ahead.is_empty()
        {
            let n = extra.read_ahead.len().min(buf.remaining());
            buf.put_slice(&extra.read_ahead[..n]);
            extra.read_ahead.advance(n);
            this.settle();
            return Poll::Ready(Ok(()));
        }
        on_transport!(&mut this.transport, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.extra.as_mut() {
            Some(extra) if !extra.unsent.is_empty() => {
                // Joined to what waits, so both leave in one write; from here
                // on the bytes are ours to deliver (a flush finishes the job).
                extra.unsent.extend_from_slice(buf);
                if let Poll::Ready(Err(e)) = this.poll_send_unsent(cx) {
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(buf.len()))
            }
            _ => on_transport!(&mut this.transport, s => s.poll_write(cx, buf)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_unsent(cx))?;
        on_transport!(&mut this.transport, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_unsent(cx))?;
        on_transport!(&mut this.transport, s => s.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A connected pair of real loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (server, client)
    }

    #[tokio::test]
    async fn the_held_back_head_leaves_with_the_first_write() {
        let (server, mut client) = pair().await;
        let mut stream = ClientStream::tcp(server, Bytes::new(), b"HEAD|".to_vec());
        stream.write_all(b"frame").await.expect("write");
        stream.flush().await.expect("flush");
        assert!(stream.extra.is_none(), "the extras are freed once used");
        stream.write_all(b"|more").await.expect("write");
        stream.flush().await.expect("flush");
        drop(stream);
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.expect("read");
        assert_eq!(received, b"HEAD|frame|more");
    }

    #[tokio::test]
    async fn bytes_read_ahead_come_first() {
        let (server, mut client) = pair().await;
        let mut stream = ClientStream::tcp(server, Bytes::from_static(b"early|"), Vec::new());
        client.write_all(b"late").await.expect("write");
        drop(client);
        let mut received = Vec::new();
        stream.read_to_end(&mut received).await.expect("read");
        assert_eq!(received, b"early|late");
        assert!(stream.extra.is_none());
    }
}

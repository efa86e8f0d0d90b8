//! Spreading connections over auth-service's serving threads.
//!
//! Every serving thread accepts from the one listening socket, and whichever
//! is awake first takes all that is queued. When a client opens its
//! connections in a burst (a connection pool, or a proxy, starting up), one
//! thread can take every one of them; and as a kept-alive connection stays on
//! the thread that accepted it, that thread then does all the work while the
//! other idles. The mint benchmark (wrk's burst of connections on 2 threads)
//! caught it in some runs: one thread held them all and the mint rate fell
//! well below that of runs where they were spread.
//!
//! So each thread counts the connections it serves, and one that accepts a
//! connection while it holds more than [`SLACK`] above the least busy thread
//! passes it to that thread, once, through the thread's [`Inbox`]. Connections
//! stay where they are afterwards: moving one costs a wake-up of the other
//! thread, so only the accept decides.
//!
//! (`SO_REUSEPORT`, one listening socket per thread, would spread connections
//! by the kernel's hash instead, but would also let a second auth-service
//! started on the same port by mistake share it silently, where it should fail
//! with "address in use".)

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How many more connections than the least busy thread a thread may hold
/// before it passes new ones on.
pub const SLACK: usize = 1;

/// A connection on its way to another thread: detached from the accepting
/// thread's runtime, to be registered with the receiving one's.
type Handoff = (std::net::TcpStream, SocketAddr, Counted);

/// The open-connection counts of all serving threads, and the way into each.
pub struct Balancer {
    open: Box<[AtomicUsize]>,
    inboxes: Box<[mpsc::UnboundedSender<Handoff>]>,
}

/// Where a serving thread receives the connections passed to it.
pub struct Inbox(mpsc::UnboundedReceiver<Handoff>);

/// A connection counted against a thread until this is dropped (with the
/// connection's task).
pub struct Counted {
    balancer: Arc<Balancer>,
    thread: usize,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.balancer.open[self.thread].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    /// A balancer over `threads` serving threads (at least one), with the
    /// inbox of each, in thread order.
    pub fn new(threads: usize) -> (Arc<Self>, Vec<Inbox>) {
        let threads = threads.max(1);
        let (senders, inboxes): (Vec<_>, Vec<_>) = (0..threads)
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                (tx, Inbox(rx))
            })
            .unzip();
        let balancer = Self {
            open: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
            inboxes: senders.into(),
        };
        (Arc::new(balancer), inboxes)
    }

    /// The thread that should serve a connection `accepted_by` just accepted:
    /// itself, unless it holds more than [`SLACK`] above the least busy one.
    /// That thread's count goes up at once, so that a burst of accepts
    /// alternates instead of all going one way.
    fn choose(&self, accepted_by: usize) -> usize {
        let count = |thread: usize| self.open[thread].load(Ordering::Relaxed);
        let least_busy = (0..self.open.len()).min_by_key(|&t| count(t)).unwrap_or(0);
        let chosen = if count(accepted_by) > count(least_busy) + SLACK {
            least_busy
        } else {
            accepted_by
        };
        self.open[chosen].fetch_add(1, Ordering::Relaxed);
        chosen
    }

    /// Decides who serves `stream`, which `accepted_by` just accepted: gives
    /// it back, counted, if that is `accepted_by`; else passes it on (or, if
    /// that fails, which happens only while the threads stop, closes it).
    pub fn assign(
        self: &Arc<Self>,
        accepted_by: usize,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<(TcpStream, Counted)> {
        let thread = self.choose(accepted_by);
        let counted = Counted {
            balancer: Arc::clone(self),
            thread,
        };
        if thread == accepted_by {
            return Some((stream, counted));
        }
        match stream.into_std() {
            Ok(stream) => {
                if self.inboxes[thread].send((stream, peer, counted)).is_err() {
                    tracing::debug!(thread, "a serving thread has stopped; connection closed");
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not detach a connection; closed"),
        }
        None
    }
}

impl Inbox {
    /// The next connection passed to this thread, registered with its
    /// runtime, and its count. `None` once every sender is gone.
    pub async fn next(&mut self) -> Option<(TcpStream, SocketAddr, Counted)> {
        loop {
            let (stream, peer, counted) = self.0.recv().await?;
            match TcpStream::from_std(stream) {
                Ok(stream) => return Some((stream, peer, counted)),
                Err(e) => tracing::debug!(error = %e, "could not take over a connection; closed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    #[test]
    fn a_burst_accepted_by_one_thread_is_spread_and_counts_fall_as_connections_end() {
        let (balancer, _inboxes) = Balancer::new(2);
        let chosen: Vec<usize> = (0..6).map(|_| balancer.choose(0)).collect();
        // Thread 0 keeps up to SLACK more than thread 1, then they alternate.
        assert_eq!(chosen, [0, 0, 1, 0, 1, 0]);
        let counts = || {
            balancer
                .open
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect::<Vec<_>>()
        };
        assert_eq!(counts(), [4, 2]);
        drop(Counted {
            balancer: Arc::clone(&balancer),
            thread: 1,
        });
        assert_eq!(counts(), [4, 1]);
        // A thread that is not ahead keeps what it accepts.
        assert_eq!(balancer.choose(1), 1);
    }

    #[test]
    fn one_thread_keeps_everything() {
        let (balancer, _inboxes) = Balancer::new(1);
        assert!((0..5).all(|_| balancer.choose(0) == 0));
    }

    #[tokio::test]
    async fn a_passed_on_connection_arrives_whole_in_the_other_inbox() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (balancer, mut inboxes) = Balancer::new(2);
        let mut clients = Vec::new();
        let mut kept = Vec::new();
        for _ in 0..4 {
            let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
            // Bytes sent before the hand-off must be readable after it.
            client.write_all(b"ping").await.unwrap();
            clients.push(client);
            let (stream, peer) = listener.accept().await.unwrap();
            if let Some(served_here) = balancer.assign(0, stream, peer) {
                kept.push(served_here);
            }
        }
        assert_eq!(kept.len(), 3, "thread 0 keeps 2, passes 1, then keeps 1");
        let (mut passed, peer, _counted) = inboxes[1].next().await.expect("a connection");
        assert_eq!(peer, clients[2].local_addr().unwrap());
        let mut request = [0; 4];
        passed.read_exact(&mut request).await.unwrap();
        assert_eq!(&request, b"ping");
        passed.write_all(b"pong").await.unwrap();
        let mut answer = [0; 4];
        clients[2].read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"pong");
    }
}

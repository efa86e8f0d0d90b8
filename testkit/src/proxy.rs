//! A TCP proxy a test controls, to put between a service and Redis (or any
//! server) and cut the line at the moment a fault test needs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards every connection made to [`TcpProxy::addr`] to `upstream`, until
/// [`TcpProxy::cut`]: then every forwarded connection is closed and new ones
/// are closed as soon as they are accepted (as when the network is down),
/// until [`TcpProxy::restore`]. [`TcpProxy::redirect`] sends new connections
/// elsewhere while the open ones stay where they are (as a failover behind a
/// load balancer or DNS name does). Dropping it stops it.
pub struct TcpProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    upstream: watch::Sender<SocketAddr>,
    /// Bumped at every cut: connections forwarded before it end.
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port, forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let (upstream, _) = watch::channel(upstream);
        let task = tokio::spawn(accept(
            listener,
            upstream.subscribe(),
            cut.clone(),
            generation.clone(),
        ));
        Self {
            addr,
            cut,
            upstream,
            generation,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A `redis://` URL through the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Closes every forwarded connection and refuses service until restored.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Forwards new connections to `upstream`; open ones keep theirs.
    pub fn redirect(&self, upstream: SocketAddr) {
        self.upstream.send_replace(upstream);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

async fn accept(
    listener: TcpListener,
    upstream: watch::Receiver<SocketAddr>,
    cut: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        if cut.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let mut ended = generation.subscribe();
        ended.borrow_and_update();
        let upstream = *upstream.borrow();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = ended.changed() => {}
            }
        });
    }
}

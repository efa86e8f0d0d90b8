//! What the handshake handler and every connection task can reach.

use crate::cluster::hub::Hub;
use crate::cluster::presence::Membership;
use crate::config::Config;
use crate::handshake::pending::PendingAuth;
use shared::keys::RedisKeys;
use shared::namespace::Namespaces;
use shared::origin::OriginAllowlist;
use shared::redis_conn::Redis;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Shared by the handshake handler and all connections. Every connection task
/// holds clones, so it is one `Arc` around the fields: 8 bytes and one
/// reference-count increment per clone, where a struct of a dozen handles
/// cost ~200 bytes per copy (a measurable share of an idle connection).
#[derive(Clone)]
pub struct NodeState(Arc<NodeStateInner>);

impl NodeState {
    pub fn new(inner: NodeStateInner) -> Self {
        Self(Arc::new(inner))
    }
}

impl std::ops::Deref for NodeState {
    type Target = NodeStateInner;
    fn deref(&self) -> &NodeStateInner {
        &self.0
    }
}

pub struct NodeStateInner {
    pub config: Arc<Config>,
    pub node_id: Arc<str>,
    pub keys: RedisKeys,
    /// Multiplexed connection for commands (tickets, sessions, publishing).
    pub redis: Redis,
    pub hub: Arc<Hub>,
    pub namespaces: Arc<Namespaces>,
    pub origins: Arc<OriginAllowlist>,
    pub pending_auth: Arc<PendingAuth>,
    /// True while the Redis subscription is live.
    pub subscribed: watch::Receiver<bool>,
    /// Whether that subscription still delivers.
    pub canary: Arc<crate::cluster::canary::Canary>,
    /// Becomes true at SIGTERM: refuse handshakes, close sockets with 1001.
    pub draining: watch::Receiver<bool>,
    pub next_connection: Arc<AtomicU64>,
    /// Write coalescing under heavy fan-out.
    pub coalescing: Arc<crate::cluster::coalescing::Coalescing>,
    /// This node's presence memberships, renewed and swept periodically.
    pub presence: Arc<Mutex<HashSet<Membership>>>,
    /// Closed connections whose cluster-wide traces are still being removed;
    /// the drain waits for them, so a restart leaves no stale slot or presence.
    pub cleanups: Arc<Cleanups>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// Counts background cleanups in flight.
#[derive(Default)]
pub struct Cleanups(std::sync::atomic::AtomicUsize);

/// One cleanup in flight; dropping it marks it done.
pub struct CleanupGuard(Arc<Cleanups>);

impl Cleanups {
    pub fn start(self: &Arc<Self>) -> CleanupGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        CleanupGuard(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl NodeState {
    pub fn is_ready(&self) -> bool {
        *self.subscribed.borrow() && !self.canary.is_late() && !self.is_draining()
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Resolves once the node starts draining.
    pub async fn drained(mut draining: watch::Receiver<bool>) {
        let _ = draining.wait_for(|d| *d).await;
    }

    pub fn remember_presence(&self, membership: &Membership) {
        self.presence_set().insert(membership.clone());
    }

    pub fn forget_presence(&self, memberships: &[Membership]) {
        let mut set = self.presence_set();
        for m in memberships {
            set.remove(m);
        }
    }

    /// Whether `membership` is still one of this node's.
    pub fn has_presence(&self, membership: &Membership) -> bool {
        self.presence_set().contains(membership)
    }

    /// A snapshot of this node's presence memberships.
    pub fn presence_memberships(&self) -> Vec<Membership> {
        self.presence_set().iter().cloned().collect()
    }

    fn presence_set(&self) -> std::sync::MutexGuard<'_, HashSet<Membership>> {
        self.presence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new connection id, unique within this node.
    pub fn new_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// The cluster-wide name of a local connection: `<node>:<id>`.
    pub fn connection_name(&self, id: u64) -> String {
        format!("{}:{id}", self.node_id)
    }
}

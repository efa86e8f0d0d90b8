//! ws-node: accepts authenticated WebSockets and joins them to a Redis-backed
//! broadcast, so that any number of nodes behind a load balancer behave as one.
//!
//! The folders follow a socket's life:
//!
//! * [`transport`]: accepting connections, the first request (`GET /ws`,
//!   upgraded by hand), operations endpoints, the bytes under a socket.
//! * [`handshake`]: who may connect: tickets, session cookies, first-message
//!   auth, the revocation check and the per-user cap, before the upgrade.
//! * [`session`]: one task per socket: the protocol's requests, replay from
//!   history, batching, limits, heartbeat.
//! * [`cluster`]: what the node shares with the others through Redis: the
//!   subscription and fan-out, gap filling, presence, the connection registry.
//! * [`protocol`]: the wire format (docs/PROTOCOL.md), with its errors and
//!   close reasons.
//!
//! ws-node talks to Redis only, never to Postgres: the handshake path is a
//! couple of Redis round trips.

pub mod cluster;
pub mod config;
pub mod error;
pub mod handshake;
pub mod protocol;
pub mod session;
pub mod state;
pub mod telemetry;
pub mod transport;

use anyhow::Context as _;
use cluster::hub::Hub;
use config::Config;
use state::NodeState;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A bound, ready-to-run ws-node.
pub struct Application {
    listener: TcpListener,
    /// `METRICS_LISTEN`'s socket, when metrics are served apart.
    metrics_listener: Option<TcpListener>,
    state: NodeState,
    draining: watch::Sender<bool>,
    subscriber: cluster::subscriber::Subscriber,
    flush_tick: watch::Sender<u64>,
}

impl Application {
    /// Binds the listener and connects to Redis; does not serve yet.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let listener = shared::net::bind(config.listen)
            .with_context(|| format!("binding WS_LISTEN={}", config.listen))?;
        let metrics_listener = config.common.bind_metrics_listener()?;
        let redis_target = config.common.redis_target();
        let redis = shared::redis_conn::open(&redis_target)
            .await
            .with_context(|| format!("connecting to Redis at {redis_target}"))?;
        let keys = config.common.redis_keys()?;
        let (commands_tx, commands_rx) = tokio::sync::mpsc::unbounded_channel();
        let hub = Arc::new(Hub::new(commands_tx));
        let (subscribed_tx, subscribed_rx) = watch::channel(false);
        let (draining_tx, draining_rx) = watch::channel(false);
        let (tick_tx, tick_rx) = watch::channel(0u64);
        let node_id: Arc<str> = config.node_id().into();
        let namespaces = Arc::new(config.common.namespaces()?);
        let canary = Arc::new(cluster::canary::Canary::new(config.canary_timeout()));
        let subscriber = cluster::subscriber::Subscriber {
            target: redis_target,
            redis: redis.clone(),
            keys: keys.clone(),
            namespaces: namespaces.clone(),
            node_id: node_id.clone(),
            hub: hub.clone(),
            commands: commands_rx,
            ready: subscribed_tx,
            canary: canary.clone(),
            canary_channels: Vec::new(),
            cursors: Default::default(),
        };
        let state = NodeState::new(state::NodeStateInner {
            node_id,
            keys,
            redis,
            hub,
            namespaces,
            coalescing: Arc::new(cluster::coalescing::Coalescing::new(tick_rx)),
            presence: Arc::default(),
            cleanups: Arc::default(),
            origins: Arc::new(config.common.origin_allowlist()?),
            pending_auth: Arc::default(),
            subscribed: subscribed_rx,
            canary,
            draining: draining_rx,
            next_connection: Arc::new(AtomicU64::new(1)),
            metrics: telemetry::register(),
            config: Arc::new(config),
        });
        Ok(Self {
            listener,
            metrics_listener,
            state,
            draining: draining_tx,
            subscriber,
            flush_tick: tick_tx,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.state.config.listen)
    }

    /// Where `/metrics` is served when `METRICS_LISTEN` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn state(&self) -> &NodeState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains: stop accepting, report
    /// not-ready, close every socket with 1001, and return once all are closed
    /// or `DRAIN_TIMEOUT_SECS` has passed.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            metrics_listener,
            state,
            draining,
            subscriber,
            flush_tick,
        } = self;
        let addr = listener.local_addr()?;
        let subscriber_task = tokio::spawn(subscriber.run());
        let maintenance = tokio::spawn(cluster::registry::renew_leases(state.clone()));
        let coalescing = tokio::spawn(cluster::coalescing::drive(
            state.hub.clone(),
            state.coalescing.clone(),
            state.config.write_coalesce_ms,
            state.config.write_coalesce_busy,
            flush_tick,
        ));
        let revalidation =
            tokio::spawn(cluster::revalidation::revalidate_connections(state.clone()));
        let router = transport::http::router(state.clone());
        let metrics_server = metrics_listener.map(|listener| {
            tokio::spawn(shared::http::serve_side_listener(
                listener,
                transport::http::metrics_only(state.clone()),
                crate::telemetry::ACCEPT_ERRORS,
            ))
        });
        let accept = tokio::spawn(transport::server::accept_loop(
            listener,
            state.clone(),
            router,
        ));
        tracing::info!(%addr, node = %state.node_id, "ws-node listening");

        shutdown.await;
        let started = Instant::now();
        let open = state.hub.connection_count();
        tracing::info!(open, "draining: closing every socket with 1001");
        draining.send_replace(true);
        // Also as a close request: a write in progress (perhaps to a client
        // that stopped reading) gives way to close requests only.
        state
            .hub
            .close_where(protocol::CloseReason::ShuttingDown, |_| true);
        let _ = accept.await;
        let deadline = state.config.drain_timeout();
        // Sockets (authenticated or still waiting for their `auth` frame), then
        // the removal of their slots, directory entries and presence.
        let outstanding = || {
            (
                state.hub.connection_count() + state.pending_auth.count(),
                state.cleanups.in_flight(),
            )
        };
        while outstanding() != (0, 0) && started.elapsed() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (left, cleanups) = outstanding();
        if (left, cleanups) != (0, 0) {
            tracing::warn!(
                left,
                cleanups,
                "drain timeout reached with sockets or cleanups outstanding"
            );
        }
        subscriber_task.abort();
        maintenance.abort();
        coalescing.abort();
        revalidation.abort();
        if let Some(server) = metrics_server {
            server.abort();
        }
        tracing::info!(elapsed = ?started.elapsed(), "ws-node stopped");
        Ok(())
    }
}

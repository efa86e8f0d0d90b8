//! ws-node: accepts authenticated WebSockets and joins them to a Redis-backed
//! broadcast, so that any number of nodes behind a load balancer behave as one.
//!
//! * [`handshake`]: ticket / cookie / first-message authentication, refused before the upgrade.
//! * [`connection`]: one task per socket: protocol, batching, limits, heartbeat.
//! * [`hub`]: local channel membership and fan-out.
//! * [`subscriber`]: the one Redis subscriber connection, with reconnection.
//! * [`server`]: the accept loop and the upgrade of a connection's first request.
//! * [`stream`]: the bytes under a WebSocket, however it was upgraded.
//! * [`telemetry`]: every metric the node exports.
//!
//! ws-node talks to Redis only, never to Postgres: the handshake path is a
//! couple of Redis round trips.

pub mod config;
pub mod connection;
pub mod error;
pub mod handshake;
pub mod hub;
pub mod limits;
pub mod presence;
pub mod protocol;
pub mod routes;
pub mod server;
pub mod state;
pub mod stream;
pub mod subscriber;
pub mod telemetry;

use anyhow::Context as _;
use config::Config;
use hub::Hub;
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
    subscriber: subscriber::Subscriber,
    flush_tick: watch::Sender<u64>,
}

impl Application {
    /// Binds the listener and connects to Redis; does not serve yet.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let listener = shared::net::bind(config.listen)
            .with_context(|| format!("binding WS_LISTEN={}", config.listen))?;
        let metrics_listener = config
            .metrics_listen
            .map(|addr| {
                shared::net::bind(addr).with_context(|| format!("binding METRICS_LISTEN={addr}"))
            })
            .transpose()?;
        let redis = shared::redis_conn::connect(&config.redis_url)
            .await
            .with_context(|| format!("connecting to Redis at {}", config.redis_url))?;
        let keys = config.redis_keys()?;
        let (commands_tx, commands_rx) = tokio::sync::mpsc::unbounded_channel();
        let hub = Arc::new(Hub::new(commands_tx));
        let (subscribed_tx, subscribed_rx) = watch::channel(false);
        let (draining_tx, draining_rx) = watch::channel(false);
        let (tick_tx, tick_rx) = watch::channel(0u64);
        let node_id: Arc<str> = config.node_id().into();
        let namespaces = Arc::new(config.namespaces()?);
        let subscriber = subscriber::Subscriber {
            client: shared::redis_conn::client(&config.redis_url)?,
            redis: redis.clone(),
            keys: keys.clone(),
            namespaces: namespaces.clone(),
            node_id: node_id.clone(),
            hub: hub.clone(),
            commands: commands_rx,
            ready: subscribed_tx,
            cursors: Default::default(),
        };
        let state = NodeState::new(state::NodeStateInner {
            node_id,
            keys,
            redis,
            hub,
            namespaces,
            coalescing: Arc::new(state::Coalescing::new(tick_rx)),
            presence: Arc::default(),
            cleanups: Arc::default(),
            origins: Arc::new(config.origin_allowlist()?),
            pending_auth: Arc::default(),
            subscribed: subscribed_rx,
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
        let maintenance = tokio::spawn(renew_connection_leases(state.clone()));
        let coalescing = tokio::spawn(drive_write_coalescing(state.clone(), flush_tick));
        let revalidation = tokio::spawn(revalidate_connections(state.clone()));
        let router = routes::router(state.clone());
        let metrics_server = metrics_listener.map(|listener| {
            tokio::spawn(shared::http::serve_side_listener(
                listener,
                routes::metrics_only(state.clone()),
                crate::telemetry::ACCEPT_ERRORS,
            ))
        });
        let accept = tokio::spawn(server::accept_loop(listener, state.clone(), router));
        tracing::info!(%addr, node = %state.node_id, "ws-node listening");

        shutdown.await;
        let started = Instant::now();
        let open = state.hub.connection_count();
        tracing::info!(open, "draining: closing every socket with 1001");
        draining.send_replace(true);
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

/// Re-checks every local socket's credential against the revocation markers,
/// catching a revocation whose announcement on the control channel was lost.
/// Node-wide and deduplicated: one pipeline per round for all distinct
/// credentials and users, instead of a Redis round trip per socket. If Redis
/// cannot answer, nothing is closed: Redis blinking is no reason to drop clients.
async fn revalidate_connections(state: NodeState) {
    use std::collections::HashSet;
    let mut tick = tokio::time::interval(state.config.revalidate_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let connections = state.hub.connection_credentials();
        let sources: Vec<_> = connections
            .iter()
            .map(|(_, s, _)| *s)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let users: Vec<_> = connections
            .iter()
            .map(|(_, _, u)| *u)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut revoked_sources = HashSet::new();
        let mut revoked_users = HashSet::new();
        let mut redis = state.redis.clone();
        let mut failed = false;
        for chunk in sources.chunks(500) {
            match shared::credential::revoked_among_sources(&mut redis, &state.keys, chunk).await {
                Ok(revoked) => revoked_sources.extend(revoked),
                Err(_) => failed = true,
            }
        }
        for chunk in users.chunks(500) {
            match shared::credential::revoked_among_users(&mut redis, &state.keys, chunk).await {
                Ok(revoked) => revoked_users.extend(revoked),
                Err(_) => failed = true,
            }
        }
        if failed {
            tracing::debug!("re-validation could not reach Redis; will try next round");
        }
        for (id, source, user) in connections {
            if revoked_sources.contains(&source) || revoked_users.contains(&user) {
                metrics::counter!(crate::telemetry::REVALIDATION_CLOSES).increment(1);
                state.hub.close_connection(id, protocol::close::FORBIDDEN);
            }
        }
    }
}

/// Measures the node's delivery rate every tick, turns write coalescing on or
/// off, and ticks (always: a connection that saw it on must not wait forever).
async fn drive_write_coalescing(state: NodeState, tick: watch::Sender<u64>) {
    let period_ms = state.config.write_coalesce_ms;
    if period_ms == 0 {
        return;
    }
    let period = Duration::from_millis(period_ms);
    let threshold = state.config.write_coalesce_above.saturating_mul(period_ms) / 1000;
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Deliveries per tick, smoothed over ~20 ticks: fan-out comes in bursts (a
    // message to N members at once), and one burst must not flip the mode.
    let mut per_tick = 0.0_f64;
    loop {
        interval.tick().await;
        let delivered = state.hub.take_delivered() as f64;
        per_tick += (delivered - per_tick) * 0.05;
        state.coalescing.set(per_tick > threshold as f64);
        tick.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Keeps this node's cluster-wide entries alive (per-user slots, directory
/// entries, presence) and sweeps lapsed presence in the channels it serves, so
/// a node that died leaves no zombies: its entries lapse within one lease and
/// the survivors announce the `leave`s.
async fn renew_connection_leases(state: NodeState) {
    let lease = state.config.connection_lease();
    let mut tick = tokio::time::interval(lease / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        let users = state.hub.connection_users();
        let connections: Vec<_> = users
            .iter()
            .map(|(id, user_id)| (*user_id, state.connection_name(*id)))
            .collect();
        let memberships = state.presence_memberships();
        let mut redis = state.redis.clone();
        match shared::connections::renew(&mut redis, &state.keys, &connections, lease).await {
            Ok(lost) if !lost.is_empty() => {
                let lost: Vec<_> = lost.into_iter().map(|i| users[i]).collect();
                connection::restore_connection_entries(&state, &lost).await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not renew connection leases"),
        }
        match presence::renew(&mut redis, &state.keys, &memberships, lease).await {
            Ok(lost) => {
                for membership in lost.iter().filter(|m| state.has_presence(m)) {
                    if let Err(e) = presence::join(&mut redis, &state.keys, membership, lease).await
                    {
                        tracing::warn!(error = %e, "could not restore presence");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not renew presence"),
        }
        let channels: std::collections::BTreeSet<_> =
            memberships.into_iter().map(|m| m.channel).collect();
        for channel in channels {
            if let Err(e) = presence::sweep(&mut redis, &state.keys, &channel).await {
                tracing::warn!(error = %e, "could not sweep presence");
            }
        }
    }
}

//! auth-service: logs people in, keeps HttpOnly session cookies, manages API
//! keys, and mints the short-lived single-use tickets that open WebSockets on
//! ws-node. Postgres holds the durable truth (users, sessions, keys); Redis
//! holds what is short-lived or shared (tickets, the session cache, rate-limit
//! counters, pub/sub).
//!
//! `main.rs` only parses the command line; tests build the very same
//! [`Application`] on port 0 against a throwaway database.

pub mod accounts;
pub mod api_keys;
pub mod balance;
pub mod cli;
pub mod config;
pub mod credential_gate;
pub mod csrf;
pub mod db;
pub mod error;
pub mod extract;
pub mod login_limits;
pub mod password;
pub mod rate_limit;
pub mod revocation;
pub mod routes;
pub mod serving;
pub mod sessions;
pub mod state;
pub mod telemetry;

use anyhow::Context as _;
use config::Config;
use state::AppState;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

impl AppState {
    /// Connects to Postgres (creating and migrating the database) and Redis,
    /// and prepares everything requests share. Used by the server and the CLI.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let db = db::connect_and_migrate(config.database_url.expose(), config.database_pool_size)
            .await?;
        let redis_target = config.common.redis_target();
        let redis = shared::redis_conn::open(&redis_target)
            .await
            .with_context(|| format!("connecting to Redis at {redis_target}"))?;
        let idle = config.session_idle_timeout_secs;
        // Activity is written to Postgres at most this often per session and
        // process; a quarter of the idle timeout keeps the Postgres fallback accurate.
        let touch_interval = Duration::from_secs((idle / 4).clamp(1, 60));
        let command_connections = crate::serving::CommandConnections::default();
        command_connections.add(redis.clone());
        let namespaces = config.common.namespaces()?;
        Ok(Self::new(state::AppStateInner {
            command_connections,
            keys: config.common.redis_keys()?,
            origins: Arc::new(config.common.origin_allowlist()?),
            openapi: routes::openapi::document(&config, &namespaces),
            namespaces: Arc::new(namespaces),
            passwords: password::PasswordHasher::new(config.hash_concurrency(), config.hash_nice)?,
            api_keys: Arc::new(api_keys::ApiKeyVerifier::new(Duration::from_millis(
                config.api_key_cache_ms,
            ))),
            credential_gate: Arc::new(credential_gate::CredentialGate::new(
                config.database_pool_size,
            )),
            recently_seen_sessions: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(touch_interval)
                .build(),
            metrics: telemetry::register(),
            config: Arc::new(config),
            db,
            redis,
        }))
    }
}

/// A bound, ready-to-run auth-service.
pub struct Application {
    listener: TcpListener,
    /// `METRICS_LISTEN`'s socket, when metrics are served apart.
    metrics_listener: Option<TcpListener>,
    state: AppState,
}

impl Application {
    /// Binds the listener (port 0 picks a free one) and connects to everything.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let listener = shared::net::bind(config.listen)
            .with_context(|| format!("binding AUTH_LISTEN={}", config.listen))?;
        let metrics_listener = config.common.bind_metrics_listener()?;
        let state = AppState::build(config).await?;
        Ok(Self {
            listener,
            metrics_listener,
            state,
        })
    }

    /// Where `/metrics` is served when `METRICS_LISTEN` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.state.config.listen)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish
    /// for up to `SHUTDOWN_TIMEOUT_SECS`.
    ///
    /// The calling task serves, and `SERVE_THREADS - 1` more threads serve the
    /// same listening socket, each on its own single-threaded runtime with its
    /// own Redis connection. A connection is handled start to end by one
    /// thread: the one that accepted it, or the least busy one if that held
    /// more than its share ([`balance`]). No request hops threads, so
    /// answering one wakes no other thread (the mint benchmark measured
    /// clearly less CPU per mint than on one shared work-stealing runtime;
    /// docs/ARCHITECTURE.md says more). The database pool, the caches and the
    /// password-hashing slots stay shared by all threads.
    ///
    /// Past the timeout, the serving threads end, closing the connections
    /// they still hold, before this returns. Connections of the calling
    /// task's runtime are closed when that runtime ends (in the binary: at
    /// once, as the process exits).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let drain = Duration::from_secs(self.state.config.shutdown_timeout_secs);
        let addr = self.local_addr();
        let outbox = tokio::spawn(revocation::run_outbox(self.state.clone()));
        let metrics_server = self.metrics_listener.map(|listener| {
            tokio::spawn(shared::http::serve_side_listener(
                listener,
                routes::metrics_only(self.state.clone()),
                crate::telemetry::ACCEPT_ERRORS,
            ))
        });
        let listener = self.listener.into_std().context("detaching the listener")?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (abandon_tx, abandon_rx) = watch::channel(false);
        let (balancer, mut inboxes) = balance::Balancer::new(self.state.config.serve_threads());
        let own_inbox = inboxes.remove(0);
        let mut helpers = Vec::new();
        for (index, inbox) in (1..).zip(inboxes) {
            let listener = listener.try_clone().context("sharing the listener")?;
            let (state, stop) = (self.state.clone(), stop_rx.clone());
            let thread = Serving {
                index,
                balancer: Arc::clone(&balancer),
                inbox,
            };
            let mut abandon = abandon_rx.clone();
            let work = async move {
                let redis = shared::redis_conn::open(&state.config.common.redis_target())
                    .await
                    .context("connecting a serving thread to Redis")?;
                let listener = TcpListener::from_std(listener).context("listening")?;
                tokio::select! {
                    () = serve(listener, thread, state.with_redis(redis), stop) => {}
                    // Returning ends the thread's runtime, and with it every
                    // connection task still on it.
                    _ = abandon.wait_for(|abandoned| *abandoned) => {}
                }
                anyhow::Ok(())
            };
            helpers.push(crate::serving::spawn(index, work).context("starting a serving thread")?);
        }
        let listener = TcpListener::from_std(listener).context("listening")?;
        tracing::info!(%addr, threads = helpers.len() + 1, "auth-service listening");
        let helpers_done = async move {
            for helper in helpers {
                helper
                    .await
                    .context("a serving thread panicked")?
                    .context("starting a serving runtime")??;
            }
            anyhow::Ok(())
        };
        let own_thread = Serving {
            index: 0,
            balancer,
            inbox: own_inbox,
        };
        let own = serve(listener, own_thread, self.state, stop_rx);
        let shutdown_then_drain = async {
            shutdown.await;
            let _ = stop_tx.send(true);
            tokio::time::sleep(drain).await;
        };
        tokio::pin!(own, helpers_done, shutdown_then_drain);
        let (mut own_done, mut helpers_finished) = (false, false);
        while !(own_done && helpers_finished) {
            tokio::select! {
                () = &mut own, if !own_done => own_done = true,
                // A thread that could not start ends it all.
                served = &mut helpers_done, if !helpers_finished => {
                    served?;
                    helpers_finished = true;
                }
                () = &mut shutdown_then_drain => {
                    tracing::warn!("drain timeout reached; closing remaining connections");
                    let _ = abandon_tx.send(true);
                    if !helpers_finished {
                        helpers_done.await?;
                    }
                    break;
                }
            }
        }
        outbox.abort();
        if let Some(server) = metrics_server {
            server.abort();
        }
        tracing::info!("auth-service stopped");
        Ok(())
    }
}

/// One serving thread's place among the others: its number, and its share
/// of the connections ([`balance`]).
struct Serving {
    index: usize,
    balancer: Arc<balance::Balancer>,
    inbox: balance::Inbox,
}

/// Serves `listener` on the current runtime until `stop` turns true, then
/// until the connections it holds have finished. Each connection is served by
/// hyper directly ([`shared::http`]), so that a request must arrive within
/// `REQUEST_READ_TIMEOUT_SECS`. A connection accepted while this thread holds
/// more than its share goes to another thread, and this thread serves those
/// the others pass to it.
async fn serve(
    listener: TcpListener,
    mut thread: Serving,
    state: AppState,
    mut stop: watch::Receiver<bool>,
) {
    let http = shared::http::builder(state.config.request_read_timeout());
    let router = routes::app(state);
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer, counted) = tokio::select! {
            () = async {
                // (The guard `wait_for` returns must not live across an await.)
                let _ = stop.wait_for(|stopping| *stopping).await;
            } => break,
            (stream, peer) = shared::http::accept(&listener, crate::telemetry::ACCEPT_ERRORS) => {
                match thread.balancer.assign(thread.index, stream, peer) {
                    Some((stream, counted)) => (stream, peer, counted),
                    None => continue,
                }
            }
            Some(passed) = thread.inbox.next() => passed,
        };
        let service = shared::http::RouterService::new(router.clone(), peer);
        let connection =
            connections.watch(http.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _counted = counted;
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "http connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
}

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
pub mod cli;
pub mod config;
pub mod csrf;
pub mod db;
pub mod error;
pub mod extract;
pub mod password;
pub mod rate_limit;
pub mod routes;
pub mod sessions;
pub mod state;

use anyhow::Context as _;
use config::Config;
use state::AppState;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

impl AppState {
    /// Connects to Postgres (creating and migrating the database) and Redis,
    /// and prepares everything requests share. Used by the server and the CLI.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let db = db::connect_and_migrate(&config.database_url, config.database_pool_size).await?;
        let redis = shared::redis_conn::connect(&config.redis_url)
            .await
            .with_context(|| format!("connecting to Redis at {}", config.redis_url))?;
        let idle = config.session_idle_timeout_secs;
        // Activity is written to Postgres at most this often per session and
        // process; a quarter of the idle timeout keeps the Postgres fallback accurate.
        let touch_interval = Duration::from_secs((idle / 4).clamp(1, 60));
        Ok(Self::new(state::AppStateInner {
            keys: config.redis_keys()?,
            origins: Arc::new(config.origin_allowlist()?),
            namespaces: Arc::new(config.namespaces()?),
            passwords: password::PasswordHasher::new(config.hash_concurrency(), config.hash_nice)?,
            api_keys: Arc::new(api_keys::ApiKeyVerifier::new(Duration::from_millis(
                config.api_key_cache_ms,
            ))),
            recently_seen_sessions: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(touch_interval)
                .build(),
            metrics: shared::telemetry::prometheus(),
            config: Arc::new(config),
            db,
            redis,
        }))
    }
}

/// A bound, ready-to-run auth-service.
pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Binds the listener (port 0 picks a free one) and connects to everything.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let listener = shared::net::bind(config.listen)
            .with_context(|| format!("binding AUTH_LISTEN={}", config.listen))?;
        let state = AppState::build(config).await?;
        Ok(Self { listener, state })
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
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let drain = Duration::from_secs(self.state.config.shutdown_timeout_secs);
        let addr = self.local_addr();
        let app = routes::app(self.state);
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        // TCP_NODELAY: responses are small and must not wait for the client's
        // delayed ACK (Nagle's algorithm).
        let listener = axum::serve::ListenerExt::tap_io(self.listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        });
        let server = axum::serve(
            listener,
            axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<
                SocketAddr,
            >(app),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stopping_tx.send(());
        });
        tracing::info!(%addr, "auth-service listening");
        tokio::select! {
            result = server => result.context("serving HTTP")?,
            () = async {
                if stopping_rx.await.is_ok() {
                    tokio::time::sleep(drain).await;
                } else {
                    std::future::pending::<()>().await;
                }
            } => tracing::warn!("drain timeout reached; closing remaining connections"),
        }
        tracing::info!("auth-service stopped");
        Ok(())
    }
}

//! What every request handler can reach.

use crate::api_keys::ApiKeyVerifier;
use crate::config::Config;
use crate::password::PasswordHasher;
use crate::serving::CommandConnections;
use shared::keys::RedisKeys;
use shared::namespace::Namespaces;
use shared::origin::OriginAllowlist;
use shared::redis_conn::Redis;
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

/// Shared by all requests. Extractors clone it per request, so it is one
/// `Arc` (a single reference-count increment) around the fields.
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

impl AppState {
    pub fn new(inner: AppStateInner) -> Self {
        Self(Arc::new(inner))
    }

    /// The same state with another Redis connection, for a serving thread
    /// whose runtime drives that connection. Everything else (the database
    /// pool, the caches, the password-hashing slots) stays shared.
    pub fn with_redis(&self, redis: Redis) -> Self {
        self.command_connections.add(redis.clone());
        Self::new(AppStateInner {
            redis,
            ..(*self.0).clone()
        })
    }
}

impl std::ops::Deref for AppState {
    type Target = AppStateInner;
    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

#[derive(Clone)]
pub struct AppStateInner {
    pub config: Arc<Config>,
    pub db: PgPool,
    /// One multiplexed, self-reconnecting connection shared by the requests
    /// of one serving thread (see [`AppState::with_redis`]).
    pub redis: Redis,
    /// Every serving thread's `redis`, for the readiness check.
    pub command_connections: CommandConnections,
    pub keys: RedisKeys,
    pub origins: Arc<OriginAllowlist>,
    pub namespaces: Arc<Namespaces>,
    pub passwords: PasswordHasher,
    pub api_keys: Arc<ApiKeyVerifier>,
    /// Bounds what credentials no cache knows can cost Postgres.
    pub credential_gate: Arc<crate::credential_gate::CredentialGate>,
    /// Sessions whose activity this process wrote to Postgres recently.
    pub recently_seen_sessions: moka::sync::Cache<Uuid, ()>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// `GET /openapi.json`'s body, built once ([`crate::routes::openapi::document`]).
    pub openapi: bytes::Bytes,
}

//! Keeps a flood of bogus credentials away from Postgres.
//!
//! A well-formed cookie or API key (a valid checksum is free to forge) that
//! no cache knows costs a Postgres query. Three things bound what a flood of
//! them can cost:
//!
//! - **per address**: failed lookups are counted per client address (an IPv6
//!   address by its /64) in Redis, across processes; over
//!   `AUTH_MAX_FAILURES_PER_IP` per `AUTH_FAILURE_WINDOW_SECS`, credentials
//!   from that address that would need Postgres get 429 (credentials already
//!   in a cache still work, so a client behind the same address that
//!   authenticated before is not cut off).
//! - **negative caching**: a session hash that Postgres does not know (or
//!   knows as ended) is remembered for a minute, so repeating it costs
//!   nothing; API keys have their own verdict cache (`api_keys`).
//! - **a bound on lookups at once**: at most half the database pool serves
//!   credential lookups, so logins, revocations and the rest keep their
//!   connections however many lookups queue; a lookup that cannot start
//!   within a second answers 503 `busy`.
//!
//! Legitimate traffic rarely reaches the gate: sessions are found in the Redis
//! cache and API keys in memory, and only a miss is gated.

use crate::error::{Error, Result};
use crate::rate_limit::{self, address_subject};
use crate::state::AppState;
use shared::keys::RateBucket;
use shared::secret::TokenHash;
use std::net::IpAddr;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// How long a session hash found unknown is not asked again.
const UNKNOWN_SESSION_TTL: Duration = Duration::from_secs(60);
/// How long a lookup waits for a slot before answering 503.
const LOOKUP_WAIT: Duration = Duration::from_secs(1);

pub struct CredentialGate {
    lookups: Semaphore,
    unknown_sessions: moka::sync::Cache<TokenHash, ()>,
}

/// Which credential a lookup was for.
#[derive(Clone, Copy)]
pub enum CredentialKind {
    Session,
    ApiKey,
}

/// A Postgres credential lookup let through the gate; [`Self::finish`] says
/// how it went.
pub struct AdmittedLookup<'a> {
    _slot: SemaphorePermit<'a>,
    state: &'a AppState,
    client: IpAddr,
    kind: CredentialKind,
}

impl CredentialGate {
    /// A gate letting through at most half of `pool_size` lookups at once.
    pub fn new(pool_size: u32) -> Self {
        let slots = usize::try_from(pool_size / 2).unwrap_or(1).max(1);
        Self {
            lookups: Semaphore::new(slots),
            unknown_sessions: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(UNKNOWN_SESSION_TTL)
                .build(),
        }
    }

    /// Whether `hash` was recently found not to be a live session.
    pub fn is_known_unknown_session(&self, hash: &TokenHash) -> bool {
        self.unknown_sessions.contains_key(hash)
    }

    /// Lets a lookup from `client` through to Postgres: 429 when the address
    /// is over its failure budget, 503 when no slot frees up in time.
    pub async fn admit<'a>(
        &'a self,
        state: &'a AppState,
        client: IpAddr,
        kind: CredentialKind,
    ) -> Result<AdmittedLookup<'a>> {
        let counter = failure_counter(state, client);
        let mut redis = state.redis.clone();
        // A Redis outage must not lock everyone out of Postgres: unchecked.
        let failures: Option<u64> = redis::cmd("GET")
            .arg(&counter)
            .query_async(&mut redis)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "credential failure budget unavailable; not checked");
                None
            });
        if failures.unwrap_or(0) >= state.config.auth_max_failures_per_ip {
            return Err(
                rate_limit::refusal(&mut redis, RateBucket::AuthFailuresByIp, &counter).await,
            );
        }
        let slot = tokio::time::timeout(LOOKUP_WAIT, self.lookups.acquire())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(Error::Busy(
                "too many credential lookups at once; retry shortly",
            ))?;
        Ok(AdmittedLookup {
            _slot: slot,
            state,
            client,
            kind,
        })
    }
}

impl AdmittedLookup<'_> {
    /// Records the lookup's outcome: a credential Postgres does not know is
    /// counted against the address (and a session hash remembered).
    pub async fn finish(self, found: bool, hash: &TokenHash) {
        let outcome = if found { "found" } else { "unknown" };
        match self.kind {
            CredentialKind::Session => {
                metrics::counter!(crate::telemetry::SESSION_LOOKUPS, "outcome" => outcome)
                    .increment(1);
            }
            CredentialKind::ApiKey => {
                metrics::counter!(crate::telemetry::API_KEY_LOOKUPS, "outcome" => outcome)
                    .increment(1);
            }
        }
        if found {
            return;
        }
        if matches!(self.kind, CredentialKind::Session) {
            self.state
                .credential_gate
                .unknown_sessions
                .insert(*hash, ());
        }
        let window = Duration::from_secs(self.state.config.auth_failure_window_secs);
        let mut pipe = redis::pipe();
        rate_limit::add_hit(&mut pipe, &failure_counter(self.state, self.client), window);
        let mut redis = self.state.redis.clone();
        if let Err(e) = pipe.query_async::<()>(&mut redis).await {
            tracing::warn!(error = %e, "could not count a failed credential lookup");
        }
    }
}

fn failure_counter(state: &AppState, client: IpAddr) -> String {
    state
        .keys
        .rate_limit(RateBucket::AuthFailuresByIp, address_subject(client))
}

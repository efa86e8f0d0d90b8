//! API keys for server clients: `tess_` + 43 random base62 characters (256 bits)
//! + a 6-character CRC32 checksum, in the manner of GitHub's tokens.
//!
//! The prefix makes leaked keys recognisable to secret scanners; the checksum
//! lets us reject typos and garbage without a database round trip. Keys are
//! shown once and stored as SHA-256 (a uniformly random 256-bit secret needs no
//! slow hash, and argon2 per request would cap minting at a few dozen a second).
//!
//! Verification is cached in memory for `API_KEY_CACHE_MS` (at most 1 s): the
//! process that revokes a key forgets it at once, every other process within
//! that bound.

use crate::credential_gate::CredentialKind;
use crate::error::{Error, Result};
use crate::state::AppState;
use moka::future::Cache;
use serde::Serialize;
use shared::scope::{Scope, Scopes};
use shared::secret::{Secret, TokenHash};
use sqlx::PgPool;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

pub const KEY_PREFIX: &str = "tess_";
const RANDOM_LEN: usize = 43;
const CHECKSUM_LEN: usize = 6;
pub const KEY_LEN: usize = KEY_PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN;
/// Characters of a key that are safe to store and show, to tell keys apart.
const DISPLAY_PREFIX_LEN: usize = KEY_PREFIX.len() + 8;
/// How often a key's `last_used_at` is written at most (per process).
const LAST_USED_RESOLUTION: Duration = Duration::from_secs(10);

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A fresh API key.
pub fn generate() -> Secret {
    let random: String = (0..RANDOM_LEN)
        .map(|_| char::from(BASE62[rand::random_range(0..BASE62.len())]))
        .collect();
    let checksum = checksum(&random);
    Secret::new(format!("{KEY_PREFIX}{random}{checksum}"))
}

fn checksum(random: &str) -> String {
    let mut n = crc32fast::hash(random.as_bytes());
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `key` is shaped like one of our keys with a valid checksum.
pub fn is_well_formed(key: &str) -> bool {
    let Some(body) = key.strip_prefix(KEY_PREFIX) else {
        return false;
    };
    if key.len() != KEY_LEN || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let (random, check) = body.split_at(RANDOM_LEN);
    checksum(random) == check
}

fn display_prefix(key: &str) -> String {
    key.chars().take(DISPLAY_PREFIX_LEN).collect()
}

/// A key that passed verification.
#[derive(Clone, Debug)]
pub struct VerifiedKey {
    pub id: Uuid,
    pub user_id: Uuid,
    pub username: String,
    pub scopes: Scopes,
}

/// Checks keys against Postgres through a short-lived in-memory cache.
pub struct ApiKeyVerifier {
    /// Hash → key (or `None`: not a live key; cached too, so garbage with a
    /// valid checksum cannot hammer Postgres).
    /// Each entry remembers when its lookup *started*: its age is measured
    /// from then, so a slow query does not stretch the revocation bound.
    cache: Cache<TokenHash, (Option<VerifiedKey>, std::time::Instant)>,
    cache_ttl: Duration,
    /// Keys whose entry is being looked up again ahead of its expiry (at most
    /// one lookup per key at a time).
    refreshing: Arc<Mutex<HashSet<TokenHash>>>,
    /// Keys whose `last_used_at` this process wrote recently.
    recently_used: moka::sync::Cache<Uuid, ()>,
}

impl ApiKeyVerifier {
    pub fn new(cache_ttl: Duration) -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(cache_ttl.max(Duration::from_millis(1)))
                .build(),
            cache_ttl,
            refreshing: Arc::default(),
            recently_used: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(LAST_USED_RESOLUTION)
                .build(),
        }
    }

    /// The live key behind `key`, or `None`. Concurrent lookups of one key
    /// share a single database query.
    ///
    /// A key in no cache is looked up behind the credential gate
    /// ([`crate::credential_gate`]), which charges a key Postgres does not
    /// know to `client`'s address.
    pub async fn verify(
        &self,
        state: &AppState,
        key: &str,
        client: IpAddr,
    ) -> Result<Option<VerifiedKey>> {
        if !is_well_formed(key) {
            return Ok(None);
        }
        let hash = TokenHash::of(key);
        let verified = if self.cache_ttl.is_zero() {
            // No caching: every verification asks Postgres.
            gated_lookup(state, hash, client)
                .await
                .map_err(|e| lookup_failed(&e))?
        } else {
            self.cached(state, hash, client).await?
        };
        if let Some(k) = &verified {
            self.note_used(&state.db, k.id);
        }
        Ok(verified)
    }

    /// `hash`'s entry from the cache, looked up on a miss. An entry is aged
    /// from when its lookup started: one that a slow query left older than
    /// the cache's lifetime is looked up again.
    ///
    /// An entry past half its lifetime is still answered from, and looked up
    /// again in the background. Otherwise every request for a busy key would
    /// wait on the one Postgres query each time its entry expired: under load
    /// (Postgres waiting for a CPU) that stall was the mint's p99.
    async fn cached(
        &self,
        state: &AppState,
        hash: TokenHash,
        client: IpAddr,
    ) -> Result<Option<VerifiedKey>> {
        let db = &state.db;
        let fetch = || async move {
            let started = std::time::Instant::now();
            gated_lookup(state, hash, client)
                .await
                .map(|key| (key, started))
        };
        let (verified, started) = self
            .cache
            .try_get_with(hash, fetch())
            .await
            .map_err(|e| lookup_failed(&e))?;
        let age = started.elapsed();
        if age <= self.cache_ttl {
            if age > self.cache_ttl / 2 {
                self.refresh_in_background(db, hash);
            }
            return Ok(verified);
        }
        self.cache.invalidate(&hash).await;
        Ok(self
            .cache
            .try_get_with(hash, fetch())
            .await
            .map_err(|e| lookup_failed(&e))?
            .0)
    }

    /// Looks `hash` up again and replaces its entry, unless that is already
    /// under way. A failed lookup leaves the entry to expire as usual; an
    /// entry dropped meanwhile (the key was revoked here) is not put back, nor
    /// one replaced by a newer lookup.
    fn refresh_in_background(&self, db: &PgPool, hash: TokenHash) {
        let mut refreshing = self
            .refreshing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !refreshing.insert(hash) {
            return;
        }
        drop(refreshing);
        let (db, cache, refreshing) = (db.clone(), self.cache.clone(), self.refreshing.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            if let Ok(key) = lookup(&db, hash).await {
                cache
                    .entry(hash)
                    .and_compute_with(|present| {
                        // Only over an older lookup: one that started
                        // after ours (after a local revocation, say) knows more.
                        std::future::ready(match present {
                            Some(entry) if entry.value().1 < started => {
                                moka::ops::compute::Op::Put((key, started))
                            }
                            _ => moka::ops::compute::Op::Nop,
                        })
                    })
                    .await;
            }
            refreshing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&hash);
        });
    }

    /// Drops a key from this process's cache (after revoking it here).
    pub async fn forget(&self, hash: TokenHash) {
        self.cache.invalidate(&hash).await;
    }

    fn note_used(&self, db: &PgPool, key_id: Uuid) {
        if self.recently_used.contains_key(&key_id) {
            return;
        }
        self.recently_used.insert(key_id, ());
        let db = db.clone();
        tokio::spawn(async move {
            let result = sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE id = $1")
                .bind(key_id)
                .execute(&db)
                .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not record API key use");
            }
        });
    }
}

/// The answer to a failed key lookup: Postgres unreachable → 503.
fn lookup_failed(e: &Error) -> Error {
    match e {
        Error::Database(_) => Error::Unavailable("the database is unavailable; retry later"),
        Error::RateLimited { retry_after_secs } => Error::RateLimited {
            retry_after_secs: *retry_after_secs,
        },
        Error::Busy(message) => Error::Busy(message),
        other => Error::Internal(anyhow::anyhow!("api key lookup: {other}")),
    }
}

/// [`lookup`] behind the credential gate.
async fn gated_lookup(
    state: &AppState,
    hash: TokenHash,
    client: IpAddr,
) -> Result<Option<VerifiedKey>> {
    let admitted = state
        .credential_gate
        .admit(state, client, CredentialKind::ApiKey)
        .await?;
    let key = lookup(&state.db, hash).await?;
    admitted.finish(key.is_some(), &hash).await;
    Ok(key)
}

async fn lookup(db: &PgPool, hash: TokenHash) -> Result<Option<VerifiedKey>> {
    let row: Option<(Uuid, Uuid, String, Vec<String>)> = sqlx::query_as(
        "SELECT k.id, k.user_id, u.username, k.scopes FROM api_keys k JOIN users u ON u.id = k.user_id
         WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND u.disabled_at IS NULL",
    )
    .bind(hash.as_bytes().as_slice())
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(id, user_id, username, scopes)| VerifiedKey {
        id,
        user_id,
        username,
        scopes: scopes
            .iter()
            .filter_map(|s| s.parse::<Scope>().ok())
            .collect(),
    }))
}

/// An API key as listed (never with its secret).
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ApiKeyInfo {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    #[sqlx(try_from = "Vec<String>")]
    #[schema(value_type = Vec<Scope>)]
    pub scopes: ScopeList,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

/// Scopes as stored in Postgres (`text[]`), converted for JSON.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct ScopeList(pub Scopes);

impl TryFrom<Vec<String>> for ScopeList {
    type Error = shared::scope::UnknownScope;
    fn try_from(v: Vec<String>) -> Result<Self, Self::Error> {
        v.iter()
            .map(|s| s.parse::<Scope>())
            .collect::<Result<Scopes, _>>()
            .map(ScopeList)
    }
}

/// Validates an API key's display name.
pub fn validate_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(Error::unprocessable(
            "invalid_name",
            "name must be 1-100 printable characters",
        ));
    }
    Ok(name.to_owned())
}

/// Issues a key for `user_id`; the returned secret is shown once and never stored.
pub async fn create(
    db: &PgPool,
    user_id: Uuid,
    name: &str,
    scopes: Scopes,
) -> Result<(Secret, ApiKeyInfo)> {
    if scopes.is_empty() {
        return Err(Error::unprocessable(
            "invalid_scopes",
            "at least one scope is required",
        ));
    }
    let key = generate();
    let info = sqlx::query_as::<_, ApiKeyInfo>(
        "INSERT INTO api_keys (id, user_id, name, prefix, key_hash, scopes) VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, name, prefix, scopes, created_at, last_used_at, revoked_at",
    )
    .bind(Uuid::new_v4())
    .bind(user_id)
    .bind(validate_name(name)?)
    .bind(display_prefix(key.expose()))
    .bind(TokenHash::of(key.expose()).as_bytes().as_slice())
    .bind(scopes.to_strings())
    .fetch_one(db)
    .await?;
    metrics::counter!(crate::telemetry::API_KEYS_CREATED).increment(1);
    Ok((key, info))
}

pub async fn list(db: &PgPool, user_id: Uuid) -> Result<Vec<ApiKeyInfo>> {
    Ok(sqlx::query_as::<_, ApiKeyInfo>(
        "SELECT id, name, prefix, scopes, created_at, last_used_at, revoked_at FROM api_keys
         WHERE user_id = $1 ORDER BY created_at DESC",
    )
    .bind(user_id)
    .fetch_all(db)
    .await?)
}

/// Marks a key (of `owner`, when given) revoked in Postgres, or finds it
/// already revoked; returns its hash, or `None` if there is no such key. The
/// rest is [`crate::revocation::revoke_api_key`]'s.
pub async fn revoke(
    db: impl sqlx::PgExecutor<'_>,
    key_id: Uuid,
    owner: Option<Uuid>,
) -> Result<Option<TokenHash>> {
    let hash: Option<Vec<u8>> = sqlx::query_scalar(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
         WHERE id = $1 AND ($2::uuid IS NULL OR user_id = $2)
         RETURNING key_hash",
    )
    .bind(key_id)
    .bind(owner)
    .fetch_optional(db)
    .await?;
    Ok(hash.and_then(|h| {
        <[u8; 32]>::try_from(h.as_slice())
            .ok()
            .map(TokenHash::from_bytes)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_well_formed_and_checked() {
        let key = generate();
        let key = key.expose();
        assert_eq!(key.len(), KEY_LEN);
        assert!(key.starts_with(KEY_PREFIX));
        assert!(is_well_formed(key), "{key}");
        // Any single-character change breaks the checksum (or the shape).
        let mut tampered = key.to_owned().into_bytes();
        tampered[10] = if tampered[10] == b'a' { b'b' } else { b'a' };
        assert!(!is_well_formed(
            &String::from_utf8(tampered).expect("ascii")
        ));
        assert!(!is_well_formed("tess_short"));
        assert!(!is_well_formed(&key.replace("tess_", "tesx_")));
        assert_eq!(display_prefix(key).len(), 13);
    }
}

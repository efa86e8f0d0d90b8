//! Password hashing with argon2id at the OWASP floor (m = 19 MiB, t = 2, p = 1).
//!
//! Hashing is CPU- and memory-heavy on purpose, so it runs on the blocking pool
//! behind a semaphore: at most `HASH_CONCURRENCY` hashes at once, which bounds
//! memory (19 MiB each) and keeps the async workers free for cheap requests
//! such as ticket minting during a login storm. Waiters queue for at most
//! [`QUEUE_TIMEOUT`] and then get 503 instead of piling up without bound.

use crate::error::{Error, Result};
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use shared::secret::Secret;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Longest accepted password, checked before any hashing: argon2 accepts
/// megabytes, which would turn login into a CPU amplification attack.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Shortest password accepted for a new account.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// How long a login waits for a hashing slot before answering 503.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

const M_COST_KIB: u32 = 19_456;
const T_COST: u32 = 2;
const P_COST: u32 = 1;

#[derive(Clone)]
pub struct PasswordHasher {
    argon: Argon2<'static>,
    slots: Arc<Semaphore>,
    /// Verified against when the user does not exist, so that an unknown user
    /// costs the same time as a wrong password and usernames cannot be probed.
    dummy_hash: Arc<str>,
}

impl PasswordHasher {
    pub fn new(concurrency: usize) -> anyhow::Result<Self> {
        let params = Params::new(M_COST_KIB, T_COST, P_COST, None)
            .map_err(|e| anyhow::anyhow!("argon2 params: {e}"))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy_hash = argon
            .hash_password(shared::secret::random_token().as_bytes())
            .map_err(|e| anyhow::anyhow!("argon2: {e}"))?
            .to_string();
        Ok(Self {
            argon,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy_hash: dummy_hash.into(),
        })
    }

    /// Hashes a new password into a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
    pub async fn hash(&self, password: &Secret) -> Result<String> {
        let argon = self.argon.clone();
        let password = password.clone();
        self.run_blocking(move || {
            argon
                .hash_password(password.expose().as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| Error::Internal(anyhow::anyhow!("argon2: {e}")))
        })
        .await
    }

    /// Checks `password` against `stored` (a PHC string), or against the dummy
    /// hash when there is no stored hash, which always fails but takes as long.
    pub async fn verify(&self, password: &Secret, stored: Option<String>) -> Result<bool> {
        let argon = self.argon.clone();
        let password = password.clone();
        let exists = stored.is_some();
        let phc = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let matched = self
            .run_blocking(move || {
                let parsed = PasswordHash::new(&phc)
                    .map_err(|e| Error::Internal(anyhow::anyhow!("stored hash: {e}")))?;
                Ok(argon
                    .verify_password(password.expose().as_bytes(), &parsed)
                    .is_ok())
            })
            .await?;
        Ok(exists && matched)
    }

    async fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let permit = tokio::time::timeout(QUEUE_TIMEOUT, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| Error::Busy("too many logins at once; retry shortly"))?
            .map_err(|e| Error::Internal(e.into()))?;
        metrics::gauge!("password_hashes_in_progress").increment(1.0);
        let result = tokio::task::spawn_blocking(move || {
            let result = work();
            drop(permit);
            result
        })
        .await
        .map_err(|e| Error::Internal(e.into()));
        metrics::gauge!("password_hashes_in_progress").decrement(1.0);
        result?
    }
}

/// Checks a new password's length (on the bytes for the maximum, so the limit
/// is what the hash function actually sees).
pub fn validate_new_password(password: &str) -> Result<(), &'static str> {
    if password.len() > MAX_PASSWORD_BYTES {
        Err("password must be at most 1024 bytes")
    } else if password.chars().count() < MIN_PASSWORD_CHARS {
        Err("password must be at least 8 characters")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let hasher = PasswordHasher::new(2).expect("hasher");
        let pw = Secret::new("correct horse battery".into());
        let phc = hasher.hash(&pw).await.expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(hasher.verify(&pw, Some(phc.clone())).await.expect("verify"));
        let wrong = Secret::new("wrong".into());
        assert!(!hasher.verify(&wrong, Some(phc)).await.expect("verify"));
        assert!(!hasher.verify(&pw, None).await.expect("verify"));
    }

    #[test]
    fn new_password_rules() {
        assert!(validate_new_password("short").is_err());
        assert!(validate_new_password("long enough").is_ok());
        assert!(validate_new_password(&"x".repeat(1025)).is_err());
        assert!(validate_new_password(&"x".repeat(1024)).is_ok());
    }
}

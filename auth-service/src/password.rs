//! Password hashing with argon2id at the OWASP floor (m = 19 MiB, t = 2, p = 1).
//!
//! Hashing is CPU- and memory-heavy on purpose, so it runs on `HASH_CONCURRENCY`
//! dedicated threads behind a semaphore, which bounds memory (19 MiB each) and
//! keeps the async workers free for cheap requests such as ticket minting
//! during a login storm. The hashing threads run at a lower CPU priority
//! (`HASH_NICE`): when both compete for a core, the scheduler lets a request
//! preempt a hash rather than make it wait out a time slice. Waiters queue for
//! at most [`QUEUE_TIMEOUT`] and then get 503 instead of piling up without bound.

use crate::error::{Error, Result};
use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use shared::secret::Secret;
use std::sync::{Arc, Mutex};
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
const OUTPUT_LEN: usize = 32;
const SALT_LEN: usize = 16;

#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    slots: Arc<Semaphore>,
    threads: Arc<HashThreads>,
    memory: Arc<MemoryPool>,
    /// Verified against when the user does not exist, so that an unknown user
    /// costs the same time as a wrong password and usernames cannot be probed.
    dummy_hash: Arc<str>,
}

/// Argon2's 19 MiB of working memory, allocated once per hashing slot and
/// reused. Allocating and freeing it per login makes glibc raise its mmap
/// threshold and then serve these blocks from fragmenting heap arenas: under a
/// login storm the process grew by hundreds of MiB. With the pool, memory for
/// hashing is exactly `HASH_CONCURRENCY` × 19 MiB, however many logins queue.
#[derive(Default)]
struct MemoryPool {
    free: Mutex<Vec<Vec<Block>>>,
}

impl MemoryPool {
    fn take(&self, blocks: usize) -> Vec<Block> {
        let reused = self
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
            .filter(|m| m.len() == blocks);
        reused.unwrap_or_else(|| vec![Block::default(); blocks])
    }

    fn give_back(&self, memory: Vec<Block>) {
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(memory);
    }

    /// Computes an argon2 hash into `out` with pooled working memory.
    fn hash_into(
        &self,
        algorithm: Algorithm,
        version: Version,
        params: Params,
        password: &[u8],
        salt: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        let mut memory = self.take(params.block_count());
        let result = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
            password,
            salt,
            out,
            &mut memory[..],
        );
        self.give_back(memory);
        result.map_err(|e| Error::Internal(anyhow::anyhow!("argon2: {e}")))
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Threads that do nothing but hash, at a raised nice value (set once per
/// thread: a thread may lower its priority but not raise it back, so pool
/// threads shared with other blocking work could not be used). They exit when
/// the last `PasswordHasher` clone is dropped.
struct HashThreads {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl HashThreads {
    fn start(count: usize, nice: i32) -> anyhow::Result<Self> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..count {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    // On Linux the nice value is per thread; `None` is this one.
                    if let Err(e) = rustix::process::setpriority_process(None, nice) {
                        tracing::warn!(error = %e, nice, "could not lower the hashing thread's priority");
                    }
                    loop {
                        let job = queue
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(Self { jobs })
    }
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(anyhow::anyhow!("password hash: {e}"))
}

impl PasswordHasher {
    pub fn new(concurrency: usize, nice: i32) -> anyhow::Result<Self> {
        let params = Params::new(M_COST_KIB, T_COST, P_COST, Some(OUTPUT_LEN))
            .map_err(|e| anyhow::anyhow!("argon2 params: {e}"))?;
        let memory = Arc::new(MemoryPool::default());
        let dummy_hash = hash_phc(&memory, &params, shared::secret::random_token().as_bytes())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Self {
            params,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            threads: Arc::new(HashThreads::start(concurrency.max(1), nice)?),
            memory,
            dummy_hash: dummy_hash.into(),
        })
    }

    /// Hashes a new password into a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
    pub async fn hash(&self, password: &Secret) -> Result<String> {
        let (memory, params, password) =
            (self.memory.clone(), self.params.clone(), password.clone());
        self.run_blocking(move || hash_phc(&memory, &params, password.expose().as_bytes()))
            .await
    }

    /// Checks `password` against `stored` (a PHC string), or against the dummy
    /// hash when there is no stored hash, which always fails but takes as long.
    pub async fn verify(&self, password: &Secret, stored: Option<String>) -> Result<bool> {
        let memory = self.memory.clone();
        let password = password.clone();
        let exists = stored.is_some();
        let phc = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let matched = self
            .run_blocking(move || verify_phc(&memory, &phc, password.expose().as_bytes()))
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
        metrics::gauge!(crate::telemetry::PASSWORD_HASHES_IN_PROGRESS).increment(1.0);
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // A panicking hash must not take its thread down with it.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            drop(permit);
            let _ = done.send(result);
        });
        let result = match self.threads.jobs.send(job) {
            Ok(()) => result.await.map_err(internal),
            Err(_) => Err(internal("the hashing threads are gone")),
        };
        metrics::gauge!(crate::telemetry::PASSWORD_HASHES_IN_PROGRESS).decrement(1.0);
        result?.map_err(|_| internal("argon2 panicked"))?
    }
}

/// Hashes with a fresh random salt into a PHC string.
fn hash_phc(memory: &MemoryPool, params: &Params, password: &[u8]) -> Result<String> {
    let salt_bytes: [u8; SALT_LEN] = rand::random();
    let salt = Salt::new(&salt_bytes).map_err(internal)?;
    let mut out = [0u8; OUTPUT_LEN];
    memory.hash_into(
        Algorithm::Argon2id,
        Version::V0x13,
        params.clone(),
        password,
        &salt_bytes,
        &mut out,
    )?;
    Ok(PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(internal)?,
        salt: Some(salt),
        hash: Some(Output::new(&out).map_err(internal)?),
    }
    .to_string())
}

/// Recomputes the hash with the PHC string's own algorithm, version, params
/// and salt, and compares in constant time.
fn verify_phc(memory: &MemoryPool, phc: &str, password: &[u8]) -> Result<bool> {
    let parsed = PasswordHash::new(phc).map_err(internal)?;
    let algorithm = Algorithm::try_from(parsed.algorithm.as_str()).map_err(internal)?;
    let version = parsed
        .version
        .map(Version::try_from)
        .transpose()
        .map_err(internal)?
        .unwrap_or_default();
    let params = Params::try_from(&parsed).map_err(internal)?;
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return Err(internal("stored hash lacks a salt or an output"));
    };
    let mut out = vec![0u8; expected.len()];
    memory.hash_into(
        algorithm,
        version,
        params,
        password,
        salt.as_ref(),
        &mut out,
    )?;
    // `Output`'s equality is constant-time.
    Ok(Output::new(&out).map_err(internal)? == *expected)
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
        let hasher = PasswordHasher::new(2, 0).expect("hasher");
        let pw = Secret::new("correct horse battery".into());
        let phc = hasher.hash(&pw).await.expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        // Interoperable: the argon2 crate's own verifier accepts our hashes.
        use argon2::password_hash::PasswordVerifier as _;
        assert!(
            argon2::Argon2::default()
                .verify_password(pw.expose().as_bytes(), phc.as_str())
                .is_ok()
        );
        assert!(hasher.verify(&pw, Some(phc.clone())).await.expect("verify"));
        let wrong = Secret::new("wrong".into());
        assert!(!hasher.verify(&wrong, Some(phc)).await.expect("verify"));
        assert!(!hasher.verify(&pw, None).await.expect("verify"));
    }

    #[tokio::test]
    async fn verifies_hashes_made_elsewhere_with_other_parameters() {
        use argon2::password_hash::PasswordHasher as _;
        let hasher = PasswordHasher::new(1, 0).expect("hasher");
        let other = argon2::Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8192, 3, 1, None).expect("params"),
        );
        let phc = other
            .hash_password(b"s3cret-enough")
            .expect("hash")
            .to_string();
        let pw = Secret::new("s3cret-enough".into());
        assert!(hasher.verify(&pw, Some(phc.clone())).await.expect("verify"));
        assert!(
            !hasher
                .verify(&Secret::new("nope".into()), Some(phc))
                .await
                .expect("verify")
        );
    }

    #[tokio::test]
    async fn hashing_threads_run_at_the_configured_nice_value() {
        let hasher = PasswordHasher::new(2, 7).expect("hasher");
        hasher
            .hash(&Secret::new("correct horse battery".into()))
            .await
            .expect("hash");
        // /proc/self/task/<tid>/stat: the nice value is field 19, the 17th after "(comm)".
        let mut nice_values = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").expect("/proc") {
            let dir = task.expect("task").path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if comm.trim().starts_with("argon2-") {
                let stat = std::fs::read_to_string(dir.join("stat")).expect("stat");
                let after_comm = &stat[stat.rfind(')').expect("comm") + 1..];
                let nice: i32 = after_comm
                    .split_whitespace()
                    .nth(16)
                    .expect("nice")
                    .parse()
                    .expect("number");
                nice_values.push(nice);
            }
        }
        assert!(nice_values.len() >= 2, "{nice_values:?}");
        assert!(nice_values.contains(&7), "{nice_values:?}");
    }

    #[test]
    fn new_password_rules() {
        assert!(validate_new_password("short").is_err());
        assert!(validate_new_password("long enough").is_ok());
        assert!(validate_new_password(&"x".repeat(1025)).is_err());
        assert!(validate_new_password(&"x".repeat(1024)).is_ok());
    }
}

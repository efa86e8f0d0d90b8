//! Per-connection and per-user limits.

use redis::aio::ConnectionManager;
use shared::keys::RedisKeys;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A token bucket: `rate` frames per second sustained, `burst` at once.
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate.max(1)),
            burst,
            tokens: burst,
            updated: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.updated).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counts sockets that are open but not yet authenticated (first-message auth),
/// per client IP and in total, so a flood of silent sockets cannot crowd out
/// real users. A [`PendingSlot`] holds one place until dropped.
#[derive(Default)]
pub struct PendingAuth {
    by_ip: Mutex<HashMap<IpAddr, usize>>,
}

pub struct PendingSlot {
    owner: Arc<PendingAuth>,
    ip: IpAddr,
}

#[derive(Debug, PartialEq, Eq)]
pub enum PendingRefusal {
    PerIp,
    PerNode,
}

impl PendingAuth {
    /// Sockets waiting for their `auth` frame.
    pub fn count(&self) -> usize {
        self.by_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .sum()
    }

    pub fn try_acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        per_ip: usize,
        per_node: usize,
    ) -> Result<PendingSlot, PendingRefusal> {
        let mut by_ip = self
            .by_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let total: usize = by_ip.values().sum();
        if total >= per_node {
            return Err(PendingRefusal::PerNode);
        }
        let count = by_ip.entry(ip).or_insert(0);
        if *count >= per_ip {
            return Err(PendingRefusal::PerIp);
        }
        *count += 1;
        metrics::gauge!(crate::telemetry::PENDING_AUTH).increment(1.0);
        Ok(PendingSlot {
            owner: self.clone(),
            ip,
        })
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut by_ip = self
            .owner
            .by_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = by_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                by_ip.remove(&self.ip);
            }
        }
        metrics::gauge!(crate::telemetry::PENDING_AUTH).decrement(1.0);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Adds a connection to its user's cluster-wide connection set (its entry
/// lapses after `lease` unless renewed, so a dead node's entries free
/// themselves), dropping lapsed entries first. One reply: how many live
/// connections the user has now, this one included; over the cap, the caller
/// refuses and releases the place. Add-then-count needs no script, so it shares
/// the handshake's single round trip; two racing handshakes at the cap may both
/// be refused, never both admitted.
pub fn add_slot_acquisition(
    pipe: &mut redis::Pipeline,
    keys: &RedisKeys,
    user_id: Uuid,
    member: &str,
    lease: Duration,
) {
    let key = keys.user_connections(user_id);
    pipe.cmd("ZREMRANGEBYSCORE")
        .arg(&key)
        .arg("-inf")
        .arg(now_ms())
        .ignore();
    add_slot(pipe, keys, user_id, member, lease);
    pipe.cmd("ZCARD").arg(&key);
}

/// Extends the leases of live connections and their directory entries (one
/// pipeline per thousand). Returns the indices into `members` whose slot or
/// directory entry was gone (Redis lost its data, or was away longer than a
/// lease): the caller writes those again, so the per-user cap and the
/// directory heal instead of silently under-counting.
pub async fn renew_user_slots(
    redis: &mut ConnectionManager,
    keys: &RedisKeys,
    members: &[(Uuid, String)],
    lease: Duration,
) -> redis::RedisResult<Vec<usize>> {
    let expires = now_ms() + millis(lease);
    let mut missing = Vec::new();
    for (chunk_index, chunk) in members.chunks(1000).enumerate() {
        let mut pipe = redis::pipe();
        for (user_id, member) in chunk {
            let key = keys.user_connections(*user_id);
            // XX: never re-create the slot of a connection that closed after
            // the caller's snapshot; CH: the reply says whether it existed.
            pipe.cmd("ZADD")
                .arg(&key)
                .arg("XX")
                .arg("CH")
                .arg(expires)
                .arg(member);
            pipe.cmd("PEXPIRE").arg(&key).arg(millis(lease)).ignore();
            pipe.cmd("PEXPIRE")
                .arg(keys.connection_info(member))
                .arg(millis(lease));
        }
        let replies: Vec<i64> = pipe.query_async(redis).await?;
        for (i, pair) in replies.chunks(2).enumerate() {
            if pair.contains(&0) {
                missing.push(chunk_index * 1000 + i);
            }
        }
    }
    Ok(missing)
}

/// Writes a live connection's per-user slot, leased for `lease` (also to
/// re-create it after Redis lost it); no replies.
pub fn add_slot(
    pipe: &mut redis::Pipeline,
    keys: &RedisKeys,
    user_id: Uuid,
    member: &str,
    lease: Duration,
) {
    let key = keys.user_connections(user_id);
    pipe.cmd("ZADD")
        .arg(&key)
        .arg(now_ms() + millis(lease))
        .arg(member)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&key)
        .arg(millis(lease))
        .ignore();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_throttles() {
        let mut bucket = TokenBucket::new(1, 3);
        assert!(bucket.try_take() && bucket.try_take() && bucket.try_take());
        assert!(!bucket.try_take());
    }

    #[test]
    fn pending_slots_are_capped_and_released() {
        let pending = Arc::new(PendingAuth::default());
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let other: IpAddr = "127.0.0.2".parse().expect("ip");
        let a = pending.try_acquire(ip, 2, 3).expect("first");
        let _b = pending.try_acquire(ip, 2, 3).expect("second");
        assert_eq!(
            pending.try_acquire(ip, 2, 3).err(),
            Some(PendingRefusal::PerIp)
        );
        let _c = pending.try_acquire(other, 2, 3).expect("other ip");
        assert_eq!(
            pending.try_acquire(other, 2, 3).err(),
            Some(PendingRefusal::PerNode)
        );
        drop(a);
        assert!(pending.try_acquire(ip, 2, 3).is_ok());
    }
}

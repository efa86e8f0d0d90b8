//! Proof that the node's subscription delivers, not just that it is connected.
//!
//! A pub/sub connection can answer PING and still deliver nothing: writes
//! paused on the Redis side (`CLIENT PAUSE … WRITE`), a subscription Redis
//! dropped (a cluster slot that moved), a proxy that passes pings but not
//! pushes. Other systems' users have seen delivery stop while health checks
//! stayed green. So with every probe the subscriber publishes a canary, its
//! send time, on a channel of this node's own, through the command
//! connection, exactly as a client's message travels; the subscriber reads it
//! back like any message. `/readyz` reports not-ready, and the
//! [`CANARY_AGE`](crate::telemetry::CANARY_AGE) gauge shows it, once the
//! newest canary that came back was sent longer than `CANARY_TIMEOUT_MS` ago;
//! the subscriber then subscribes afresh (see `Subscriber::serve`).

//!
//! On a Redis Cluster a node depends on every shard, so it sends one canary
//! per master, each on a shard channel whose slot that master owns; the age
//! that counts is the oldest of them.

use std::sync::Mutex;
use std::time::Duration;

pub struct Canary {
    /// How old the newest returned canary may be before the node is not ready.
    bound: Duration,
    /// Per canary channel (one, or one per shard), unix ms: when the newest
    /// canary that came back was sent, or when the subscription was last
    /// (re)made, which starts the clock afresh.
    newest_sent_ms: Mutex<Vec<u64>>,
}

impl Canary {
    pub fn new(bound: Duration) -> Self {
        Self {
            bound,
            newest_sent_ms: Mutex::new(vec![shared::unix_now_ms()]),
        }
    }

    /// A new subscription with `channels` canary channels has `bound` to
    /// bring the first canary of each back.
    pub fn restart(&self, channels: usize) {
        *self.lock() = vec![shared::unix_now_ms(); channels.max(1)];
    }

    /// How many canary channels the subscription proves: 1 on a single
    /// Redis, one per master on a cluster.
    pub fn channels(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.newest_sent_ms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The payload of a canary sent now.
    pub fn payload() -> String {
        shared::unix_now_ms().to_string()
    }

    /// A canary came back on canary channel number `channel`: `payload` is
    /// what [`Self::payload`] sent.
    pub fn returned(&self, channel: usize, payload: &[u8]) {
        if let Some(sent_ms) = std::str::from_utf8(payload)
            .ok()
            .and_then(|p| p.parse::<u64>().ok())
            && let Some(newest) = self.lock().get_mut(channel)
        {
            *newest = (*newest).max(sent_ms);
        }
    }

    /// How long ago the newest returned canary was sent, on the channel
    /// whose newest is oldest; also sets the
    /// [`CANARY_AGE`](crate::telemetry::CANARY_AGE) gauge.
    pub fn age(&self) -> Duration {
        let newest = self.lock().iter().copied().min().unwrap_or(0);
        let age = Duration::from_millis(shared::unix_now_ms().saturating_sub(newest));
        metrics::gauge!(crate::telemetry::CANARY_AGE).set(age.as_secs_f64());
        age
    }

    /// Whether messages have stopped coming back (see the module comment).
    pub fn is_late(&self) -> bool {
        self.age() > self.bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_canary_resets_the_age_and_garbage_is_ignored() {
        let canary = Canary::new(Duration::from_millis(50));
        *canary.lock() = vec![shared::unix_now_ms() - 10_000; 2];
        assert!(canary.is_late());
        canary.returned(0, b"not a number");
        assert!(canary.is_late());
        canary.returned(0, Canary::payload().as_bytes());
        // The other shard's canary is still late.
        assert!(canary.is_late());
        canary.returned(1, Canary::payload().as_bytes());
        assert!(!canary.is_late());
        // An older canary arriving late does not turn the clock back.
        canary.returned(1, b"1");
        assert!(!canary.is_late());
        // A channel the canary does not know is ignored.
        canary.returned(7, Canary::payload().as_bytes());
    }
}

//! Fixed-window rate limits counted in Redis, so they hold across every
//! auth-service process behind the load balancer.
//!
//! A counter key lives for one window from its first hit; its remaining TTL is
//! the `Retry-After` we answer with. Fixed windows allow a burst of up to twice
//! the limit around a window edge, which is acceptable for abuse throttling and
//! costs one round trip (a sliding log would cost memory per attempt).
//! Needs Redis ≥ 7.0 (`PEXPIRE … NX`).

use crate::error::{Error, Result};
use shared::keys::RateBucket;
use shared::redis_conn::Redis;
use std::net::IpAddr;
use std::time::Duration;

fn window_ms(window: Duration) -> u64 {
    u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn retry_after_secs(ttl_ms: i64) -> u64 {
    u64::try_from(ttl_ms).unwrap_or(1).div_ceil(1000).max(1)
}

/// Adds one counted event to `pipe`: `INCR`, then `PEXPIRE … NX`, which starts
/// the window only on a counter that has none (so it also repairs a counter
/// whose expiry was lost). One reply: the count. No script, so it pipelines
/// with other commands.
pub fn add_hit(pipe: &mut redis::Pipeline, key: &str, window: Duration) {
    pipe.cmd("INCR")
        .arg(key)
        .cmd("PEXPIRE")
        .arg(key)
        .arg(window_ms(window))
        .arg("NX")
        .ignore();
}

/// The `limit` label of [`crate::telemetry::RATE_LIMITED`] for each bucket.
pub fn limit_label(bucket: RateBucket) -> &'static str {
    match bucket {
        RateBucket::LoginFailuresByAccountAndIp => "login_account_ip",
        RateBucket::LoginFailuresByAccount => "login_account",
        RateBucket::LoginFailuresByIp => "login_ip",
        RateBucket::AuthFailuresByIp => "auth_ip",
        RateBucket::MintByUser => "mint_user",
        RateBucket::MintByApiKey => "mint_key",
    }
}

/// The subject a client address is counted under: an IPv4 address as it is
/// (also when it arrives IPv4-mapped), an IPv6 address by its /64 (one host
/// usually holds a whole /64, so counting single IPv6 addresses would give it
/// 2⁶⁴ budgets).
pub fn address_subject(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let network = std::net::Ipv6Addr::from(v6.to_bits() & (u128::MAX << 64));
                format!("{network}/64")
            }
        },
    }
}

/// One counter to check: what it counts, its key, how many hits its window
/// allows, and the window.
pub struct Limit {
    pub bucket: RateBucket,
    pub key: String,
    pub max: u64,
    pub window: Duration,
}

/// The 429 for `bucket`'s counter `key` over its limit, with `Retry-After`
/// from the counter's remaining window (read only now, off the hot path).
pub async fn refusal(redis: &mut Redis, bucket: RateBucket, key: &str) -> Error {
    metrics::counter!(crate::telemetry::RATE_LIMITED, "limit" => limit_label(bucket)).increment(1);
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(redis)
        .await
        .unwrap_or(1000);
    Error::RateLimited {
        retry_after_secs: retry_after_secs(ttl_ms),
    }
}

/// Counts one attempt against each counter *before* the work it guards, and
/// refuses with 429 if any is now over its limit. Counting first is what makes
/// the limit hold under concurrency: attempts racing in parallel each see the
/// others' counts (a check-then-count-on-failure would let a burst of guesses
/// all pass the check while their hashes are still being computed).
pub async fn count_attempt(redis: &mut Redis, limits: &[Limit]) -> Result<()> {
    let mut pipe = redis::pipe();
    for limit in limits {
        add_hit(&mut pipe, &limit.key, limit.window);
    }
    let counts: Vec<u64> = pipe.query_async(redis).await?;
    for (limit, count) in limits.iter().zip(counts) {
        if count > limit.max {
            return Err(refusal(redis, limit.bucket, &limit.key).await);
        }
    }
    Ok(())
}

/// Takes back one counted attempt from each counter (it turned out not to be
/// a failure). Should a counter's window have ended meanwhile, `DECR` leaves
/// it at -1 without an expiry; the next [`add_hit`] brings it to 0 and starts
/// a window (`PEXPIRE … NX`), so that costs at most one attempt's worth.
pub async fn uncount(redis: &mut Redis, keys: &[&str]) -> Result<()> {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("DECR").arg(*key).ignore();
    }
    if keys.is_empty() {
        return Ok(());
    }
    pipe.query_async::<()>(redis).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::address_subject;

    #[test]
    fn ipv6_addresses_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let subject = |s: &str| address_subject(s.parse().expect("ip"));
        assert_eq!(subject("203.0.113.7"), "203.0.113.7");
        assert_eq!(subject("::ffff:203.0.113.7"), "203.0.113.7");
        assert_eq!(subject("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(
            subject("2001:db8:1:2:ffff:ffff:ffff:ffff"),
            subject("2001:db8:1:2::")
        );
        assert_ne!(subject("2001:db8:1:2::1"), subject("2001:db8:1:3::1"));
    }
}

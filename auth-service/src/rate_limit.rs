//! Fixed-window rate limits counted in Redis, so they hold across every
//! auth-service process behind the load balancer.
//!
//! A counter key lives for one window from its first hit; its remaining TTL is
//! the `Retry-After` we answer with. Fixed windows allow a burst of up to twice
//! the limit around a window edge, which is acceptable for abuse throttling and
//! costs one round trip (a sliding log would cost memory per attempt).

use crate::error::{Error, Result};
use redis::aio::ConnectionManager;
use std::sync::LazyLock;
use std::time::Duration;

/// Increments a counter and starts its window on the first hit; returns the
/// count and the window's remaining milliseconds.
static HIT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
",
    )
});

/// A limit of `max` events per `window`.
#[derive(Clone, Copy, Debug)]
pub struct Limit {
    pub max: u64,
    pub window: Duration,
}

fn window_ms(window: Duration) -> u64 {
    u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn retry_after_secs(ttl_ms: i64) -> u64 {
    u64::try_from(ttl_ms).unwrap_or(1).div_ceil(1000).max(1)
}

/// Counts one event against `key`; refuses with 429 once the limit is exceeded.
pub async fn hit(redis: &mut ConnectionManager, key: String, limit: Limit) -> Result<()> {
    let (count, ttl_ms): (u64, i64) = HIT
        .key(key)
        .arg(window_ms(limit.window))
        .invoke_async(redis)
        .await?;
    if count > limit.max {
        metrics::counter!("rate_limited_total").increment(1);
        return Err(Error::RateLimited {
            retry_after_secs: retry_after_secs(ttl_ms),
        });
    }
    Ok(())
}

/// Counts one event against each key without refusing (e.g. a failed login).
pub async fn record(
    redis: &mut ConnectionManager,
    keys: &[String],
    window: Duration,
) -> Result<()> {
    for key in keys {
        let _: (u64, i64) = HIT
            .key(key)
            .arg(window_ms(window))
            .invoke_async(redis)
            .await?;
    }
    Ok(())
}

/// Refuses with 429 if any counter has already reached its limit; counts nothing.
pub async fn check(redis: &mut ConnectionManager, checks: &[(String, u64)]) -> Result<()> {
    let mut pipe = redis::pipe();
    for (key, _) in checks {
        pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
    }
    let replies: Vec<redis::Value> = pipe.query_async(redis).await?;
    for ((_, max), reply) in checks.iter().zip(replies.chunks(2)) {
        let count: Option<u64> =
            redis::from_redis_value_ref(&reply[0]).map_err(redis::RedisError::from)?;
        let ttl_ms: i64 =
            redis::from_redis_value_ref(&reply[1]).map_err(redis::RedisError::from)?;
        if count.unwrap_or(0) >= *max {
            metrics::counter!("rate_limited_total").increment(1);
            return Err(Error::RateLimited {
                retry_after_secs: retry_after_secs(ttl_ms),
            });
        }
    }
    Ok(())
}

/// Clears counters (a successful login resets its account's failures).
pub async fn reset(redis: &mut ConnectionManager, key: String) -> Result<()> {
    redis::cmd("DEL").arg(key).query_async::<()>(redis).await?;
    Ok(())
}

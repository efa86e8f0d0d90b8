//! Per-user publish quotas: how many bytes a user may publish, and how many
//! channels with history their publishes may bring into existence, per
//! window. They bound what one user can make Redis hold (history is kept for
//! its namespace's maximum age), counted in Redis so they hold across every
//! ws-node and auth-service process.
//!
//! Charged by client publishes: over a socket, and `POST /v1/publish` with a
//! `publish` key. A backend's `publish_any` key is not charged.
//!
//! A publish is charged before it is carried out and refunded if it is
//! refused, like the login limits: parallel publishes each see the others'
//! bytes. Counting whether a channel is new reads its meta key first, so
//! publishes racing to create the same channel may each count it: the quota
//! errs towards refusing, never towards letting more through.

use crate::channel::ChannelName;
use crate::keys::{QuotaCounter, RedisKeys};
use redis::aio::ConnectionLike;
use std::time::Duration;
use uuid::Uuid;

/// What one user may publish per window (`PUBLISH_QUOTA_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishQuota {
    /// Bytes of `data` per window.
    pub bytes: u64,
    /// Channels with history that the user's publishes may create per window.
    pub new_channels: u64,
    pub window: Duration,
}

/// Why a publish was not charged.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("{what} quota of this user is used up; it renews in {retry_after_secs} s")]
    Exceeded {
        what: &'static str,
        retry_after_secs: u64,
    },
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Adds `by` to the fixed-window counter `key` (its window, `window_ms`,
/// starting with its first count); the pipeline's one reply is the count.
fn count_in_window(key: &str, by: u64, window_ms: u64) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.cmd("INCRBY")
        .arg(key)
        .arg(by)
        .cmd("PEXPIRE")
        .arg(key)
        .arg(window_ms)
        .arg("NX")
        .ignore();
    pipe
}

/// Charges `user_id` for publishing `bytes` to `channel` (`with_history`:
/// whether its namespace keeps history, so that a first publish creates
/// keys). Errs with [`QuotaError::Exceeded`] (and charges nothing) when over.
pub async fn charge_publish<C: ConnectionLike>(
    redis: &mut C,
    keys: &RedisKeys,
    quota: &PublishQuota,
    user_id: Uuid,
    channel: &ChannelName,
    with_history: bool,
    bytes: usize,
) -> Result<(), QuotaError> {
    let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
    let window = millis(quota.window);
    let bytes_key = keys.publish_quota(user_id, QuotaCounter::Bytes);
    let mut pipe = count_in_window(&bytes_key, bytes, window);
    if with_history {
        pipe.cmd("EXISTS").arg(keys.channel_meta(channel));
    }
    let replies: Vec<u64> = pipe.query_async(redis).await?;
    let used = replies.first().copied().unwrap_or(0);
    if used > quota.bytes {
        return Err(refuse(redis, &bytes_key, bytes, None, "bytes-published").await);
    }
    let is_new = with_history && replies.get(1) == Some(&0);
    if !is_new {
        return Ok(());
    }
    let channels_key = keys.publish_quota(user_id, QuotaCounter::NewChannels);
    let (created,): (u64,) = count_in_window(&channels_key, 1, window)
        .query_async(redis)
        .await?;
    if created > quota.new_channels {
        return Err(refuse(redis, &bytes_key, bytes, Some(&channels_key), "new-channel").await);
    }
    Ok(())
}

/// One publish to charge, for [`charge_publishes`].
#[derive(Clone, Copy, Debug)]
pub struct Charge<'a> {
    pub channel: &'a ChannelName,
    /// Whether its namespace keeps history (a first publish creates keys).
    pub with_history: bool,
    pub bytes: usize,
}

/// Charges `user_id` for several publishes, in order, with one result per
/// publish: what [`charge_publish`] would answer for each in turn.
///
/// The common case, none of them over the quota and none creating a
/// channel, takes one round trip for them all (see
/// [`publish_many`](crate::channel::publish_many) for why). Otherwise the
/// batch is refunded and charged one publish at a time, where a channel
/// the batch creates counts once, for its first publish.
pub async fn charge_publishes<C: ConnectionLike>(
    redis: &mut C,
    keys: &RedisKeys,
    quota: &PublishQuota,
    user_id: Uuid,
    charges: &[Charge<'_>],
) -> Vec<Result<(), QuotaError>> {
    let total: u64 = charges
        .iter()
        .map(|c| u64::try_from(c.bytes).unwrap_or(u64::MAX))
        .fold(0, u64::saturating_add);
    let bytes_key = keys.publish_quota(user_id, QuotaCounter::Bytes);
    let mut pipe = count_in_window(&bytes_key, total, millis(quota.window));
    for charge in charges.iter().filter(|c| c.with_history) {
        pipe.cmd("EXISTS").arg(keys.channel_meta(charge.channel));
    }
    let replies: Vec<u64> = match pipe.query_async(redis).await {
        Ok(replies) => replies,
        Err(e) => {
            return charges
                .iter()
                .map(|_| Err(QuotaError::Redis(e.clone())))
                .collect();
        }
    };
    let used = replies.first().copied().unwrap_or(u64::MAX);
    if used <= quota.bytes && replies.iter().skip(1).all(|&exists| exists == 1) {
        return charges.iter().map(|_| Ok(())).collect();
    }
    // Rare: someone is at their quota, or a channel is new. Charge each in turn.
    if let Err(e) = redis::cmd("DECRBY")
        .arg(&bytes_key)
        .arg(total)
        .query_async::<()>(redis)
        .await
    {
        return charges
            .iter()
            .map(|_| Err(QuotaError::Redis(e.clone())))
            .collect();
    }
    let mut created: Vec<&ChannelName> = Vec::new();
    let mut results = Vec::with_capacity(charges.len());
    for charge in charges {
        let first_of_channel = !created.contains(&charge.channel);
        let result = charge_publish(
            redis,
            keys,
            quota,
            user_id,
            charge.channel,
            charge.with_history && first_of_channel,
            charge.bytes,
        )
        .await;
        if result.is_ok() && charge.with_history && first_of_channel {
            created.push(charge.channel);
        }
        results.push(result);
    }
    results
}

/// Refunds a refused publish and says when the exhausted counter renews.
async fn refuse<C: ConnectionLike>(
    redis: &mut C,
    bytes_key: &str,
    bytes: u64,
    channels_key: Option<&str>,
    what: &'static str,
) -> QuotaError {
    let exhausted = channels_key.unwrap_or(bytes_key);
    let mut pipe = redis::pipe();
    pipe.cmd("DECRBY").arg(bytes_key).arg(bytes).ignore();
    if let Some(key) = channels_key {
        pipe.cmd("DECR").arg(key).ignore();
    }
    pipe.cmd("PTTL").arg(exhausted);
    let ttl_ms = pipe
        .query_async::<(i64,)>(redis)
        .await
        .map_or(1000, |(ttl,)| ttl);
    QuotaError::Exceeded {
        what,
        retry_after_secs: u64::try_from(ttl_ms).unwrap_or(1).div_ceil(1000).max(1),
    }
}

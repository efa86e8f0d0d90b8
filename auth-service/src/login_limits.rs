//! How failed logins are throttled without letting a stranger lock an account
//! for its owner.
//!
//! Three counters, each counted before the password is hashed
//! ([`rate_limit::count_attempt`]):
//!
//! - **per account and address** (`LOGIN_MAX_FAILURES_PER_ACCOUNT` per
//!   `LOGIN_FAILURE_WINDOW_SECS`): the hard limit. It locks out only the
//!   address that failed, so failures from an attacker's network never lock
//!   the owner out on theirs.
//! - **per address** (`LOGIN_MAX_FAILURES_PER_IP` per window): one address
//!   trying many accounts.
//! - **per account, per hour, from addresses the account never logged in
//!   from** (`LOGIN_MAX_FAILURES_PER_ACCOUNT_HOURLY`): the budget that still
//!   throttles guessing one account's password from many addresses. Addresses
//!   the account logged in from in the last 30 days are exempt, so even when a
//!   distributed guess has spent the budget the owner gets in from home; only
//!   a login from an address new to the account waits for the hour to end.
//!
//! An "address" is an IPv4 address, or an IPv6 address's /64
//! ([`rate_limit::address_subject`]).
//!
//! A success takes its attempt back from the per-address and hourly counters,
//! clears the account-and-address counter, and remembers the address.
//! Operators see and lift lock-outs with `auth-service user lockout|unlock`.

use crate::accounts::Username;
use crate::error::Result;
use crate::rate_limit::{self, Limit, address_subject};
use crate::state::AppState;
use serde::Serialize;
use shared::keys::RateBucket;
use shared::redis_conn::Redis;
use std::net::IpAddr;
use std::time::Duration;

/// How long an address stays known after the account's last login from it.
const KNOWN_ADDRESS_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Known addresses kept per account; beyond it a random one is forgotten, so
/// an account that roams over many networks cannot grow its set unboundedly.
const MAX_KNOWN_ADDRESSES: u64 = 32;
/// The window of the per-account budget.
const ACCOUNT_BUDGET_WINDOW: Duration = Duration::from_secs(3600);

/// A login attempt that has been counted (and was under every limit). Each
/// way it can end is a method; a plain failure needs none (it stays counted).
pub struct CountedAttempt {
    address: String,
    account: Option<AccountCounters>,
    ip_counter: String,
}

struct AccountCounters {
    username: Username,
    account_and_address: String,
    /// Set when the address is not known to the account (so it was counted).
    hourly: Option<String>,
}

impl CountedAttempt {
    /// Counts an attempt at `username` (`None`: a name that cannot exist,
    /// counted against the address only) from `ip`; 429 when over a limit.
    pub async fn count(state: &AppState, username: Option<&Username>, ip: IpAddr) -> Result<Self> {
        let config = &state.config;
        let keys = &state.keys;
        let address = address_subject(ip);
        let window = Duration::from_secs(config.login_failure_window_secs);
        let mut redis = state.redis.clone();
        let ip_counter = keys.rate_limit(RateBucket::LoginFailuresByIp, &address);
        let mut limits = vec![Limit {
            bucket: RateBucket::LoginFailuresByIp,
            key: ip_counter.clone(),
            max: config.login_max_failures_per_ip,
            window,
        }];
        let account = match username {
            None => None,
            Some(username) => {
                let known: bool = redis::cmd("SISMEMBER")
                    .arg(keys.login_known_addresses(username.as_str()))
                    .arg(&address)
                    .query_async(&mut redis)
                    .await?;
                let account_and_address = keys.rate_limit(
                    RateBucket::LoginFailuresByAccountAndIp,
                    format!("{username}|{address}"),
                );
                limits.push(Limit {
                    bucket: RateBucket::LoginFailuresByAccountAndIp,
                    key: account_and_address.clone(),
                    max: config.login_max_failures_per_account,
                    window,
                });
                let hourly = (!known).then(|| {
                    keys.rate_limit(RateBucket::LoginFailuresByAccount, username.as_str())
                });
                if let Some(key) = &hourly {
                    limits.push(Limit {
                        bucket: RateBucket::LoginFailuresByAccount,
                        key: key.clone(),
                        max: config.login_max_failures_per_account_hourly,
                        window: ACCOUNT_BUDGET_WINDOW,
                    });
                }
                Some(AccountCounters {
                    username: username.clone(),
                    account_and_address,
                    hourly,
                })
            }
        };
        rate_limit::count_attempt(&mut redis, &limits).await?;
        Ok(Self {
            address,
            account,
            ip_counter,
        })
    }

    /// The attempt could not be judged (database down, hashing queue full):
    /// it was not a failure, so nothing stays counted.
    pub async fn not_judged(self, redis: &mut Redis) -> Result<()> {
        let mut keys = vec![self.ip_counter.as_str()];
        if let Some(account) = &self.account {
            keys.push(&account.account_and_address);
            keys.extend(account.hourly.as_deref());
        }
        rate_limit::uncount(redis, &keys).await
    }

    /// The password was right: the attempt is taken back, the account's
    /// failures from this address are forgotten, and the address becomes
    /// known to the account.
    pub async fn succeeded(self, state: &AppState) -> Result<()> {
        let mut redis = state.redis.clone();
        let Some(account) = self.account else {
            return rate_limit::uncount(&mut redis, &[&self.ip_counter]).await;
        };
        let mut uncounted = vec![self.ip_counter.as_str()];
        uncounted.extend(account.hourly.as_deref());
        rate_limit::uncount(&mut redis, &uncounted).await?;
        let known = state.keys.login_known_addresses(account.username.as_str());
        let ttl_ms = u64::try_from(KNOWN_ADDRESS_TTL.as_millis()).unwrap_or(u64::MAX);
        let (size,): (u64,) = redis::pipe()
            .cmd("DEL")
            .arg(&account.account_and_address)
            .ignore()
            .cmd("SADD")
            .arg(&known)
            .arg(&self.address)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&known)
            .arg(ttl_ms)
            .ignore()
            .cmd("SCARD")
            .arg(&known)
            .query_async(&mut redis)
            .await?;
        if size > MAX_KNOWN_ADDRESSES {
            redis::cmd("SPOP")
                .arg(&known)
                .arg(size - MAX_KNOWN_ADDRESSES)
                .query_async::<()>(&mut redis)
                .await?;
        }
        Ok(())
    }
}

/// What `auth-service user lockout <name>` prints.
#[derive(Serialize)]
pub struct LockoutReport {
    pub username: String,
    /// Addresses with failures counted in the current window.
    pub addresses: Vec<CounterState>,
    /// The hourly budget for logins from addresses new to the account.
    pub hourly_budget: CounterState,
    /// Addresses the account logged in from (exempt from the hourly budget).
    pub known_addresses: Vec<String>,
}

#[derive(Serialize)]
pub struct CounterState {
    /// The address counted, for a per-address counter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub failures: i64,
    pub limit: u64,
    /// Whether the next attempt is refused (429) until the window ends.
    pub locked: bool,
    /// Seconds until the window ends (0: no window running).
    pub resets_in_secs: u64,
}

impl CounterState {
    fn new(address: Option<String>, failures: i64, limit: u64, ttl_ms: i64) -> Self {
        Self {
            address,
            failures,
            limit,
            locked: u64::try_from(failures).is_ok_and(|n| n >= limit),
            resets_in_secs: u64::try_from(ttl_ms).unwrap_or(0).div_ceil(1000),
        }
    }
}

/// The account-and-address counters of `username` (found by `SCAN`, an
/// operator's occasional command, never on a request path).
async fn account_and_address_counters(
    state: &AppState,
    username: &Username,
) -> Result<Vec<(String, String)>> {
    let pattern = state.keys.rate_limit(
        RateBucket::LoginFailuresByAccountAndIp,
        format!("{username}|*"),
    );
    let prefix_len = pattern.len() - 1;
    let mut redis = state.redis.clone();
    let mut found = Vec::new();
    let mut cursor = 0_u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut redis)
            .await?;
        found.extend(keys.into_iter().map(|key| {
            let address = key[prefix_len..].to_owned();
            (key, address)
        }));
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
    }
}

/// The current state of `username`'s login counters.
pub async fn report(state: &AppState, username: &Username) -> Result<LockoutReport> {
    let config = &state.config;
    let counters = account_and_address_counters(state, username).await?;
    let hourly = state
        .keys
        .rate_limit(RateBucket::LoginFailuresByAccount, username.as_str());
    let mut pipe = redis::pipe();
    for (key, _) in counters
        .iter()
        .chain(std::iter::once(&(hourly.clone(), String::new())))
    {
        pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
    }
    pipe.cmd("SMEMBERS")
        .arg(state.keys.login_known_addresses(username.as_str()));
    let mut redis = state.redis.clone();
    let mut values: Vec<redis::Value> = pipe.query_async(&mut redis).await?;
    let known: Vec<String> =
        redis::from_redis_value(values.pop().unwrap_or(redis::Value::Nil)).unwrap_or_default();
    let mut states = values.chunks(2).map(|pair| {
        let failures: Option<i64> = redis::from_redis_value_ref(&pair[0]).unwrap_or(None);
        let ttl_ms: i64 = redis::from_redis_value_ref(&pair[1]).unwrap_or(-2);
        (failures.unwrap_or(0), ttl_ms)
    });
    let mut addresses = Vec::new();
    for (_, address) in counters {
        let (failures, ttl_ms) = states.next().unwrap_or((0, -2));
        addresses.push(CounterState::new(
            Some(address),
            failures,
            config.login_max_failures_per_account,
            ttl_ms,
        ));
    }
    addresses.sort_by_key(|state| std::cmp::Reverse(state.failures));
    let (failures, ttl_ms) = states.next().unwrap_or((0, -2));
    let mut known_addresses = known;
    known_addresses.sort();
    Ok(LockoutReport {
        username: username.to_string(),
        addresses,
        hourly_budget: CounterState::new(
            None,
            failures,
            config.login_max_failures_per_account_hourly,
            ttl_ms,
        ),
        known_addresses,
    })
}

/// Lifts every lock-out of `username`: its account-and-address counters and
/// its hourly budget. Per-address counters are left alone (they are about the
/// address, not the account). Answers how many counters it cleared.
pub async fn unlock(state: &AppState, username: &Username) -> Result<u64> {
    let mut keys: Vec<String> = account_and_address_counters(state, username)
        .await?
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    keys.push(
        state
            .keys
            .rate_limit(RateBucket::LoginFailuresByAccount, username.as_str()),
    );
    let mut redis = state.redis.clone();
    Ok(redis::cmd("DEL").arg(keys).query_async(&mut redis).await?)
}

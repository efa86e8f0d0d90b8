//! `credential-flood`: a legitimate client mints tickets with its API key,
//! first alone, then while forged credentials arrive from another address —
//! random API keys with a valid checksum (forged from the public key format,
//! as an attacker would) and random session cookies — at a fixed rate. The
//! legitimate client's p99 under the flood is held to at most twice its p99
//! alone, both measured in the same run with the same client.
//!
//! The flood is paced (open loop) rather than as fast as possible: on a
//! 2-core machine an unpaced flood measures how the CPUs are shared, not
//! whether forged credentials reach Postgres.

use super::mint::rust_load;
use crate::client;
use crate::plan::FloodPlan;
use crate::report::{Op, ScenarioReport};
use crate::say;
use crate::stack::Stack;
use anyhow::Context as _;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const TARGET_P99_RATIO: f64 = 2.0;
/// Where the flood comes from: not the legitimate client's address, so the
/// per-address failure budget is the flood's alone.
const FLOOD_SOURCE: &str = "127.0.0.2";

const KEY_PREFIX: &str = "tess_";
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A random API key in the public format (`tess_`, 43 base62 characters, a
/// 6-character CRC32 checksum in base62): well-formed, and nobody's.
fn forged_api_key() -> String {
    let random: String = (0..43)
        .map(|_| char::from(BASE62[rand::random_range(0..BASE62.len())]))
        .collect();
    let mut n = crc32fast::hash(random.as_bytes());
    let mut checksum = [b'0'; 6];
    for slot in checksum.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    format!("{KEY_PREFIX}{random}{}", String::from_utf8_lossy(&checksum))
}

/// A random session cookie value: 32 random bytes in canonical base64url, like
/// a real one (42 digits of 6 bits, then one holding the last 4 bits, its low
/// 2 bits zero).
fn forged_cookie() -> String {
    const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut cookie: String = (0..42)
        .map(|_| char::from(URL_SAFE[rand::random_range(0..URL_SAFE.len())]))
        .collect();
    cookie.push(char::from(URL_SAFE[rand::random_range(0..16) * 4]));
    cookie
}

/// The flood: `rate` requests a second from [`FLOOD_SOURCE`], alternating a
/// forged key on `POST /v1/tickets` and a forged cookie on `GET /v1/me`,
/// until `until`. Answers how many got each status.
async fn flood(auth_url: &str, rate: u64, until: Instant) -> anyhow::Result<BTreeMap<String, u64>> {
    const TASKS: u64 = 16;
    let http = reqwest::Client::builder()
        .no_proxy()
        .local_address(FLOOD_SOURCE.parse::<std::net::IpAddr>()?)
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the flood's HTTP client")?;
    let interval = Duration::from_secs_f64(TASKS as f64 / rate.max(1) as f64);
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let http = http.clone();
            let auth_url = auth_url.to_owned();
            tokio::spawn(async move {
                let mut seen = BTreeMap::<String, u64>::new();
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut n = i;
                while Instant::now() < until {
                    tick.tick().await;
                    n += 1;
                    let request = if n % 2 == 0 {
                        http.post(format!("{auth_url}/v1/tickets"))
                            .bearer_auth(forged_api_key())
                    } else {
                        http.get(format!("{auth_url}/v1/me"))
                            .header("cookie", format!("__Host-session={}", forged_cookie()))
                    };
                    let outcome = match request.send().await {
                        Ok(response) => format!("HTTP {}", response.status().as_u16()),
                        Err(e) if e.is_timeout() => "timeout".to_owned(),
                        Err(_) => "error".to_owned(),
                    };
                    *seen.entry(outcome).or_default() += 1;
                }
                seen
            })
        })
        .collect();
    let mut seen = BTreeMap::new();
    for task in tasks {
        for (outcome, count) in task.await.context("a flood task panicked")? {
            *seen.entry(outcome).or_default() += count;
        }
    }
    Ok(seen)
}

/// The auth-service's count of credential lookups that reached Postgres and
/// found nothing (sessions and API keys), from its `/metrics`.
async fn unknown_lookups(auth_url: &str) -> Option<f64> {
    let text = client::http_client(1)
        .ok()?
        .get(format!("{auth_url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let sum = text
        .lines()
        .filter(|line| {
            (line.starts_with("session_lookups_total") || line.starts_with("api_key_lookups_total"))
                && line.contains("outcome=\"unknown\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    Some(sum)
}

pub async fn run(
    stack: &mut Stack,
    plan: &FloodPlan,
    report: &mut ScenarioReport,
) -> anyhow::Result<()> {
    // Minting needs no node; stopping them leaves the CPUs to auth-service.
    stack.stop_nodes().await;
    let auth_url = stack.auth_url()?;
    let keys = stack.api_keys();
    let alone = rust_load(&auth_url, &keys, plan.mint_concurrency, plan.seconds).await?;

    let lookups_before = unknown_lookups(&auth_url).await;
    say(format!(
        "credential-flood: {} forged credentials/s from {FLOOD_SOURCE}",
        plan.flood_rate
    ));
    let until = Instant::now() + Duration::from_secs(plan.seconds);
    let flooding = {
        let auth_url = auth_url.clone();
        let rate = plan.flood_rate;
        tokio::spawn(async move { flood(&auth_url, rate, until).await })
    };
    let flooded = rust_load(&auth_url, &keys, plan.mint_concurrency, plan.seconds).await?;
    let seen = flooding.await.context("the flood panicked")??;
    let lookups_after = unknown_lookups(&auth_url).await;

    let ratio = alone
        .p99_ms
        .zip(flooded.p99_ms)
        .map(|(alone, flooded)| flooded / alone.max(0.001));
    report.check(
        "mint p99 under the flood ÷ alone",
        ratio,
        "×",
        Op::AtMost,
        TARGET_P99_RATIO,
    );
    for (label, stats) in [("alone", &alone), ("under the flood", &flooded)] {
        if let Some(p99) = stats.p99_ms {
            report.metric(&format!("mint p99 {label}"), p99, "ms");
        }
        if let Some(rate) = stats.rate() {
            report.metric(&format!("mints/s {label}"), rate, "/s");
        }
        report.metric(&format!("mint failures {label}"), stats.failed as f64, "");
    }
    let sent: u64 = seen.values().sum();
    report.metric("forged credentials sent", sent as f64, "");
    report.metric(
        "forged credentials/s",
        sent as f64 / plan.seconds.max(1) as f64,
        "/s",
    );
    if let (Some(before), Some(after)) = (lookups_before, lookups_after) {
        report.metric(
            "forged credentials that reached Postgres",
            after - before,
            "",
        );
    }
    report.note(format!("flood answers: {seen:?}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn forged_credentials_have_the_real_shapes() {
        let key = super::forged_api_key();
        assert_eq!(key.len(), 54, "{key}");
        let cookie = super::forged_cookie();
        assert_eq!(cookie.len(), 43);
        let last = cookie.as_bytes()[42];
        let index = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            .iter()
            .position(|&c| c == last)
            .expect("base64url");
        assert_eq!(index % 4, 0, "{cookie}");
    }
}

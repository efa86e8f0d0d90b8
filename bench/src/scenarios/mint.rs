//! `mint` and `login-storm`: ticket minting with API keys under load, alone
//! and while 200 logins (each an argon2 hash of ~19 MiB) hammer the same
//! auth-service. The storm shows whether minting keeps its latency and the
//! process its memory when password hashing saturates the CPUs.
//!
//! The mint load comes from `wrk` when it is installed (a lean C client, so
//! the server rather than the client gets the CPU), else from a Rust loop
//! with many concurrent tasks; both report rate and p50/p99.

use crate::client;
use crate::hist;
use crate::plan::{MintPlan, StormPlan};
use crate::proc::{self, RssSampler};
use crate::report::{Op, ScenarioReport};
use crate::say;
use crate::stack::Stack;
use anyhow::{Context as _, bail};
use std::path::Path;
use std::time::{Duration, Instant};

const TARGET_MINT_RATE: f64 = 45_000.0;
const TARGET_MINT_P99_MS: f64 = 3.0;
const TARGET_STORM_MINT_P99_MS: f64 = 10.0;
/// The harness's own reading of "RSS stays bounded": the storm may add at
/// most this much (200 unbounded concurrent hashes would add ~3.8 GiB).
const TARGET_STORM_RSS_GROWTH_MIB: f64 = 256.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MintClient {
    Auto,
    Wrk,
    Rust,
}

impl MintClient {
    /// `Auto` becomes `Wrk` if `wrk` runs here, else `Rust`.
    fn resolve(self) -> Self {
        match self {
            Self::Auto => {
                let available = std::process::Command::new("wrk")
                    .arg("--version")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok();
                if available { Self::Wrk } else { Self::Rust }
            }
            other => other,
        }
    }
}

/// What a mint load run measured.
#[derive(Debug, Default)]
pub(super) struct MintStats {
    client: &'static str,
    ok: u64,
    pub(super) failed: u64,
    seconds: f64,
    p50_ms: Option<f64>,
    pub(super) p99_ms: Option<f64>,
    max_ms: Option<f64>,
    failure_samples: Vec<String>,
}

impl MintStats {
    pub(super) fn rate(&self) -> Option<f64> {
        (self.seconds > 0.0 && self.ok > 0).then(|| self.ok as f64 / self.seconds)
    }
}

async fn mint_load(
    client: MintClient,
    auth_url: &str,
    api_keys: &[String],
    concurrency: usize,
    seconds: u64,
    out: &Path,
) -> anyhow::Result<MintStats> {
    match client.resolve() {
        MintClient::Wrk => wrk_load(auth_url, &api_keys[0], concurrency, seconds, out).await,
        _ => rust_load(auth_url, api_keys, concurrency, seconds).await,
    }
}

/// `concurrency` tasks each minting back to back until the time is up.
pub(super) async fn rust_load(
    auth_url: &str,
    api_keys: &[String],
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<MintStats> {
    let http = client::http_client(concurrency)?;
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let http = http.clone();
            let url = format!("{auth_url}/v1/tickets");
            let key = api_keys[i % api_keys.len()].clone();
            tokio::spawn(async move {
                let mut latency = hist::new();
                let (mut ok, mut failed, mut samples) = (0u64, 0u64, Vec::new());
                while Instant::now() < until {
                    let began = Instant::now();
                    let result = http.post(&url).bearer_auth(&key).send().await;
                    let took = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    match result {
                        Ok(r) if r.status() == reqwest::StatusCode::CREATED => {
                            // Read the body: the request is not done until it has arrived.
                            let _ = r.bytes().await;
                            ok += 1;
                            hist::record_ns(&mut latency, took);
                        }
                        other => {
                            failed += 1;
                            if samples.len() < 3 {
                                samples.push(match other {
                                    Ok(r) => format!("HTTP {}", r.status()),
                                    Err(e) => e.to_string(),
                                });
                            }
                        }
                    }
                }
                (latency, ok, failed, samples)
            })
        })
        .collect();
    let mut stats = MintStats {
        client: "rust",
        ..MintStats::default()
    };
    let mut latency = hist::new();
    for task in tasks {
        let (h, ok, failed, samples) = task.await.context("a mint task panicked")?;
        latency.add(&h).context("merging histograms")?;
        stats.ok += ok;
        stats.failed += failed;
        stats.failure_samples.extend(samples);
    }
    stats.failure_samples.truncate(5);
    stats.seconds = started.elapsed().as_secs_f64();
    if let Some(s) = hist::summary(&latency) {
        stats.p50_ms = Some(s.p50_ms);
        stats.p99_ms = Some(s.p99_ms);
        stats.max_ms = Some(s.max_ms);
    }
    Ok(stats)
}

/// Runs `wrk` with a script that POSTs to `/v1/tickets` with the key.
async fn wrk_load(
    auth_url: &str,
    api_key: &str,
    concurrency: usize,
    seconds: u64,
    out: &Path,
) -> anyhow::Result<MintStats> {
    let script = out.join("mint.lua");
    std::fs::write(
        &script,
        format!("wrk.method = \"POST\"\nwrk.headers[\"Authorization\"] = \"Bearer {api_key}\"\n"),
    )
    .context("writing the wrk script")?;
    let threads = concurrency.clamp(1, 2);
    let output = tokio::process::Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{concurrency}"))
        .arg(format!("-d{seconds}s"))
        .arg("--timeout")
        .arg("10s")
        .arg("--latency")
        .arg("-s")
        .arg(&script)
        .arg(format!("{auth_url}/v1/tickets"))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(seconds + 60), output)
        .await
        .context("wrk did not finish")??;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed ({}): {}{}",
            output.status,
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

/// A wrk duration (`850.00us`, `1.23ms`, `2.00s`, `1.00m`) in milliseconds.
fn wrk_duration_ms(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = s.split_at(split);
    let n: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        _ => return None,
    })
}

fn parse_wrk(text: &str) -> Option<MintStats> {
    let mut stats = MintStats {
        client: "wrk",
        ..MintStats::default()
    };
    let mut requests = None;
    let mut non_2xx = 0;
    let mut socket_errors = 0;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => stats.p50_ms = wrk_duration_ms(v),
            ["99%", v] => stats.p99_ms = wrk_duration_ms(v),
            ["Latency", _avg, _stdev, max, ..] => stats.max_ms = wrk_duration_ms(max),
            [n, "requests", "in", secs, ..] => {
                requests = n.parse::<u64>().ok();
                stats.seconds = wrk_duration_ms(secs.trim_end_matches(','))? / 1000.0;
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => non_2xx = n.parse().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    let requests = requests?;
    stats.ok = requests.saturating_sub(non_2xx);
    stats.failed = non_2xx + socket_errors;
    if non_2xx > 0 {
        stats
            .failure_samples
            .push(format!("{non_2xx} non-2xx responses"));
    }
    if socket_errors > 0 {
        stats
            .failure_samples
            .push(format!("socket errors: {socket_errors}"));
    }
    Some(stats)
}

fn record(
    report: &mut ScenarioReport,
    stats: &MintStats,
    p99_target: f64,
    rate_target: Option<f64>,
) {
    match rate_target {
        Some(target) => report.check("mints/s", stats.rate(), "/s", Op::AtLeast, target),
        None => {
            if let Some(rate) = stats.rate() {
                report.metric("mints/s", rate, "/s");
            }
        }
    }
    report.check("mint p99", stats.p99_ms, "ms", Op::AtMost, p99_target);
    if let Some(p50) = stats.p50_ms {
        report.metric("mint p50", p50, "ms");
    }
    if let Some(max) = stats.max_ms {
        report.metric("mint max", max, "ms");
    }
    report.metric("tickets minted", stats.ok as f64, "");
    report.metric("mint failures", stats.failed as f64, "");
    for s in &stats.failure_samples {
        report.note(format!("mint failure: {s}"));
    }
    report.note(format!("mint load generated by {}", stats.client));
}

pub async fn run(
    stack: &mut Stack,
    plan: &MintPlan,
    client: MintClient,
    out: &Path,
    report: &mut ScenarioReport,
) -> anyhow::Result<()> {
    // Minting needs no node; stopping them leaves the CPUs to auth-service.
    stack.stop_nodes().await;
    let stats = mint_load(
        client,
        &stack.auth_url()?,
        &stack.api_keys(),
        plan.concurrency,
        plan.seconds,
        out,
    )
    .await?;
    record(report, &stats, TARGET_MINT_P99_MS, Some(TARGET_MINT_RATE));
    Ok(())
}

/// What the logins of the storm saw.
#[derive(Default)]
struct Logins {
    ok: u64,
    refused: std::collections::BTreeMap<String, u64>,
    latency: Option<hist::Summary>,
}

/// `concurrency` tasks logging in back to back (as the bench users, with
/// their real passwords) until `until`.
async fn storm(
    auth_url: &str,
    users: &[(String, String)],
    concurrency: usize,
    until: Instant,
) -> anyhow::Result<Logins> {
    let http = client::http_client(concurrency)?;
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let http = http.clone();
            let url = format!("{auth_url}/v1/login");
            let (username, password) = users[i % users.len()].clone();
            tokio::spawn(async move {
                let body = serde_json::json!({ "username": username, "password": password });
                let mut latency = hist::new();
                let mut ok = 0;
                let mut refused = std::collections::BTreeMap::<String, u64>::new();
                while Instant::now() < until {
                    let began = Instant::now();
                    match http.post(&url).json(&body).send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            ok += 1;
                            hist::record_ns(
                                &mut latency,
                                u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX),
                            );
                        }
                        Ok(r) => {
                            *refused.entry(format!("HTTP {}", r.status())).or_default() += 1;
                            // A refusal (429/503) is immediate: do not spin on it.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => {
                            let kind = if e.is_timeout() { "timeout" } else { "error" };
                            *refused.entry(kind.into()).or_default() += 1;
                        }
                    }
                }
                (latency, ok, refused)
            })
        })
        .collect();
    let mut logins = Logins::default();
    let mut latency = hist::new();
    for task in tasks {
        let (h, ok, refused) = task.await.context("a login task panicked")?;
        latency.add(&h).context("merging histograms")?;
        logins.ok += ok;
        for (k, v) in refused {
            *logins.refused.entry(k).or_default() += v;
        }
    }
    logins.latency = hist::summary(&latency);
    Ok(logins)
}

pub async fn login_storm(
    stack: &mut Stack,
    plan: &StormPlan,
    client: MintClient,
    out: &Path,
    report: &mut ScenarioReport,
) -> anyhow::Result<()> {
    stack.stop_nodes().await;
    let auth_url = stack.auth_url()?;
    let pid = stack.auth()?.pid;
    let api_keys = stack.api_keys();
    let users: Vec<(String, String)> = stack
        .users
        .iter()
        .map(|u| (u.username.clone(), u.password.clone()))
        .collect();
    let rss_before = proc::rss_kib(pid)?;
    let sampler = RssSampler::start(pid, Duration::from_millis(100));

    let minting = {
        let (auth_url, api_keys, out) = (auth_url.clone(), api_keys.clone(), out.to_path_buf());
        let (concurrency, seconds) = (plan.mint_concurrency, plan.seconds);
        tokio::spawn(async move {
            mint_load(client, &auth_url, &api_keys, concurrency, seconds, &out).await
        })
    };
    // Minting runs alone for a second, then the storm covers the rest of its
    // window but the last second (in-flight logins finish after that).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let until = Instant::now() + Duration::from_secs(plan.seconds.saturating_sub(2).max(1));
    say(format!("login-storm: {} concurrent logins", plan.logins));
    let logins = storm(&auth_url, &users, plan.logins, until).await?;
    let minted = minting.await.context("the mint load panicked")??;
    let peak = sampler.finish().await;

    record(report, &minted, TARGET_STORM_MINT_P99_MS, None);
    let growth_mib = peak.saturating_sub(rss_before) as f64 / 1024.0;
    report.check(
        "auth-service RSS growth (peak − before)",
        Some(growth_mib),
        "MiB",
        Op::AtMost,
        TARGET_STORM_RSS_GROWTH_MIB,
    );
    report.metric("auth-service RSS before", rss_before as f64 / 1024.0, "MiB");
    report.metric("auth-service RSS peak", peak as f64 / 1024.0, "MiB");
    report.metric("logins succeeded", logins.ok as f64, "");
    if let Some(l) = &logins.latency {
        report.metric("login p50", l.p50_ms, "ms");
        report.metric("login p99", l.p99_ms, "ms");
    }
    let refused: u64 = logins.refused.values().sum();
    report.metric("logins refused or failed", refused as f64, "");
    if !logins.refused.is_empty() {
        report.note(format!("logins refused: {:?}", logins.refused));
    }
    report.note(format!(
        "RSS sampled every 100 ms; the {TARGET_STORM_RSS_GROWTH_MIB} MiB bound is the harness's reading of \"stays bounded\""
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 5s test @ http://127.0.0.1:1/v1/tickets
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.23ms  456.00us  12.34ms   90.00%
    Req/Sec    20.00k     1.00k   22.00k    70.00%
  Latency Distribution
     50%  850.00us
     75%    1.40ms
     90%    1.80ms
     99%    3.20ms
  200000 requests in 5.00s, 50.00MB read
  Non-2xx or 3xx responses: 12
Requests/sec:  40000.00
Transfer/sec:     10.00MB
";
        let stats = parse_wrk(text).expect("parses");
        assert_eq!(stats.ok, 199_988);
        assert_eq!(stats.failed, 12);
        assert_eq!(stats.p50_ms, Some(0.85));
        assert_eq!(stats.p99_ms, Some(3.2));
        assert_eq!(stats.max_ms, Some(12.34));
        assert!((stats.seconds - 5.0).abs() < 1e-9);
    }
}

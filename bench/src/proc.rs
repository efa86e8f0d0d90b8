//! What `/proc` tells about a process (resident memory, CPU time) and about the
//! machine (for the report's header). Linux only, like the deployment.

use anyhow::{Context as _, bail};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

/// Resident set size of `pid`, in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// User plus system CPU time of `pid` so far, in clock ticks (fields 14 and 15
/// of `/proc/<pid>/stat`).
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).with_context(|| format!("unexpected /proc/{pid}/stat format"))
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces, so
    // count fields from the last ')'; the first field after it is field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// The summed CPU time of `pids`, in seconds (a process that is gone counts 0).
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks: u64 = pids.iter().filter_map(|&pid| cpu_ticks(pid).ok()).sum();
    ticks as f64 / clock_ticks_per_sec() as f64
}

/// Redis's CPU time so far, in seconds (`used_cpu_sys` + `used_cpu_user` of
/// `INFO cpu`: the server process, all its threads).
pub async fn redis_cpu_seconds(url: &str) -> anyhow::Result<f64> {
    let client = redis::Client::open(url)?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .context("connecting to Redis timed out")??;
    let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut conn).await?;
    Ok(parse_redis_cpu(&info))
}

fn parse_redis_cpu(info: &str) -> f64 {
    info.lines()
        .filter_map(|line| line.trim().split_once(':'))
        .filter(|(key, _)| matches!(*key, "used_cpu_sys" | "used_cpu_user"))
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we know of).
pub fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// CPU use of a process over a window, as a percentage of one core.
pub struct CpuWindow {
    pid: u32,
    ticks: u64,
    started: Instant,
}

impl CpuWindow {
    pub fn start(pid: u32) -> anyhow::Result<Self> {
        Ok(Self {
            pid,
            ticks: cpu_ticks(pid)?,
            started: Instant::now(),
        })
    }

    /// Percentage of one core used since `start`.
    pub fn percent(&self, ticks_per_sec: u64) -> anyhow::Result<f64> {
        let used = cpu_ticks(self.pid)?.saturating_sub(self.ticks);
        let elapsed = self.started.elapsed().as_secs_f64();
        if elapsed <= 0.0 {
            bail!("empty CPU window");
        }
        Ok(used as f64 / ticks_per_sec as f64 / elapsed * 100.0)
    }
}

/// Samples a process's RSS every `every` until stopped; keeps the peak.
pub struct RssSampler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<u64>,
}

impl RssSampler {
    pub fn start(pid: u32, every: Duration) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut peak = 0;
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Ok(rss) = rss_kib(pid) {
                            peak = peak.max(rss);
                        }
                    }
                    _ = stopped.changed() => break,
                }
            }
            if let Ok(rss) = rss_kib(pid) {
                peak = peak.max(rss);
            }
            peak
        });
        Self { stop, task }
    }

    /// The highest RSS seen, in KiB.
    pub async fn finish(self) -> u64 {
        self.stop.send_replace(true);
        self.task.await.unwrap_or(0)
    }
}

/// The machine the figures were measured on.
#[derive(Clone, Debug, Serialize)]
pub struct MachineInfo {
    pub nproc: usize,
    pub memory_total_mib: u64,
    pub kernel: String,
    pub cpu_model: String,
    pub date_utc: String,
    pub git_commit: String,
    /// Whether the work tree had uncommitted changes (then the commit alone does not say what ran).
    pub git_dirty: bool,
    /// How busy the machine's CPUs were (all of them, %) in the second
    /// before the run started: well above zero means something else was
    /// competing for them, and the figures are low.
    pub cpu_busy_before_percent: f64,
}

/// (busy, total) jiffies of all CPUs, from the `cpu` line of `/proc/stat`.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Percentage of all CPUs busy over the next `window` (0 if unreadable).
pub async fn machine_busy_percent(window: Duration) -> f64 {
    let Some((busy0, total0)) = cpu_jiffies() else {
        return 0.0;
    };
    tokio::time::sleep(window).await;
    let Some((busy1, total1)) = cpu_jiffies() else {
        return 0.0;
    };
    let total = total1.saturating_sub(total0);
    if total == 0 {
        return 0.0;
    }
    busy1.saturating_sub(busy0) as f64 / total as f64 * 100.0
}

/// A gauge of the machine's speed right now: how many 64-byte messages one
/// thread can send over a loopback TCP connection and read back at the other
/// end, per second, during `window`.
///
/// Every scenario is mostly this kind of work (small writes and reads over
/// loopback TCP), and these VMs' speed drifts by a third within an hour with
/// nothing else running. Each scenario's report carries the gauge taken just
/// before it, so figures from different runs can be read against the
/// machine's speed at the time. One thread does both ends: no thread waits
/// for a wake-up, which would measure how deeply idle CPUs sleep instead.
pub fn loopback_messages_per_sec(window: Duration) -> std::io::Result<f64> {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut sender = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (mut receiver, _) = listener.accept()?;
    sender.set_nodelay(true)?;
    let message = [7u8; 64];
    let mut buf = [0u8; 64];
    let began = std::time::Instant::now();
    let mut messages = 0u64;
    while began.elapsed() < window {
        sender.write_all(&message)?;
        receiver.read_exact(&mut buf)?;
        messages += 1;
    }
    Ok(messages as f64 / began.elapsed().as_secs_f64())
}

/// Waits until the CPUs are less than `below_percent` busy over a quarter of
/// a second, for at most `within`; returns how long it waited. A scenario's
/// processes end when it does, but not all of its work: nodes remove the
/// traces of thousands of closed connections from Redis, the kernel tears
/// down their sockets. Measured right after a scenario with tens of thousands
/// of connections, the machine gauge showed half its speed for a few seconds.
pub async fn wait_until_quiet(below_percent: f64, within: Duration) -> Duration {
    let began = std::time::Instant::now();
    while began.elapsed() < within
        && machine_busy_percent(Duration::from_millis(250)).await >= below_percent
    {}
    began.elapsed()
}

/// What the report's header says about the machine and the code.
pub fn machine_info(workspace: &Path, cpu_busy_before_percent: f64) -> MachineInfo {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let run = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .current_dir(workspace)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let memory_total_mib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024);
    MachineInfo {
        nproc: run("nproc", &[])
            .and_then(|n| n.parse().ok())
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(0),
        memory_total_mib,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        cpu_model,
        date_utc: run("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).unwrap_or_default(),
        git_commit: run("git", &["rev-parse", "--short", "HEAD"])
            .unwrap_or_else(|| "unknown".into()),
        git_dirty: run("git", &["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|s| !s.is_empty()),
        cpu_busy_before_percent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        assert_eq!(
            parse_vm_rss("Name:\tws-node\nVmPeak:\t 100 kB\nVmRSS:\t   12345 kB\n"),
            Some(12345)
        );
        let stat = "4242 (ws node) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 8 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        let info =
            "# CPU\r\nused_cpu_sys:1.50\r\nused_cpu_user:2.25\r\nused_cpu_sys_children:9.0\r\n";
        assert!((parse_redis_cpu(info) - 3.75).abs() < 1e-9);
    }

    #[test]
    fn reads_its_own_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).expect("rss") > 0);
        cpu_ticks(pid).expect("ticks");
    }

    #[test]
    fn gauges_the_machine() {
        let messages = loopback_messages_per_sec(Duration::from_millis(20)).expect("gauge");
        assert!(messages > 0.0, "no message in 20 ms");
    }
}

//! Every setting of auth-service, from flags or environment variables, each
//! with a default that works on a developer machine with local Postgres and Redis.

use shared::config::CommonConfig;
use shared::redact::SecretUrl;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Postgres URL; the database is created if missing and migrated at
    /// startup. Printed with its password redacted (`Debug` included).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/tessera"
    )]
    pub database_url: SecretUrl,

    /// Postgres connection pool size.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16)]
    pub database_pool_size: u32,

    #[arg(long, env = "AUTH_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Serve this directory's files at `/` (GET and HEAD), e.g. the demo app
    /// in clients/demo or your own single-page app, so that the page and the
    /// API share one origin. Unset: only the API is served.
    #[arg(long, env = "STATIC_DIR")]
    pub static_dir: Option<std::path::PathBuf>,

    /// The `ws_url` returned with every ticket: where clients connect.
    #[arg(long, env = "PUBLIC_WS_URL", default_value = "ws://127.0.0.1:8081/ws")]
    pub public_ws_url: String,

    /// Ticket lifetime in seconds (1-30).
    #[arg(long, env = "TICKET_TTL_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=30))]
    pub ticket_ttl_secs: u64,

    /// A session ends after this many seconds without use.
    #[arg(long, env = "SESSION_IDLE_TIMEOUT_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub session_idle_timeout_secs: u64,

    /// A session ends this many seconds after login, however active.
    #[arg(long, env = "SESSION_ABSOLUTE_TIMEOUT_SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    pub session_absolute_timeout_secs: u64,

    /// Threads that serve HTTP, each a single-threaded runtime with its own
    /// Redis connection; a connection stays on one thread (the one that
    /// accepted it, or the least busy one if that held more than its share),
    /// so a request never hops threads (and wakes no other). Defaults to the
    /// number of CPUs.
    #[arg(long, env = "SERVE_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub serve_threads: Option<u16>,

    /// Password hashes computed at once (each takes 19 MiB and tens of
    /// milliseconds of a core).
    /// Defaults to the number of CPUs.
    #[arg(long, env = "HASH_CONCURRENCY")]
    pub hash_concurrency: Option<usize>,

    /// Nice value of the password-hashing threads (0–19): higher lets request
    /// handling preempt hashing sooner when both want a core.
    #[arg(long, env = "HASH_NICE", default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub hash_nice: i32,

    /// Failed logins allowed per account from one client address (an IPv6
    /// address by its /64) within the failure window: the hard limit, which
    /// locks out only that address.
    #[arg(long, env = "LOGIN_MAX_FAILURES_PER_ACCOUNT", default_value_t = 10)]
    pub login_max_failures_per_account: u64,

    /// Failed logins allowed per account per hour from addresses the account
    /// has not logged in from: throttles guessing from many addresses without
    /// locking the owner out of the addresses they use.
    #[arg(
        long,
        env = "LOGIN_MAX_FAILURES_PER_ACCOUNT_HOURLY",
        default_value_t = 50
    )]
    pub login_max_failures_per_account_hourly: u64,

    /// Failed logins allowed per client IP within the failure window.
    #[arg(long, env = "LOGIN_MAX_FAILURES_PER_IP", default_value_t = 100)]
    pub login_max_failures_per_ip: u64,

    /// Cookies and API keys from one client address that Postgres does not
    /// know, per failure window; over it, that address's credentials that
    /// are in no cache get 429 until the window ends.
    #[arg(long, env = "AUTH_MAX_FAILURES_PER_IP", default_value_t = 100)]
    pub auth_max_failures_per_ip: u64,

    #[arg(long, env = "AUTH_FAILURE_WINDOW_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub auth_failure_window_secs: u64,

    #[arg(long, env = "LOGIN_FAILURE_WINDOW_SECS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..))]
    pub login_failure_window_secs: u64,

    /// Tickets one user may mint with a session cookie per mint window.
    #[arg(long, env = "MINT_LIMIT_PER_USER", default_value_t = 60)]
    pub mint_limit_per_user: u64,

    /// Tickets one API key may mint per mint window.
    #[arg(long, env = "MINT_LIMIT_PER_KEY", default_value_t = 1200)]
    pub mint_limit_per_key: u64,

    #[arg(long, env = "MINT_WINDOW_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub mint_window_secs: u64,

    /// How long a verified API key is trusted from memory before it is checked
    /// against Postgres again: the bound on how late a revocation takes effect
    /// in *other* auth-service processes (the revoking process forgets at once).
    #[arg(long, env = "API_KEY_CACHE_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub api_key_cache_ms: u64,

    /// A request's head must arrive within this many seconds, and its body
    /// within as many again; a client that trickles them (slowloris) is cut
    /// off. An idle kept-alive connection is closed after this too, so keep
    /// it above the idle timeout of a load balancer in front (60 s on AWS ALB),
    /// or the balancer may send a request on a connection being closed.
    #[arg(long, env = "REQUEST_READ_TIMEOUT_SECS", default_value_t = 75)]
    pub request_read_timeout_secs: u64,

    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,
}

impl Config {
    /// The configuration that the defaults and environment give, as the binary would see it.
    pub fn from_env() -> Result<Self, clap::Error> {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        use clap::Parser as _;
        Wrapper::try_parse_from(["auth-service"]).map(|w| w.config)
    }

    pub fn request_read_timeout(&self) -> Duration {
        Duration::from_secs(self.request_read_timeout_secs.max(1))
    }

    pub fn ticket_ttl(&self) -> Duration {
        Duration::from_secs(self.ticket_ttl_secs)
    }

    pub fn serve_threads(&self) -> usize {
        self.serve_threads
            .map_or_else(crate::serving::available_cpus, usize::from)
            .max(1)
    }

    pub fn hash_concurrency(&self) -> usize {
        self.hash_concurrency
            .unwrap_or_else(crate::serving::available_cpus)
            .max(1)
    }

    /// Validates what clap cannot: origins, prefix, namespaces, timeouts that must agree.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.common.validate()?;
        anyhow::ensure!(
            self.session_idle_timeout_secs <= self.session_absolute_timeout_secs,
            "SESSION_IDLE_TIMEOUT_SECS must not exceed SESSION_ABSOLUTE_TIMEOUT_SECS"
        );
        if let Some(dir) = &self.static_dir {
            anyhow::ensure!(
                dir.is_dir(),
                "STATIC_DIR={} is not a directory",
                dir.display()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_passwords_of_both_urls() {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        use clap::Parser as _;
        let config = Wrapper::try_parse_from([
            "auth-service",
            "--redis-url",
            "redis://:redis-pw-1@cache:6379",
            "--database-url",
            "postgres://app:pg-pw-2@db:5432/tessera",
        ])
        .expect("config")
        .config;
        assert_eq!(
            config.database_url.expose(),
            "postgres://app:pg-pw-2@db:5432/tessera"
        );
        let printed = format!("{config:?}");
        assert!(!printed.contains("redis-pw-1"), "{printed}");
        assert!(!printed.contains("pg-pw-2"), "{printed}");
        assert!(printed.contains("postgres://app:[REDACTED]@db:5432/tessera"));
    }
}

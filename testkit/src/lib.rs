//! Test support: real services, isolated per test.
//!
//! * [`TestDatabase`]: a fresh Postgres database per test, dropped afterwards.
//! * [`RedisServer`]: a private `redis-server` on a free port, for tests that
//!   flush, kill or restart Redis (never the machine's shared instance).
//! * [`RedisCluster`]: a private loopback Redis Cluster (three masters, one
//!   replica each), for tests of cluster mode, failover and slot moves.
//! * [`unique_prefix`]: a Redis key prefix no other test uses, for tests that
//!   share the machine's Redis.
//! * [`raw_http`]: reading an HTTP answer off a socket, for hand-written requests.
//! * [`proxy`]: a TCP proxy a test can cut, to fail a connection on cue.

pub mod cluster;
pub mod proxy;
pub mod raw_http;

pub use cluster::RedisCluster;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Base URL of the Postgres server tests use (`TEST_DATABASE_URL`, default local trust auth).
pub fn postgres_base_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// URL of the shared Redis tests use when they need no private one (`TEST_REDIS_URL`).
pub fn shared_redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Seed URLs of the Redis Cluster tests share when they need no private one
/// (`TEST_REDIS_CLUSTER_URLS`, comma-separated; by default the one
/// `scripts/ensure-services.sh` starts on 127.0.0.1:7101-7106).
pub fn shared_cluster_urls() -> Vec<String> {
    std::env::var("TEST_REDIS_CLUSTER_URLS")
        .unwrap_or_else(|_| {
            "redis://127.0.0.1:7101,redis://127.0.0.1:7102,redis://127.0.0.1:7103".to_owned()
        })
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// Which Redis a test's services run on, for the suites that must hold on
/// both (see [`on_single_redis_and_cluster!`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The shared single Redis ([`shared_redis_url`]), or a private one.
    Single,
    /// The shared test Redis Cluster ([`shared_cluster_urls`]), or a private one.
    Cluster,
}

/// Generates, for each named `async fn name(backend: Backend)`, a module
/// `name` with two tests: `single_redis` and `redis_cluster`. The suites
/// that must hold on both kinds of Redis are written once this way.
#[macro_export]
macro_rules! on_single_redis_and_cluster {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn single_redis() {
                super::$test($crate::Backend::Single).await;
            }
            #[tokio::test]
            async fn redis_cluster() {
                super::$test($crate::Backend::Cluster).await;
            }
        }
    )*};
}

/// A short random lowercase id.
pub fn random_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A Redis key prefix unique to this test.
pub fn unique_prefix() -> String {
    format!("test-{}", random_id())
}

/// A database that exists for the duration of one test. The application under
/// test creates and migrates it (that is part of what is tested); dropping this
/// value drops the database.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub fn new() -> Self {
        let name = format!("tessera_test_{}", random_id());
        let url = format!("{}/{}", postgres_base_url(), name);
        Self { name, url }
    }
}

impl Default for TestDatabase {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime; a thread with its own runtime
        // avoids blocking (or nesting) it.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use sqlx::Connection as _;
                let admin = format!("{}/postgres", postgres_base_url());
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A free TCP port on 127.0.0.1, for a process the caller starts next and
/// tells to listen there.
///
/// It is picked at random *below* the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`). A port from `bind(…:0)` would come from
/// that range, where the kernel hands ports to every other test binding
/// port 0 and to every outgoing connection: between this answer and the
/// process's own bind, another test's server could be given the same port,
/// and a test then waits for readiness on a server that is not its own (the
/// likely cause of a ticket once refused in CI by a node of another test).
/// Below the range the only competitors are other calls of this function,
/// each picking at random among thousands of ports, and only ports that
/// nothing holds at the moment of asking.
pub fn free_port() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    const LOWEST: u16 = 10_000;
    if ephemeral_low > LOWEST + 1_000 {
        for _ in 0..1_000 {
            let port = rand::random_range(LOWEST..ephemeral_low);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    // An unusual range (or nothing free below it): the kernel's choice.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// A `redis-server` process owned by one test: it can be flushed, killed with
/// SIGKILL and restarted from its directory (with its AOF, if enabled).
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts a server without persistence.
    pub fn start() -> Self {
        Self::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// Starts a server with an append-only file fsynced on every write, so a
    /// SIGKILL loses no acknowledged write.
    pub fn start_durable() -> Self {
        Self::start_with(&[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
    }

    pub fn start_with(args: &[&str]) -> Self {
        Self::start_on(free_port(), args)
    }

    /// Starts a server on `port` (the caller made sure it is free).
    pub fn start_on(port: u16, args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("tessera-redis-{}", random_id()));
        std::fs::create_dir_all(&dir).expect("create redis dir");
        let mut server = Self {
            child: None,
            port,
            dir,
            extra_args: args.iter().map(|s| (*s).to_owned()).collect(),
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection for the test itself (to inject faults: `CLIENT KILL`,
    /// `ACL`, `FLUSHALL`).
    pub async fn admin(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("admin connection")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (see scripts/ensure-services.sh)");
        self.child = Some(child);
        self.wait_until_ready();
    }

    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(self.url()).expect("redis url");
        loop {
            if let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200))
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server with SIGKILL (no shutdown, no final save).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every `.rs` file under `src_dir` with its text, for tests that hold a
/// crate's code to a rule (such as naming metrics only through one module).
pub fn rust_sources(src_dir: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut pending = vec![src_dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable source dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let source = std::fs::read_to_string(&path).expect("readable source");
                found.push((path, source));
            }
        }
    }
    found
}

/// The first argument of each `counter!`, `gauge!` and `histogram!` call in
/// `source`, as written: a constant's path, or a string literal.
pub fn metric_macro_names(source: &str) -> Vec<String> {
    ["counter!(", "gauge!(", "histogram!("]
        .into_iter()
        .flat_map(|call| source.split(call).skip(1))
        .map(|args| {
            args.split([',', ')'])
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .collect()
}

/// Checks a crate's metrics against its `telemetry` module: outside
/// `telemetry.rs`, every metric macro names its metric by a constant of that
/// module, and every constant declared there is used somewhere. Panics with
/// what breaks the rule.
pub fn assert_metrics_named_through_telemetry(crate_dir: &str) {
    let sources = rust_sources(&Path::new(crate_dir).join("src"));
    let (telemetry, others): (Vec<_>, Vec<_>) = sources
        .iter()
        .partition(|(path, _)| path.ends_with("telemetry.rs"));
    let declared: Vec<&str> = telemetry
        .iter()
        .flat_map(|(_, source)| source.lines())
        .filter_map(|line| line.strip_prefix("pub const "))
        .filter_map(|rest| rest.split(':').next())
        .collect();
    assert!(!declared.is_empty(), "no metric constants in telemetry.rs");
    for (path, source) in &others {
        for name in metric_macro_names(source) {
            let constant = name.strip_prefix("crate::telemetry::");
            assert!(
                constant.is_some_and(|c| declared.contains(&c)),
                "{} names a metric as `{name}`, not by a constant of crate::telemetry",
                path.display()
            );
        }
    }
    for constant in declared {
        let path = format!("telemetry::{constant}");
        assert!(
            others.iter().any(|(_, source)| source.contains(&path)),
            "telemetry::{constant} is declared but never counted"
        );
    }
}

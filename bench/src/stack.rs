//! The stack under test, started locally: one auth-service and K ws-nodes from
//! `--bin-dir`, on the machine's Postgres and Redis, isolated from anything
//! else there by a throwaway database and a unique Redis prefix.
//!
//! Every process is started with an explicit, cleared environment (so nothing
//! in the caller's shell changes what is measured) and with `kill_on_drop`, so
//! an error or an interrupt that drops the [`Stack`] never leaves one behind.
//! [`Stack::shutdown`] is the orderly path: SIGTERM, wait, then drop the
//! database and delete the run's Redis keys.

use crate::say;
use anyhow::{Context as _, bail};
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How long a service gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a service gets to exit after SIGTERM (ws-node drains its sockets first).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Settings that differ from the services' defaults, and why: the limits that
/// protect a production deployment from one abusive client would otherwise
/// throttle the one bench "client" that stands for thousands of users.
pub const AUTH_SETTINGS: &[(&str, &str)] = &[
    // The bench mints tens of thousands of tickets per second with a few keys.
    ("MINT_LIMIT_PER_KEY", "1000000000"),
    ("RUST_LOG", "warn"),
];

pub const NODE_SETTINGS: &[(&str, &str)] = &[
    // The publisher is a WebSocket client sending up to 1 000 frames/s.
    ("CLIENT_MESSAGES_PER_SEC", "1000000"),
    ("CLIENT_MESSAGE_BURST", "1000000"),
    // Thousands of connections share a handful of bench users.
    ("MAX_CONNECTIONS_PER_USER", "1000000"),
    ("DRAIN_TIMEOUT_SECS", "5"),
    // One bench user publishes to a thousand rooms and megabytes per run.
    ("PUBLISH_QUOTA_NEW_CHANNELS", "1000000000"),
    ("PUBLISH_QUOTA_BYTES", "1000000000000"),
    ("RUST_LOG", "warn"),
];

/// Users the bench creates: connections and mints are spread over their keys.
const USERS: usize = 4;

/// One running service.
pub struct Service {
    pub name: String,
    pub addr: SocketAddr,
    pub pid: u32,
    child: Child,
}

impl Service {
    fn spawn(
        name: &str,
        exe: &Path,
        args: &[String],
        env: &[(String, String)],
        addr: SocketAddr,
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let log = std::fs::File::create(log_dir.join(format!("{name}.log")))
            .with_context(|| format!("creating the log file of {name}"))?;
        let child = base_command(exe, env)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} ({name})", exe.display()))?;
        let pid = child.id().context("the child has no pid")?;
        Ok(Self {
            name: name.to_owned(),
            addr,
            pid,
            child,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Polls `GET /readyz` until it answers 200; fails at once if the process exits.
    async fn wait_ready(&mut self, http: &reqwest::Client) -> anyhow::Result<()> {
        let started = Instant::now();
        let url = format!("{}/readyz", self.url());
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited during start-up ({status}); see its log",
                    self.name
                );
            }
            if let Ok(response) = http.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("{} not ready after {READY_TIMEOUT:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then up to [`STOP_TIMEOUT`] to exit, then SIGKILL.
    pub async fn stop(mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            say(format!(
                "{} did not stop within {STOP_TIMEOUT:?}; killing it",
                self.name
            ));
            let _ = self.child.kill().await;
        }
    }
}

/// A command with a cleared environment plus `env` (and `PATH`).
fn base_command(exe: &Path, env: &[(String, String)]) -> Command {
    let mut command = Command::new(exe);
    command.env_clear();
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    command
}

/// Runs an auth-service operator command; returns its stdout.
async fn run_cli(exe: &Path, env: &[(String, String)], args: &[&str]) -> anyhow::Result<String> {
    let mut command = base_command(exe, env);
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .context("auth-service command timed out")??;
    if !output.status.success() {
        bail!(
            "auth-service {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// A user the bench created, with a `connect,publish` API key.
#[derive(Clone, Debug)]
pub struct BenchUser {
    pub username: String,
    pub password: String,
    pub api_key: String,
}

/// What the report says about the stack.
#[derive(Clone, Debug, Serialize)]
pub struct StackInfo {
    pub bin_dir: String,
    pub database: String,
    pub redis_prefix: String,
    pub auth_settings: Vec<String>,
    pub node_settings: Vec<String>,
}

pub struct Stack {
    bin_dir: PathBuf,
    log_dir: PathBuf,
    postgres_url: String,
    redis_url: String,
    /// While set (the `shards` scenario), the services run on this Redis
    /// Cluster instead of `redis_url`.
    redis_cluster_urls: Option<Vec<String>>,
    db_name: String,
    redis_prefix: String,
    auth: Option<Service>,
    nodes: Vec<Service>,
    pub users: Vec<BenchUser>,
    http: reqwest::Client,
    /// Next source address to hand a worker (127.0.0.2 onwards, wrapping).
    next_source: u32,
    nodes_started: usize,
    /// `--auth-env` / `--node-env`: applied after the bench's settings.
    auth_extra: Vec<(String, String)>,
    node_extra: Vec<(String, String)>,
}

impl Stack {
    pub fn new(
        bin_dir: PathBuf,
        log_dir: PathBuf,
        postgres_url: String,
        redis_url: String,
        auth_extra: Vec<(String, String)>,
        node_extra: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        Ok(Self {
            bin_dir,
            log_dir,
            postgres_url: postgres_url.trim_end_matches('/').to_owned(),
            redis_url,
            redis_cluster_urls: None,
            db_name: format!("tessera_bench_{run_id}"),
            redis_prefix: format!("bench-{run_id}"),
            auth: None,
            nodes: Vec::new(),
            users: Vec::new(),
            http: crate::client::http_client(4)?,
            next_source: 0,
            nodes_started: 0,
            auth_extra,
            node_extra,
        })
    }

    pub fn info(&self) -> StackInfo {
        let show = |fixed: &[(&str, &str)], extra: &[(String, String)]| {
            fixed
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .chain(extra.iter().map(|(k, v)| format!("{k}={v}")))
                .collect()
        };
        StackInfo {
            bin_dir: self.bin_dir.display().to_string(),
            database: self.db_name.clone(),
            redis_prefix: self.redis_prefix.clone(),
            auth_settings: show(AUTH_SETTINGS, &self.auth_extra),
            node_settings: show(NODE_SETTINGS, &self.node_extra),
        }
    }

    fn exe(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.bin_dir.join(name);
        if !path.is_file() {
            bail!(
                "{} not found: build it (cargo build --release -p auth-service -p ws-node) or pass --bin-dir",
                path.display()
            );
        }
        Ok(path)
    }

    fn common_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "DATABASE_URL".into(),
                format!("{}/{}", self.postgres_url, self.db_name),
            ),
            ("REDIS_URL".into(), self.redis_url.clone()),
            ("REDIS_PREFIX".into(), self.redis_prefix.clone()),
            ("LOG_FORMAT".into(), "json".into()),
        ]
        .into_iter()
        .chain(
            self.redis_cluster_urls
                .as_ref()
                .map(|seeds| ("REDIS_CLUSTER_URLS".into(), seeds.join(","))),
        )
        .collect()
    }

    fn auth_env(&self, listen: SocketAddr) -> Vec<(String, String)> {
        let mut env = self.common_env();
        env.push(("AUTH_LISTEN".into(), listen.to_string()));
        // Clients are told node 0; the bench itself picks the node for each connection.
        env.push((
            "PUBLIC_WS_URL".into(),
            format!(
                "ws://{}/ws",
                self.nodes
                    .first()
                    .map_or_else(|| "127.0.0.1:8081".into(), |n| n.addr.to_string())
            ),
        ));
        env.extend(
            AUTH_SETTINGS
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        env.extend(self.auth_extra.iter().cloned());
        env
    }

    /// Starts auth-service (which creates and migrates the database), then
    /// creates the bench users and their API keys through its command line.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let exe = self.start_auth().await?;
        let creations = (0..USERS).map(|i| self.create_user(&exe, i));
        self.users = futures_util::future::try_join_all(creations).await?;
        say(format!("created {} users with API keys", self.users.len()));
        Ok(())
    }

    /// Moves the stack to a Redis Cluster (`Some(seeds)`) or back to the
    /// run's Redis (`None`): stops the nodes and restarts auth-service on it.
    /// The users and keys live in Postgres and stay; start nodes afterwards.
    pub async fn switch_redis(&mut self, cluster: Option<Vec<String>>) -> anyhow::Result<()> {
        self.stop_nodes().await;
        if let Some(auth) = self.auth.take() {
            auth.stop().await;
        }
        self.redis_cluster_urls = cluster;
        self.start_auth().await.map(drop)
    }

    /// The Redis servers the services use now: the run's Redis, or every
    /// node of the cluster.
    pub fn redis_servers(&self) -> Vec<String> {
        self.redis_cluster_urls
            .clone()
            .unwrap_or_else(|| vec![self.redis_url.clone()])
    }

    /// Starts auth-service on the stack's Redis; returns its executable.
    async fn start_auth(&mut self) -> anyhow::Result<PathBuf> {
        let exe = self.exe("auth-service")?;
        self.exe("ws-node")?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, testkit::free_port()));
        let mut auth = Service::spawn(
            "auth-service",
            &exe,
            &[],
            &self.auth_env(addr),
            addr,
            &self.log_dir,
        )?;
        auth.wait_ready(&self.http).await?;
        say(format!(
            "auth-service ready at {addr} (database {}, redis prefix {})",
            self.db_name, self.redis_prefix
        ));
        self.auth = Some(auth);
        Ok(exe)
    }

    async fn create_user(&self, exe: &Path, i: usize) -> anyhow::Result<BenchUser> {
        let username = format!("bench{i}");
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let mut env = self.common_env();
        env.push(("RUST_LOG".into(), "warn".into()));
        env.push(("AUTH_PASSWORD".into(), password.clone()));
        run_cli(
            exe,
            &env,
            &["user", "add", &username, "--key-scopes", "connect,publish"],
        )
        .await?;
        let api_key = run_cli(
            exe,
            &env,
            &[
                "api-key",
                "create",
                &username,
                "--scopes",
                "connect,publish",
                "--name",
                "bench",
            ],
        )
        .await?;
        if api_key.is_empty() {
            bail!("auth-service api-key create printed no key");
        }
        Ok(BenchUser {
            username,
            password,
            api_key,
        })
    }

    pub fn auth(&self) -> anyhow::Result<&Service> {
        self.auth.as_ref().context("auth-service is not running")
    }

    pub fn auth_url(&self) -> anyhow::Result<String> {
        Ok(self.auth()?.url())
    }

    pub fn api_keys(&self) -> Vec<String> {
        self.users.iter().map(|u| u.api_key.clone()).collect()
    }

    pub fn nodes(&self) -> &[Service] {
        &self.nodes
    }

    /// Replaces the running nodes with `count` fresh ones, so every scenario
    /// starts from clean processes (RSS, queues, subscriptions).
    pub async fn restart_nodes(&mut self, count: usize) -> anyhow::Result<()> {
        self.stop_nodes().await;
        let exe = self.exe("ws-node")?;
        for _ in 0..count {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, testkit::free_port()));
            let name = format!("ws-node-{}", self.nodes_started);
            self.nodes_started += 1;
            let mut env = self.common_env();
            env.push(("WS_LISTEN".into(), addr.to_string()));
            env.push(("NODE_ID".into(), name.clone()));
            env.extend(
                NODE_SETTINGS
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            );
            env.extend(self.node_extra.iter().cloned());
            let node = Service::spawn(&name, &exe, &[], &env, addr, &self.log_dir)?;
            self.nodes.push(node);
        }
        for node in &mut self.nodes {
            node.wait_ready(&self.http).await?;
        }
        Ok(())
    }

    /// Starts `count` reference servers (this executable's `reference`
    /// command, see `crate::reference`), each in its own process on its own port.
    pub async fn start_references(&mut self, count: usize) -> anyhow::Result<Vec<Service>> {
        let exe = std::env::current_exe().context("locating tessera-bench")?;
        let mut references = Vec::new();
        for i in 0..count {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, testkit::free_port()));
            let args = [
                "reference".to_owned(),
                "--listen".to_owned(),
                addr.to_string(),
            ];
            let name = format!("reference-{i}");
            references.push(Service::spawn(
                &name,
                &exe,
                &args,
                &[],
                addr,
                &self.log_dir,
            )?);
        }
        for reference in &mut references {
            reference.wait_ready(&self.http).await?;
        }
        Ok(references)
    }

    /// Starts `count` Node.js `ws` + `ioredis` peers (`bench/peers/node-ws`,
    /// installed by `scripts/bench.sh`) on the run's Redis and prefix; `None`
    /// when Node or the peer's packages are not there.
    pub async fn start_node_peers(&mut self, count: usize) -> anyhow::Result<Option<Vec<Service>>> {
        let dir = crate::scenarios::workspace_root().join("bench/peers/node-ws");
        let node = PathBuf::from("node");
        let installed =
            dir.join("node_modules/ws").is_dir() && dir.join("node_modules/ioredis").is_dir();
        let has_node = std::process::Command::new(&node)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed || !has_node {
            return Ok(None);
        }
        let mut peers = Vec::new();
        for i in 0..count {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, testkit::free_port()));
            let name = format!("node-ws-{i}");
            let env = vec![
                ("PEER_LISTEN".to_owned(), addr.to_string()),
                ("REDIS_URL".to_owned(), self.redis_url.clone()),
                ("REDIS_PREFIX".to_owned(), self.redis_prefix.clone()),
                ("NODE_ID".to_owned(), name.clone()),
            ];
            let args = [dir.join("server.js").display().to_string()];
            peers.push(Service::spawn(
                &name,
                &node,
                &args,
                &env,
                addr,
                &self.log_dir,
            )?);
        }
        for peer in &mut peers {
            peer.wait_ready(&self.http).await?;
        }
        Ok(Some(peers))
    }

    pub async fn stop_nodes(&mut self) {
        let nodes = std::mem::take(&mut self.nodes);
        futures_util::future::join_all(nodes.into_iter().map(Service::stop)).await;
    }

    /// A source address for the next worker: each worker binds its own, so no
    /// address runs short of ephemeral ports, even with sockets of earlier
    /// scenarios still in TIME_WAIT.
    pub fn next_source_ip(&mut self) -> std::net::IpAddr {
        let n = 2 + self.next_source % 250;
        self.next_source += 1;
        Ipv4Addr::new(127, 0, 0, u8::try_from(n).unwrap_or(2)).into()
    }

    /// Stops every process, drops the database, deletes the run's Redis keys.
    /// Reports (does not fail on) cleanup problems: the figures are already taken.
    pub async fn shutdown(&mut self) {
        self.stop_nodes().await;
        if let Some(auth) = self.auth.take() {
            auth.stop().await;
        }
        if let Err(e) = self.drop_database().await {
            say(format!("could not drop database {}: {e:#}", self.db_name));
        }
        match self.delete_redis_keys().await {
            Ok(n) => say(format!(
                "cleaned up: database {} dropped, {n} Redis keys deleted",
                self.db_name
            )),
            Err(e) => say(format!(
                "could not delete Redis keys {}:*: {e:#}",
                self.redis_prefix
            )),
        }
    }

    async fn drop_database(&self) -> anyhow::Result<()> {
        use sqlx::Connection as _;
        let admin = format!("{}/postgres", self.postgres_url);
        let mut conn =
            tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(&admin))
                .await
                .context("connecting to Postgres timed out")??;
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.db_name);
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await?;
        Ok(())
    }

    /// Deletes every key under the run's prefix (SCAN + UNLINK; never FLUSH).
    async fn delete_redis_keys(&self) -> anyhow::Result<usize> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        let mut conn = tokio::time::timeout(
            Duration::from_secs(10),
            client.get_multiplexed_async_connection(),
        )
        .await
        .context("connecting to Redis timed out")??;
        let pattern = format!("{}:*", self.redis_prefix);
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let _: i64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await?;
                deleted += keys.len();
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

//! Every setting of ws-node, from flags or environment variables, each with a
//! default that works on a developer machine.

use shared::config::CommonConfig;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "ws-node",
    version,
    about = "WebSocket node: authenticated handshake, channels, Redis fan-out"
)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,

    #[arg(long, env = "WS_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,

    /// This node's name in `welcome` frames, logs and connection listings (default: random).
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,

    /// Milliseconds a socket opened without credentials has to send its `auth` frame (then 4002).
    #[arg(long, env = "AUTH_TIMEOUT_MS", default_value_t = 5000)]
    pub auth_timeout_ms: u64,

    /// Milliseconds a client has to send its complete HTTP upgrade request.
    #[arg(long, env = "HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,

    /// Sockets awaiting first-message auth allowed per client IP.
    #[arg(long, env = "MAX_PENDING_AUTH_PER_IP", default_value_t = 32)]
    pub max_pending_auth_per_ip: usize,

    /// Sockets awaiting first-message auth allowed on this node.
    #[arg(long, env = "MAX_PENDING_AUTH", default_value_t = 4096)]
    pub max_pending_auth: usize,

    /// Largest message accepted from a client (larger: close 1009).
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Bytes tungstenite reads from a socket at a time, and about what an idle
    /// connection keeps allocated for reading: the benchmark's idle scenario
    /// measures the memory per connection it costs. Client frames are small;
    /// a large one just takes more reads.
    #[arg(long, env = "WS_READ_BUFFER_BYTES", default_value_t = 512, value_parser = clap::value_parser!(u64).range(256..=1_048_576))]
    pub ws_read_buffer_bytes: u64,

    /// Frames queued for one client before it counts as too slow (close 4008).
    #[arg(long, env = "SEND_QUEUE_FRAMES", default_value_t = 1024)]
    pub send_queue_frames: usize,

    /// Milliseconds one write to a client (a batch of frames and its flush, at
    /// most about 256 KiB) may take; a client that does not take it in time
    /// has stopped reading and is disconnected, so it cannot hold the node's
    /// memory or its connection task. Long enough for a slow mobile link to
    /// take a full write through retransmissions, short against
    /// `IDLE_TIMEOUT_SECS`.
    #[arg(long, env = "WRITE_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub write_timeout_ms: u64,

    /// Sustained client frames per second per connection.
    #[arg(long, env = "CLIENT_MESSAGES_PER_SEC", default_value_t = 50)]
    pub client_messages_per_sec: u32,

    /// Client frames a connection may send in a burst above the sustained rate.
    #[arg(long, env = "CLIENT_MESSAGE_BURST", default_value_t = 100)]
    pub client_message_burst: u32,

    /// Subscriptions with `since` (each a read of the channel's history) a
    /// connection may make per second, sustained; a replay's further pages
    /// are paced by the same allowance.
    #[arg(long, env = "HISTORY_READS_PER_SEC", default_value_t = 10)]
    pub history_reads_per_sec: u32,

    /// History reads a connection may make at once: what a client resuming
    /// many subscriptions after a reconnect needs.
    #[arg(long, env = "HISTORY_READ_BURST", default_value_t = 20)]
    pub history_read_burst: u32,

    /// Open connections per user, counted across all nodes.
    #[arg(long, env = "MAX_CONNECTIONS_PER_USER", default_value_t = 100)]
    pub max_connections_per_user: u32,

    /// Channels one connection may join (besides its own user channel).
    #[arg(long, env = "MAX_SUBSCRIPTIONS_PER_CONNECTION", default_value_t = 100)]
    pub max_subscriptions_per_connection: usize,

    /// Seconds between server pings.
    #[arg(long, env = "PING_INTERVAL_SECS", default_value_t = 20)]
    pub ping_interval_secs: u64,

    /// Seconds of silence (no frame, no pong) after which a peer is considered dead.
    #[arg(long, env = "IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,

    /// When the node is busy, sockets write on a shared tick (many messages
    /// per syscall) instead of per message; the tick lengthens up to this
    /// many milliseconds while the node stays busy. 0: never.
    #[arg(long, env = "WRITE_COALESCE_MS", default_value_t = 100)]
    pub write_coalesce_ms: u64,

    /// Percentage of the node's runtime time spent busy above which write
    /// coalescing turns on (and its tick lengthens).
    #[arg(long, env = "WRITE_COALESCE_BUSY", default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub write_coalesce_busy: u8,

    /// Seconds a connection's cluster-wide entries (per-user slot, directory,
    /// presence) live without renewal; a dead node's entries vanish within this.
    #[arg(long, env = "CONNECTION_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..))]
    pub connection_lease_secs: u64,

    /// Seconds between re-checks of each socket's credential against the
    /// revocation markers (catches revocations whose announcement was lost).
    #[arg(long, env = "REVALIDATE_INTERVAL_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub revalidate_interval_secs: u64,

    /// The node reports not-ready (`/readyz`) when the newest canary it got
    /// back through its Redis subscription was sent longer ago than this
    /// (canaries go out every second): connected, but not delivering.
    #[arg(long, env = "CANARY_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1_500..))]
    pub canary_timeout_ms: u64,

    /// Seconds to close every socket (1001) and exit after SIGTERM.
    #[arg(long, env = "DRAIN_TIMEOUT_SECS", default_value_t = 10)]
    pub drain_timeout_secs: u64,
}

impl Config {
    /// The configuration that the defaults and environment give.
    pub fn from_env() -> Result<Self, clap::Error> {
        use clap::Parser as _;
        Self::try_parse_from(["ws-node"])
    }

    pub fn node_id(&self) -> String {
        self.node_id
            .clone()
            .unwrap_or_else(|| format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]))
    }

    pub fn auth_timeout(&self) -> Duration {
        Duration::from_millis(self.auth_timeout_ms)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    pub fn canary_timeout(&self) -> Duration {
        Duration::from_millis(self.canary_timeout_ms)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs.max(1))
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(1))
    }

    pub fn connection_lease(&self) -> Duration {
        Duration::from_secs(self.connection_lease_secs)
    }

    pub fn revalidate_interval(&self) -> Duration {
        Duration::from_secs(self.revalidate_interval_secs)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.common.validate()?;
        anyhow::ensure!(
            self.send_queue_frames >= 1,
            "SEND_QUEUE_FRAMES must be at least 1"
        );
        anyhow::ensure!(
            self.max_message_bytes >= 1024,
            "MAX_MESSAGE_BYTES must be at least 1024"
        );
        Ok(())
    }
}

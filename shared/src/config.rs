//! The settings both services have, which must agree between them (the Redis
//! key prefix, the cookie's name, the channel namespaces, the allowed
//! origins) or which both need the same way. Each service's own `Config`
//! flattens this in, so the variables, defaults and checks are written once.

use crate::keys::RedisKeys;
use crate::namespace::Namespaces;
use crate::origin::OriginAllowlist;
use crate::redact::SecretUrl;
use clap::builder::BoolishValueParser;
use std::net::SocketAddr;

#[derive(clap::Args, Clone, Debug)]
pub struct CommonConfig {
    /// Printed with its password redacted (`Debug` included).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: SecretUrl,

    /// Run on a Redis Cluster instead: a few of its nodes (comma-separated
    /// URLs, e.g. `redis://r1:6379,redis://r2:6379`), from which the rest of
    /// the cluster is discovered. When set, `REDIS_URL` is not used. Needs
    /// Redis 7 or later (sharded pub/sub).
    #[arg(long, env = "REDIS_CLUSTER_URLS", value_delimiter = ',')]
    pub redis_cluster_urls: Vec<SecretUrl>,

    /// Prefix of every Redis key and channel, so deployments can share one
    /// Redis; auth-service and the ws-nodes of a deployment must use the same.
    #[arg(long, env = "REDIS_PREFIX", default_value = "tessera")]
    pub redis_prefix: String,

    /// Browser origins allowed to use the session cookie (comma-separated,
    /// exact match, e.g. `https://app.example.com`): logging in and minting
    /// tickets from a page, cookie WebSockets. Also auth-service's CORS
    /// allowlist.
    #[arg(
        long,
        env = "ALLOWED_ORIGINS",
        value_delimiter = ',',
        default_value = "http://localhost:8080,http://127.0.0.1:8080"
    )]
    pub allowed_origins: Vec<String>,

    /// Mark the session cookie `Secure` (and name it `__Host-session`; with
    /// `false`, `session`). Only turn off for plain-http development on a
    /// host other than localhost.
    #[arg(long, env = "COOKIE_SECURE", default_value = "true", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub cookie_secure: bool,

    /// Channel namespaces (JSON; see shared::namespace). Default: public, user, broadcast.
    #[arg(long, env = "CHANNEL_NAMESPACES")]
    pub channel_namespaces: Option<String>,

    /// Bytes of message `data` one user may publish per quota window (client
    /// publishes: over a socket, or with a `publish` key; a backend's
    /// `publish_any` key is not charged).
    #[arg(long, env = "PUBLISH_QUOTA_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub publish_quota_bytes: u64,

    /// Channels with history one user's publishes may bring into existence
    /// per quota window.
    #[arg(long, env = "PUBLISH_QUOTA_NEW_CHANNELS", default_value_t = 200)]
    pub publish_quota_new_channels: u64,

    #[arg(long, env = "PUBLISH_QUOTA_WINDOW_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub publish_quota_window_secs: u64,

    /// How many proxies of our own stand in front of the service, each
    /// appending to `X-Forwarded-For`: the client's IP is the entry that
    /// many from the right (see [`crate::net::forwarded_client`]); 0 ignores
    /// the header. `true`/`false`, the older form, mean 1/0. Only set it to
    /// the real number: one more lets clients pick their own IP. The per-IP
    /// limits count it: behind a proxy, the socket's peer is the proxy, for
    /// every client.
    #[arg(long, env = "TRUST_PROXY_HEADERS", default_value = "0", value_parser = crate::net::parse_proxy_hops)]
    pub trust_proxy_headers: usize,

    /// Serve `/metrics` on this address only (e.g. `0.0.0.0:9100`, reached by
    /// Prometheus but not through the public proxy) instead of on the
    /// service's own listener.
    #[arg(long, env = "METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    #[arg(long, env = "LOG_FORMAT", default_value = "pretty")]
    pub log_format: crate::telemetry::LogFormat,
}

impl CommonConfig {
    /// One Redis server, or a cluster when `REDIS_CLUSTER_URLS` is set.
    pub fn redis_target(&self) -> crate::redis_conn::RedisTarget {
        use crate::redis_conn::RedisTarget;
        if self.redis_cluster_urls.is_empty() {
            RedisTarget::Single(self.redis_url.clone())
        } else {
            RedisTarget::Cluster(self.redis_cluster_urls.clone())
        }
    }

    pub fn redis_keys(&self) -> Result<RedisKeys, crate::keys::InvalidPrefix> {
        RedisKeys::new(&self.redis_prefix)
    }

    pub fn namespaces(&self) -> anyhow::Result<Namespaces> {
        Ok(match &self.channel_namespaces {
            Some(json) => Namespaces::from_json(json)?,
            None => Namespaces::default(),
        })
    }

    pub fn publish_quota(&self) -> crate::quota::PublishQuota {
        crate::quota::PublishQuota {
            bytes: self.publish_quota_bytes,
            new_channels: self.publish_quota_new_channels,
            window: std::time::Duration::from_secs(self.publish_quota_window_secs),
        }
    }

    pub fn origin_allowlist(&self) -> anyhow::Result<OriginAllowlist> {
        Ok(OriginAllowlist::new(&self.allowed_origins)?)
    }

    /// The session cookie's name (`__Host-session`, or `session` without `Secure`).
    pub fn cookie_name(&self) -> &'static str {
        crate::session::cookie_name(self.cookie_secure)
    }

    /// Binds `METRICS_LISTEN`, if set (a taken address stops the start with
    /// an error that names the setting).
    pub fn bind_metrics_listener(&self) -> anyhow::Result<Option<tokio::net::TcpListener>> {
        use anyhow::Context as _;
        self.metrics_listen
            .map(|addr| {
                crate::net::bind(addr).with_context(|| format!("binding METRICS_LISTEN={addr}"))
            })
            .transpose()
    }

    /// What clap cannot check: the prefix, the namespaces, the origins.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.redis_keys()?;
        self.namespaces()?;
        self.origin_allowlist()?;
        Ok(())
    }
}

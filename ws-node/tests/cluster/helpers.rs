//! A whole stack in one test: an auth-service and several ws-nodes (in this
//! process, on their own ports) against real Postgres and Redis, and a real
//! WebSocket client (tokio-tungstenite).

use auth_service::accounts::{self, User, Username};
use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::scope::Scopes;
use shared::secret::Secret;
use std::time::Duration;
use testkit::TestDatabase;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const PASSWORD: &str = "correct horse battery staple";
pub const APP_ORIGIN: &str = "https://app.example";
/// How long a test waits for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(5);

pub struct Node {
    pub addr: std::net::SocketAddr,
    /// Where `/metrics` is served, when `METRICS_LISTEN` set one apart.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub state: ws_node::state::NodeState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Node {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops the node as SIGTERM would, and waits for its drain to finish.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

pub struct Stack {
    pub auth_url: String,
    pub auth: auth_service::state::AppState,
    pub nodes: Vec<Node>,
    pub http: reqwest::Client,
    pub redis_url: String,
    /// Seeds of the Redis Cluster the stack runs on; empty on a single Redis.
    pub redis_cluster_urls: Vec<String>,
    pub prefix: String,
    _db: TestDatabase,
}

pub use testkit::{Backend, on_single_redis_and_cluster};

pub struct StackOptions {
    pub nodes: usize,
    pub backend: Backend,
    pub redis_url: String,
    /// With `Backend::Cluster`: a private cluster's seeds instead of the shared one's.
    pub redis_cluster_urls: Vec<String>,
    pub customise_node: Box<dyn Fn(&mut ws_node::config::Config) + Send + Sync>,
    pub customise_auth: Box<dyn Fn(&mut auth_service::config::Config) + Send + Sync>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            nodes: 1,
            backend: Backend::Single,
            redis_url: testkit::shared_redis_url(),
            redis_cluster_urls: Vec::new(),
            customise_node: Box::new(|_| {}),
            customise_auth: Box::new(|_| {}),
        }
    }
}

impl Stack {
    pub async fn start(nodes: usize) -> Self {
        Self::start_with(StackOptions {
            nodes,
            ..StackOptions::default()
        })
        .await
    }

    /// `nodes` ws-nodes on `backend`.
    pub async fn start_on(backend: Backend, nodes: usize) -> Self {
        Self::start_with(StackOptions {
            nodes,
            backend,
            ..StackOptions::default()
        })
        .await
    }

    pub async fn start_with(options: StackOptions) -> Self {
        shared::telemetry::init(shared::telemetry::LogFormat::Pretty, "warn");
        let redis_cluster_urls = match options.backend {
            Backend::Single => Vec::new(),
            Backend::Cluster if options.redis_cluster_urls.is_empty() => {
                testkit::shared_cluster_urls()
            }
            Backend::Cluster => options.redis_cluster_urls.clone(),
        };
        let db = TestDatabase::new();
        let prefix = testkit::unique_prefix();
        let mut auth_config = auth_service::config::Config::from_env().expect("config");
        auth_config.listen = "127.0.0.1:0".parse().expect("addr");
        auth_config.database_url = db.url.clone().into();
        auth_config.database_pool_size = 5;
        auth_config.common.redis_url = options.redis_url.clone().into();
        auth_config.common.redis_cluster_urls = redis_cluster_urls
            .iter()
            .map(|u| u.as_str().into())
            .collect();
        auth_config.common.redis_prefix = prefix.clone();
        auth_config.common.allowed_origins = vec![APP_ORIGIN.to_owned()];
        (options.customise_auth)(&mut auth_config);
        let auth = auth_service::Application::build(auth_config)
            .await
            .expect("auth-service");
        let auth_url = format!("http://{}", auth.local_addr());
        let auth_state = auth.state().clone();
        tokio::spawn(auth.run_until_stopped(std::future::pending()));

        let mut stack = Self {
            auth_url,
            auth: auth_state,
            nodes: Vec::new(),
            http: reqwest::Client::new(),
            redis_url: options.redis_url.clone(),
            redis_cluster_urls,
            prefix,
            _db: db,
        };
        for i in 0..options.nodes {
            let mut config = stack.node_config(&format!("node-{}", (b'a' + i as u8) as char));
            (options.customise_node)(&mut config);
            stack.nodes.push(start_node(config).await);
        }
        stack
    }

    /// A ws-node's configuration for this stack's Redis and prefix.
    pub fn node_config(&self, node_id: &str) -> ws_node::config::Config {
        let mut config = node_config(&self.redis_url, &self.prefix, node_id);
        config.common.redis_cluster_urls = self
            .redis_cluster_urls
            .iter()
            .map(|u| u.as_str().into())
            .collect();
        config
    }

    /// A command connection to the stack's Redis, single or cluster.
    pub async fn redis(&self) -> shared::redis_conn::Redis {
        let target = self.node_config("probe").common.redis_target();
        shared::redis_conn::open(&target).await.expect("redis")
    }

    pub fn auth(&self, path: &str) -> String {
        format!("{}{}", self.auth_url, path)
    }

    /// `/readyz` of `node`: its status and body.
    pub async fn readiness(&self, node: &Node) -> (u16, Value) {
        let response = self
            .http
            .get(node.http_url("/readyz"))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("json"))
    }

    /// Polls `node`'s `/readyz` until `wanted(status, body)`, at most
    /// `within`; returns that body, or fails with `what` and the last body.
    pub async fn await_readiness(
        &self,
        node: &Node,
        within: Duration,
        what: &str,
        wanted: impl Fn(u16, &Value) -> bool,
    ) -> Value {
        let started = std::time::Instant::now();
        loop {
            let (status, body) = self.readiness(node).await;
            if wanted(status, &body) {
                return body;
            }
            assert!(started.elapsed() < within, "{what}: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The name of `channel`'s live pub/sub channel in this stack's Redis
    /// (the key layout is `shared::keys`'s alone).
    pub fn live_channel(&self, channel: &str) -> String {
        shared::keys::RedisKeys::new(&self.prefix)
            .expect("prefix")
            .channel_live(&channel.parse().expect("channel"))
    }

    /// `node`'s `/metrics` exposition.
    pub async fn metrics(&self, node: &Node) -> String {
        self.http
            .get(node.http_url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    pub async fn create_user(&self, name: &str) -> User {
        accounts::create_user(
            &self.auth.db,
            &self.auth.passwords,
            &Username::parse(name).expect("name"),
            &Secret::new(PASSWORD.to_owned()),
            Scopes::parse_list("connect,publish").expect("scopes"),
        )
        .await
        .expect("user")
    }

    pub async fn api_key(&self, user: &User, scopes: &str) -> String {
        auth_service::api_keys::create(
            &self.auth.db,
            user.id,
            "test",
            Scopes::parse_list(scopes).expect("scopes"),
        )
        .await
        .expect("key")
        .0
        .into_exposed()
    }

    /// Mints a ticket with an API key through auth-service's HTTP API.
    pub async fn ticket(&self, key: &str) -> String {
        let response = self
            .http
            .post(self.auth("/v1/tickets"))
            .bearer_auth(key)
            .send()
            .await
            .expect("mint");
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.expect("json");
        body["ticket"].as_str().expect("ticket").to_owned()
    }

    /// Logs in and returns the session cookie pair (`__Host-session=…`).
    pub async fn login(&self, username: &str) -> String {
        let response = self
            .http
            .post(self.auth("/v1/login"))
            .json(&json!({ "username": username, "password": PASSWORD }))
            .send()
            .await
            .expect("login");
        assert_eq!(response.status(), StatusCode::OK);
        let cookie = response.headers()["set-cookie"].to_str().expect("ascii");
        cookie.split(';').next().expect("pair").to_owned()
    }

    /// Publishes server-side through auth-service.
    pub async fn server_publish(&self, key: &str, channel: &str, data: Value) -> Value {
        let response = self
            .http
            .post(self.auth("/v1/publish"))
            .bearer_auth(key)
            .json(&json!({ "channel": channel, "data": data }))
            .send()
            .await
            .expect("publish");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        response.json().await.expect("json")
    }

    /// The control API's list of a user's live connections (`key` has `admin`).
    pub async fn list_connections(&self, user_id: uuid::Uuid, key: &str) -> Value {
        self.http
            .get(self.auth(&format!("/v1/users/{user_id}/connections")))
            .bearer_auth(key)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json")
    }

    /// Connects to node `i` with a fresh ticket of `key`; returns after `welcome`.
    pub async fn connect(&self, i: usize, key: &str) -> Client {
        let ticket = self.ticket(key).await;
        let mut client =
            Client::connect(&format!("{}?ticket={ticket}", self.nodes[i].ws_url()), &[])
                .await
                .expect("handshake");
        let welcome = client.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        client
    }
}

/// `CHANNEL_NAMESPACES` with one namespace anyone may join and publish to,
/// keeping the given history, and the users' private channels.
pub fn open_namespace(name: &str, max_len: u64, max_age_secs: u64) -> Option<String> {
    Some(format!(
        r#"[{{"name":"{name}","subscribe":"any","publish":"any","history":{{"max_len":{max_len},"max_age_secs":{max_age_secs}}}}},
            {{"name":"user","subscribe":"owner","publish":"server"}}]"#
    ))
}

/// A server-side writer for tests that publish through `shared` directly, as
/// auth-service does for an API key's owner.
pub fn test_publisher() -> shared::channel::Publisher {
    shared::channel::Publisher {
        user_id: uuid::Uuid::nil(),
        username: "test-backend".into(),
    }
}

/// Publishes `{"n": n}` on `channel` through `node`'s own Redis path (the
/// namespace's history policy applies), as a server-side writer would.
pub async fn publish_numbered(
    node: &ws_node::state::NodeState,
    channel: &shared::channel::ChannelName,
    n: u64,
) -> shared::channel::StreamPosition {
    let history = node.namespaces.rule_for(channel).and_then(|r| r.history);
    let data =
        serde_json::value::RawValue::from_string(json!({ "n": n }).to_string()).expect("json");
    let mut redis = node.redis.clone();
    shared::channel::publish(
        &mut redis,
        &node.keys,
        channel,
        &data,
        history,
        &test_publisher(),
        None,
    )
    .await
    .expect("publish")
    .position
    .expect("a channel with history")
}

pub fn node_config(redis_url: &str, prefix: &str, node_id: &str) -> ws_node::config::Config {
    let mut config = ws_node::config::Config::from_env().expect("config");
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.common.redis_url = redis_url.into();
    config.common.redis_prefix = prefix.to_owned();
    config.node_id = Some(node_id.to_owned());
    config.common.allowed_origins = vec![APP_ORIGIN.to_owned()];
    config
}

pub async fn start_node(config: ws_node::config::Config) -> Node {
    let app = ws_node::Application::build(config).await.expect("ws-node");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let state = app.state().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    // Ready once the Redis subscription is live.
    let mut subscribed = state.subscribed.clone();
    tokio::time::timeout(PATIENCE, subscribed.wait_for(|s| *s))
        .await
        .expect("node subscribed in time")
        .expect("subscriber alive");
    Node {
        addr,
        metrics_addr,
        state,
        stop: Some(stop),
        task: Some(task),
    }
}

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client speaking the JSON protocol.
pub struct Client {
    pub socket: Socket,
    pub protocol: Option<String>,
}

/// What a refused handshake answered.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub code: String,
}

impl Client {
    /// A client over a socket upgraded some other way than [`Client::connect`].
    pub fn over(socket: Socket) -> Self {
        Self {
            socket,
            protocol: None,
        }
    }

    /// Connects with extra request headers; a refused handshake gives its status and error code.
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> Result<Self, Refusal> {
        let mut request = url.into_client_request().expect("request");
        for (name, value) in headers {
            request.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, response)) => Ok(Self {
                socket,
                protocol: response
                    .headers()
                    .get("sec-websocket-protocol")
                    .map(|v| v.to_str().expect("ascii").to_owned()),
            }),
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body: Value = response
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                Err(Refusal {
                    status,
                    code: body["error"]["code"].as_str().unwrap_or("").to_owned(),
                })
            }
            Err(e) => panic!("handshake failed unexpectedly: {e}"),
        }
    }

    pub async fn send(&mut self, frame: Value) {
        self.socket
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }

    /// Sends `frames` in one write: the server finds them all waiting at once.
    pub async fn send_burst(&mut self, frames: &[Value]) {
        for frame in frames {
            self.socket
                .feed(Message::text(frame.to_string()))
                .await
                .expect("feed");
        }
        self.socket.flush().await.expect("flush");
    }

    /// The next JSON frame (pings and pongs skipped); panics on close or timeout.
    pub async fn recv(&mut self) -> Value {
        match self.next_event(PATIENCE).await {
            Event::Frame(v) => v,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next `message` frame, skipping presence events (`join`, `leave`).
    pub async fn recv_message(&mut self) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["type"] != "join" && frame["type"] != "leave" {
                return frame;
            }
        }
    }

    /// Sends a request and returns the reply with the same id (skipping interleaved messages).
    pub async fn request(&mut self, mut frame: Value, id: u64) -> Value {
        frame["id"] = id.into();
        self.send(frame).await;
        loop {
            let reply = self.recv().await;
            if reply["id"] == id {
                return reply;
            }
        }
    }

    pub async fn subscribe(&mut self, channel: &str) {
        let reply = self
            .request(
                json!({ "action": "subscribe", "channel": channel }),
                1_000_000,
            )
            .await;
        assert_eq!(reply["type"], "ack", "{reply}");
    }

    pub async fn next_event(&mut self, wait: Duration) -> Event {
        loop {
            match tokio::time::timeout(wait, self.socket.next()).await {
                Err(_) => return Event::Timeout,
                Ok(None) => return Event::Closed(None),
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Event::Frame(serde_json::from_str(&t).expect("JSON frame"));
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Event::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())));
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => return Event::Error(e.to_string()),
            }
        }
    }

    /// Waits for the server to close the socket; returns the close code.
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            match self.next_event(PATIENCE).await {
                Event::Frame(_) => continue,
                Event::Closed(Some((code, _))) => return code,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }
}

#[derive(Debug)]
#[allow(dead_code)] // Fields are read through `Debug` in assertion messages.
pub enum Event {
    Frame(Value),
    Closed(Option<(u16, String)>),
    Error(String),
    Timeout,
}

/// A ws-node run as a real process (for SIGKILL and SIGTERM), on its own port.
pub struct NodeProcess {
    pub child: std::process::Child,
    pub port: u16,
}

impl NodeProcess {
    pub async fn spawn(stack: &Stack, node_id: &str, env: &[(&str, &str)]) -> Self {
        let port = testkit::free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_ws-node"))
            .env("REDIS_URL", &stack.redis_url)
            .env("REDIS_PREFIX", &stack.prefix)
            .env("WS_LISTEN", format!("127.0.0.1:{port}"))
            .env("NODE_ID", node_id)
            .env("ALLOWED_ORIGINS", APP_ORIGIN)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn ws-node");
        let node = Self { child, port };
        let http = reqwest::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                && r.status() == 200
            {
                return node;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ws-node process did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Client {
    /// Subscribes with `since` and returns the ack.
    pub async fn subscribe_since(&mut self, channel: &str, epoch: &str, offset: u64) -> Value {
        self.request(
            json!({ "action": "subscribe", "channel": channel, "since": { "epoch": epoch, "offset": offset } }),
            2_000_000,
        )
        .await
    }
}

/// Follows one channel's numbered messages (`data.n`) for one client,
/// remembering where it stands so it can resume with `since` after a reconnect.
#[derive(Default, Debug)]
pub struct Sequence {
    pub received: Vec<u64>,
    pub epoch: Option<String>,
    pub offset: u64,
    pub recovery_failures: u32,
    /// Times the client lost its socket and resumed elsewhere with `since`.
    pub reconnects: u32,
}

impl Sequence {
    /// Records a frame; returns true if it was a message.
    pub fn record(&mut self, frame: &Value) -> bool {
        match frame["type"].as_str() {
            Some("message") => {
                self.received
                    .push(frame["data"]["n"].as_u64().expect("numbered message"));
                self.epoch = frame["epoch"].as_str().map(str::to_owned);
                self.offset = frame["offset"].as_u64().expect("offset");
                true
            }
            Some("recovery") => {
                self.recovery_failures += 1;
                false
            }
            _ => false,
        }
    }

    /// Asserts the numbers received are exactly `1..=n`, once each, in order.
    pub fn assert_exactly(&self, n: u64, who: &str) {
        let expected: Vec<u64> = (1..=n).collect();
        if self.received != expected {
            let dups = self.received.windows(2).filter(|w| w[1] <= w[0]).count();
            let missing: Vec<u64> = expected
                .iter()
                .filter(|x| !self.received.contains(x))
                .copied()
                .take(10)
                .collect();
            panic!(
                "{who}: got {} messages for {n}: {dups} out of order/duplicate, missing (first 10) {missing:?}",
                self.received.len()
            );
        }
    }
}

/// The value of an unlabelled metric in a `/metrics` exposition (0 when absent).
pub fn metric(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

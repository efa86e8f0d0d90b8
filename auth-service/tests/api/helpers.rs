//! Spawns a real auth-service (the same `Application` the binary runs) on a
//! free port, against its own Postgres database and its own Redis key prefix.

use auth_service::Application;
use auth_service::accounts::{self, User, Username};
use auth_service::config::Config;
use auth_service::state::AppState;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use shared::scope::Scopes;
use shared::secret::Secret;
use testkit::TestDatabase;

pub const PASSWORD: &str = "correct horse battery staple";
pub const APP_ORIGIN: &str = "https://app.example";

pub struct TestApp {
    pub base_url: String,
    /// Where `/metrics` is served, when `METRICS_LISTEN` set one apart.
    pub metrics_url: Option<String>,
    pub http: reqwest::Client,
    pub state: AppState,
    /// Kept so the database lives as long as the app, and is dropped after it.
    _db: std::sync::Arc<TestDatabase>,
}

/// The configuration tests start from: defaults, a port picked by the OS, a
/// fresh database and prefix, and an allowlisted browser origin.
pub fn test_config(db: &TestDatabase) -> Config {
    let mut config = Config::from_env().expect("default config");
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.database_url = db.url.clone().into();
    config.database_pool_size = 5;
    config.common.redis_url = testkit::shared_redis_url().into();
    config.common.redis_prefix = testkit::unique_prefix();
    config.common.allowed_origins = vec![APP_ORIGIN.to_owned()];
    config.common.cookie_secure = true;
    config
}

pub use testkit::{Backend, on_single_redis_and_cluster};

/// Points `config` at `backend`'s shared Redis (the single one is the default).
pub fn configure(backend: Backend, config: &mut Config) {
    if backend == Backend::Cluster {
        config.common.redis_cluster_urls = testkit::shared_cluster_urls()
            .iter()
            .map(|u| u.as_str().into())
            .collect();
    }
}

impl TestApp {
    /// A test app on `backend`.
    pub async fn spawn_on(backend: Backend) -> Self {
        Self::spawn_on_with(backend, |_| {}).await
    }

    pub async fn spawn_on_with(backend: Backend, customise: impl FnOnce(&mut Config)) -> Self {
        Self::spawn_with(|config| {
            configure(backend, config);
            customise(config);
        })
        .await
    }

    /// A URL on which classic pub/sub reaches this app's control messages:
    /// the single Redis, or any node of the cluster (a cluster copies a
    /// classic message to every node).
    pub fn pubsub_url(&self) -> String {
        let common = &self.state.config.common;
        common
            .redis_cluster_urls
            .first()
            .unwrap_or(&common.redis_url)
            .expose()
            .to_owned()
    }

    /// A new command connection to this app's Redis, single or cluster.
    pub async fn new_redis_connection(&self) -> shared::redis_conn::Redis {
        shared::redis_conn::open(&self.state.config.common.redis_target())
            .await
            .expect("redis")
    }

    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(customise: impl FnOnce(&mut Config)) -> Self {
        let db = std::sync::Arc::new(TestDatabase::new());
        let mut config = test_config(&db);
        customise(&mut config);
        Self::spawn_config(config, db, std::future::pending())
            .await
            .0
    }

    /// Like [`Self::spawn_with`], but the server is asked to stop when the
    /// sender is used (or dropped); the handle yields how it stopped.
    pub async fn spawn_stoppable(
        customise: impl FnOnce(&mut Config),
    ) -> (
        Self,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let db = std::sync::Arc::new(TestDatabase::new());
        let mut config = test_config(&db);
        customise(&mut config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (app, server) = Self::spawn_config(config, db, async move {
            let _ = stopped.await;
        })
        .await;
        (app, stop, server)
    }

    /// A second process of the same deployment (same database and Redis prefix).
    pub async fn spawn_sibling(&self) -> Self {
        let mut config = (*self.state.config).clone();
        config.listen = "127.0.0.1:0".parse().expect("addr");
        Self::spawn_config(config, self._db.clone(), std::future::pending())
            .await
            .0
    }

    async fn spawn_config(
        config: Config,
        db: std::sync::Arc<TestDatabase>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> (Self, tokio::task::JoinHandle<anyhow::Result<()>>) {
        shared::telemetry::init(shared::telemetry::LogFormat::Pretty, "warn");
        let app = Application::build(config).await.expect("app builds");
        let base_url = format!("http://{}", app.local_addr());
        let metrics_url = app.metrics_addr().map(|a| format!("http://{a}/metrics"));
        let state = app.state().clone();
        let server = tokio::spawn(app.run_until_stopped(shutdown));
        let app = Self {
            base_url,
            metrics_url,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            state,
            _db: db,
        };
        (app, server)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    pub fn redis(&self) -> shared::redis_conn::Redis {
        self.state.redis.clone()
    }

    /// Creates a user directly (as the CLI does) who may self-issue connect and publish keys.
    pub async fn create_user(&self, name: &str) -> User {
        accounts::create_user(
            &self.state.db,
            &self.state.passwords,
            &Username::parse(name).expect("valid name"),
            &Secret::new(PASSWORD.to_owned()),
            Scopes::parse_list("connect,publish").expect("scopes"),
        )
        .await
        .expect("user created")
    }

    pub async fn login(&self, username: &str, password: &str) -> Response {
        self.http
            .post(self.url("/v1/login"))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .expect("request")
    }

    /// Logs in from another client address: the request's socket is bound to
    /// `source` (a loopback address such as `127.0.0.2`).
    pub async fn login_from(&self, source: &str, username: &str, password: &str) -> Response {
        reqwest::Client::builder()
            .local_address(source.parse::<std::net::IpAddr>().expect("address"))
            .build()
            .expect("client")
            .post(self.url("/v1/login"))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .expect("request")
    }

    /// Logs in and returns the `Cookie` header value that carries the session.
    pub async fn login_cookie(&self, username: &str) -> String {
        let response = self.login(username, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK);
        cookie_pair(&response)
    }

    /// Issues an API key through the library (as the CLI does).
    pub async fn api_key(&self, user: &User, scopes: &str) -> String {
        let (key, _) = auth_service::api_keys::create(
            &self.state.db,
            user.id,
            "test",
            Scopes::parse_list(scopes).expect("scopes"),
        )
        .await
        .expect("key created");
        key.into_exposed()
    }

    pub async fn get_with_cookie(&self, path: &str, cookie: &str) -> Response {
        self.http
            .get(self.url(path))
            .header("cookie", cookie)
            .send()
            .await
            .expect("request")
    }

    pub async fn mint_with_key(&self, key: &str) -> Response {
        self.http
            .post(self.url("/v1/tickets"))
            .bearer_auth(key)
            .send()
            .await
            .expect("request")
    }

    pub async fn mint_with_cookie(&self, cookie: &str) -> Response {
        self.http
            .post(self.url("/v1/tickets"))
            .header("cookie", cookie)
            .header("origin", APP_ORIGIN)
            .header("sec-fetch-site", "same-site")
            .send()
            .await
            .expect("request")
    }

    /// Consumes a ticket exactly as ws-node does.
    pub async fn consume(&self, ticket: &str) -> Option<shared::ticket::TicketClaims> {
        shared::ticket::consume_ticket(&mut self.redis(), &self.state.keys, ticket)
            .await
            .expect("redis")
    }
}

/// The `name=value` part of the response's session `Set-Cookie`.
pub fn cookie_pair(response: &Response) -> String {
    let header = set_cookie(response).expect("a Set-Cookie header");
    header.split(';').next().expect("pair").trim().to_owned()
}

pub fn set_cookie(response: &Response) -> Option<String> {
    response
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().expect("ascii").to_owned())
}

/// Asserts the standard error body and returns its code.
pub async fn error_code(response: Response, status: StatusCode) -> String {
    assert_eq!(response.status(), status, "unexpected status");
    let body: Value = response.json().await.expect("JSON error body");
    let code = body["error"]["code"]
        .as_str()
        .expect("error.code")
        .to_owned();
    assert!(
        body["error"]["message"].is_string(),
        "error.message in {body}"
    );
    code
}

/// The ticket from a successful mint response.
pub async fn ticket_of(response: Response) -> String {
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.expect("JSON");
    body["ticket"].as_str().expect("ticket").to_owned()
}

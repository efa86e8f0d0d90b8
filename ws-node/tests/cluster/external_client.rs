//! A client nobody here wrote (Python `websockets`, driven by the example in
//! clients/python) goes through the public API end to end: API key → ticket →
//! WebSocket → subscribe → a server-published message; and when its node
//! goes away, it reconnects with a fresh ticket and resumes where it was.

use crate::helpers::*;
use serde_json::{Value, json};
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The repository root, with the Python client's environment set up.
fn python_client_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let setup = Command::new("bash")
        .arg(root.join("scripts/ensure-python-client.sh"))
        .status()
        .expect("run setup");
    assert!(
        setup.success(),
        "could not set up the Python client environment"
    );
    root
}

/// The JSON lines a child process prints, as they come.
struct Lines(tokio::sync::mpsc::UnboundedReceiver<String>);

impl Lines {
    fn of(child: &mut Child) -> Self {
        let stdout = child.stdout.take().expect("stdout");
        let (lines_tx, lines_rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        Self(lines_rx)
    }

    async fn next(&mut self, wait: Duration) -> Value {
        let line = tokio::time::timeout(wait, self.0.recv())
            .await
            .expect("a line in time")
            .expect("the client is still running");
        serde_json::from_str(&line).expect("a JSON line")
    }
}

#[tokio::test]
async fn python_websockets_client_receives_a_server_published_message() {
    let root = python_client_root();
    let stack = Stack::start(2).await;
    let client_user = stack.create_user("pyclient").await;
    let backend = stack.create_user("backend").await;
    let connect_key = stack.api_key(&client_user, "connect").await;
    let publish_key = stack.api_key(&backend, "publish_any").await;

    let mut child = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("clients/python/example_client.py"))
        .args([
            "--auth",
            &stack.auth_url,
            "--key",
            &connect_key,
            "--channel",
            "broadcast:news",
        ])
        .args([
            "--ws",
            &stack.nodes[1].ws_url(),
            "--count",
            "1",
            "--timeout",
            "10",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python client");
    let mut lines = Lines::of(&mut child);
    let first = lines.next(Duration::from_secs(20)).await;
    assert_eq!(first["type"], "subscribed");

    // Published through auth-service, delivered by the other node's subscriber.
    stack
        .server_publish(
            &publish_key,
            "broadcast:news",
            json!({ "headline": "it works" }),
        )
        .await;
    let message = lines.next(Duration::from_secs(10)).await;
    assert_eq!(message["type"], "message");
    assert_eq!(message["channel"], "broadcast:news");
    assert_eq!(message["data"], json!({ "headline": "it works" }));
    assert!(child.wait().expect("exit").success());
}

#[tokio::test]
async fn python_client_reconnects_with_a_fresh_ticket_and_misses_nothing() {
    let root = python_client_root();
    let mut stack = Stack::start(1).await;
    let client_user = stack.create_user("pyresume").await;
    let backend = stack.create_user("backend").await;
    let connect_key = stack.api_key(&client_user, "connect").await;
    let publish_key = stack.api_key(&backend, "publish_any").await;
    let addr = stack.nodes[0].addr;
    let mut child = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("clients/python/example_client.py"))
        .args(["--auth", &stack.auth_url, "--key", &connect_key])
        .args(["--channel", "broadcast:resume", "--count", "3"])
        .args(["--ws", &stack.nodes[0].ws_url()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python client");
    let mut lines = Lines::of(&mut child);
    assert_eq!(
        lines.next(Duration::from_secs(20)).await["type"],
        "subscribed"
    );
    stack
        .server_publish(&publish_key, "broadcast:resume", json!(1))
        .await;
    assert_eq!(lines.next(PATIENCE).await["data"], 1);

    // The node drains (1001) and is gone; what is published meanwhile waits
    // in history. A node comes back at the same address.
    stack.nodes[0].stop().await;
    stack
        .server_publish(&publish_key, "broadcast:resume", json!(2))
        .await;
    let mut config = node_config(&stack.redis_url, &stack.prefix, "node-back");
    config.listen = addr;
    stack.nodes[0] = start_node(config).await;

    // Its first ticket was consumed: getting in again took a fresh one. The
    // resubscription with `since` replays what was missed, once.
    let resubscribed = lines.next(Duration::from_secs(30)).await;
    assert_eq!(resubscribed["type"], "subscribed");
    assert_eq!(resubscribed["recovered"], true);
    assert_eq!(lines.next(PATIENCE).await["data"], 2);
    stack
        .server_publish(&publish_key, "broadcast:resume", json!(3))
        .await;
    assert_eq!(lines.next(PATIENCE).await["data"], 3);
    assert!(child.wait().expect("exit").success());
}

//! A client nobody here wrote (Python `websockets`, driven by the example in
//! clients/python) goes through the public API end to end: API key → ticket →
//! WebSocket → subscribe → a server-published message.

use crate::helpers::*;
use serde_json::{Value, json};
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[tokio::test]
async fn python_websockets_client_receives_a_server_published_message() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let setup = Command::new("bash")
        .arg(root.join("scripts/ensure-python-client.sh"))
        .status()
        .expect("run setup");
    assert!(
        setup.success(),
        "could not set up the Python client environment"
    );

    let stack = Stack::start(2).await;
    let client_user = stack.create_user("pyclient").await;
    let backend = stack.create_user("backend").await;
    let connect_key = stack.api_key(&client_user, "connect").await;
    let publish_key = stack.api_key(&backend, "publish").await;

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
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let first: Value = serde_json::from_str(
        &tokio::time::timeout(std::time::Duration::from_secs(20), lines_rx.recv())
            .await
            .expect("client subscribed in time")
            .expect("a line"),
    )
    .expect("json");
    assert_eq!(first["type"], "subscribed");

    // Published through auth-service, delivered by the other node's subscriber.
    stack
        .server_publish(
            &publish_key,
            "broadcast:news",
            json!({ "headline": "it works" }),
        )
        .await;
    let message: Value = serde_json::from_str(
        &tokio::time::timeout(std::time::Duration::from_secs(10), lines_rx.recv())
            .await
            .expect("message in time")
            .expect("a line"),
    )
    .expect("json");
    assert_eq!(message["type"], "message");
    assert_eq!(message["channel"], "broadcast:news");
    assert_eq!(message["data"], json!({ "headline": "it works" }));
    assert!(child.wait().expect("exit").success());
}

//! Clients that stop reading (docs/PROTOCOL.md §7, `WRITE_TIMEOUT_MS`): they
//! are dropped once a write to them outlasts its deadline, memory they made
//! the node hold is given back, and while a write to one of them is blocked
//! the node's heartbeat, credential expiry and drain carry on.
//!
//! Such a client is a real socket with a small receive buffer that reads its
//! `ack` and then nothing more, in the middle of the replay of a history of
//! large messages: the node's writes soon find the socket's buffers full.

use crate::helpers::*;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use shared::channel::ChannelName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

/// The channel whose history the stalled readers are replayed.
const ARCHIVE: &str = "broadcast:archive";
/// Its history: this many messages of [`LARGE`] bytes, far more than socket
/// buffers hold.
const MESSAGES: u64 = 200;
const LARGE: usize = 32 * 1024;

/// Publishes [`MESSAGES`] messages of [`LARGE`] bytes on [`ARCHIVE`].
async fn publish_archive(node: &ws_node::state::NodeState) {
    let channel: ChannelName = ARCHIVE.parse().expect("channel");
    let history = node.namespaces.rule_for(&channel).and_then(|r| r.history);
    let data = serde_json::to_string(&"x".repeat(LARGE)).expect("json");
    let data = serde_json::value::RawValue::from_string(data).expect("raw");
    let mut redis = node.redis.clone();
    for _ in 0..MESSAGES {
        shared::channel::publish(
            &mut redis,
            &node.keys,
            &channel,
            &data,
            history,
            &crate::helpers::test_publisher(),
            None,
        )
        .await
        .expect("publish");
    }
}

type RawSocket = WebSocketStream<TcpStream>;

/// Opens a WebSocket to `addr` (query and headers as given) over a socket
/// with a small receive buffer; returns after the `welcome`.
async fn connect_small(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> RawSocket {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("receive buffer");
    let stream = socket.connect(addr).await.expect("connect");
    let mut request = format!("ws://{addr}/ws{query}")
        .into_client_request()
        .expect("request");
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    let (mut socket, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("handshake");
    assert_eq!(next_json(&mut socket).await["type"], "welcome");
    socket
}

/// The next text frame as JSON (pings skipped; tungstenite answers them).
async fn next_json(socket: &mut RawSocket) -> Value {
    loop {
        match tokio::time::timeout(PATIENCE, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                return serde_json::from_str(&text).expect("JSON frame");
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}

/// Asks for [`ARCHIVE`]'s whole history and reads up to the `ack`: the
/// replay is then under way, and the caller stops reading.
async fn stall_mid_replay(socket: &mut RawSocket) {
    let subscribe = json!({ "action": "subscribe", "id": 1, "channel": ARCHIVE,
        "since": { "epoch": "", "offset": 0 } });
    socket
        .send(Message::text(subscribe.to_string()))
        .await
        .expect("send");
    let ack = next_json(socket).await;
    assert_eq!(
        (&ack["type"], &ack["recovered"]),
        (&json!("ack"), &json!(true)),
        "{ack}"
    );
}

/// Reads what the node had sent until the socket ends; panics if it does
/// not end within `patience` (the node did not let go of it).
async fn expect_dropped(socket: &mut RawSocket, patience: Duration) {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => panic!("the node kept a stalled socket open"),
            Ok(None | Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return,
            Ok(Some(Ok(_))) => {}
        }
    }
}

async fn scrape(http: &reqwest::Client, port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let response = http.get(url).send().await.expect("scrape");
    response.text().await.expect("text")
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

const MIB: u64 = 1024 * 1024;

#[tokio::test]
async fn readers_that_stall_mid_replay_are_dropped_and_their_memory_given_back() {
    const STALLED: usize = 50;
    let stack = Stack::start(1).await;
    publish_archive(&stack.nodes[0].state).await;
    let user = stack.create_user("sloth").await;
    let key = stack.api_key(&user, "connect").await;
    // The node under test is a process of its own, so its memory is its own.
    // jemalloc gives freed pages back to the system on its own schedule (when
    // the arena that holds them is next used); a background thread and a
    // short decay make that prompt, so what stays resident is what the node
    // still holds.
    let node = NodeProcess::spawn(
        &stack,
        "node-stalled",
        &[
            ("WRITE_TIMEOUT_MS", "2000"),
            (
                "_RJEM_MALLOC_CONF",
                "background_thread:true,dirty_decay_ms:500",
            ),
        ],
    )
    .await;
    let pid = node.child.id();
    let addr: SocketAddr = ([127, 0, 0, 1], node.port).into();
    let open = |exposition: &str| metric(exposition, "ws_connections");

    // One client that reads the whole replay first: the node's runtime and
    // allocator have then done the work once, and the baseline is after it.
    let ticket = stack.ticket(&key).await;
    let mut reader = connect_small(addr, &format!("?ticket={ticket}"), &[]).await;
    stall_mid_replay(&mut reader).await;
    let mut replayed = 0;
    while replayed < MESSAGES {
        if next_json(&mut reader).await["type"] == "message" {
            replayed += 1;
        }
    }
    drop(reader);
    let settled = Instant::now();
    while open(&scrape(&stack.http, node.port).await) > 0.0 {
        assert!(settled.elapsed() < PATIENCE, "the reader's socket was kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = rss(pid);

    // The node's resident memory, sampled until the stalled readers are gone.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let sampling = sampling.clone();
        async move {
            let mut peak = 0;
            while sampling.load(Ordering::Relaxed) {
                peak = rss(pid).max(peak);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        }
    });
    let mut tickets = Vec::new();
    for _ in 0..STALLED {
        tickets.push(stack.ticket(&key).await);
    }
    // All at once, so that they stall together.
    let mut stalled = futures_util::future::join_all(tickets.iter().map(|ticket| async move {
        let mut socket = connect_small(addr, &format!("?ticket={ticket}"), &[]).await;
        stall_mid_replay(&mut socket).await;
        socket
    }))
    .await;
    // Each is dropped once a write to it has waited WRITE_TIMEOUT_MS (2 s);
    // the bound is generous for a slow machine, far below "never".
    let started = Instant::now();
    while open(&scrape(&stack.http, node.port).await) > 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "stalled readers still open after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sampling.store(false, Ordering::Relaxed);
    let peak = sampler.await.expect("sampler");
    let exposition = scrape(&stack.http, node.port).await;
    assert_eq!(
        metric(&exposition, "ws_write_timeouts_total"),
        STALLED as f64
    );
    for socket in &mut stalled {
        expect_dropped(socket, PATIENCE).await;
    }
    // Held meanwhile: a page of a replay and a write buffer per reader at
    // most, not the rest of the replay.
    eprintln!(
        "RSS: baseline {} MiB, peak {} MiB",
        baseline / MIB,
        peak / MIB
    );
    assert!(
        peak < baseline + STALLED as u64 * 2 * MIB,
        "RSS rose from {} to {} MiB with {STALLED} stalled readers",
        baseline / MIB,
        peak / MIB
    );
    let tolerance = 16 * MIB;
    let released = Instant::now();
    while rss(pid) > baseline + tolerance {
        assert!(
            released.elapsed() < Duration::from_secs(15),
            "RSS stays at {} MiB after the stalled readers went (baseline {} MiB)",
            rss(pid) / MIB,
            baseline / MIB
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens a socket with a small receive buffer to `node` with a fresh ticket
/// of `key`, and stalls it mid-replay.
async fn stalled_reader(stack: &Stack, key: &str) -> RawSocket {
    let ticket = stack.ticket(key).await;
    let mut socket = connect_small(stack.nodes[0].addr, &format!("?ticket={ticket}"), &[]).await;
    stall_mid_replay(&mut socket).await;
    socket
}

#[tokio::test]
async fn a_blocked_write_holds_up_neither_the_heartbeat_nor_the_drain() {
    let mut stack = Stack::start_with(StackOptions {
        nodes: 1,
        customise_node: Box::new(|c| {
            // Long enough that the write below stays blocked throughout.
            c.write_timeout_ms = 60_000;
            c.ping_interval_secs = 1;
            c.idle_timeout_secs = 1;
            c.drain_timeout_secs = 30;
        }),
        ..StackOptions::default()
    })
    .await;
    publish_archive(&stack.nodes[0].state).await;
    let user = stack.create_user("stuck").await;
    let key = stack.api_key(&user, "connect").await;
    let node = stack.nodes[0].state.clone();
    let _stalled = stalled_reader(&stack, &key).await;
    // A peer that answers nothing, and one that answers pings.
    let _silent = stack.connect(0, &key).await;
    let mut live = stack.connect(0, &key).await;
    assert_eq!(node.hub.connection_count(), 3);

    // The silent peer is pinged and reaped; the live one is pinged.
    let started = Instant::now();
    let mut pinged = false;
    while node.hub.connection_count() > 2 || !pinged {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the silent peer was not reaped, or the live one not pinged"
        );
        if let Ok(Some(Ok(Message::Ping(_)))) =
            tokio::time::timeout(Duration::from_millis(100), live.socket.next()).await
        {
            pinged = true;
        }
    }
    // The stalled reader is still there: its write waits (until its deadline).
    assert_eq!(node.hub.connection_count(), 2);
    let ack = live.request(json!({ "action": "ping" }), 7).await;
    assert_eq!(ack["type"], "ack");

    // The drain closes every socket, the blocked one too, long before
    // either timeout.
    let started = Instant::now();
    stack.nodes[0].stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the drain took {:?}",
        started.elapsed()
    );
    assert_eq!(node.hub.connection_count(), 0);
}

#[tokio::test]
async fn a_credential_ends_on_time_while_a_write_is_blocked() {
    let stack = Stack::start_with(StackOptions {
        nodes: 1,
        customise_node: Box::new(|c| c.write_timeout_ms = 60_000),
        customise_auth: Box::new(|c| {
            c.session_absolute_timeout_secs = 3;
            c.session_idle_timeout_secs = 3;
        }),
        ..StackOptions::default()
    })
    .await;
    publish_archive(&stack.nodes[0].state).await;
    stack.create_user("brief").await;
    let cookie = stack.login("brief").await;
    let headers = [("cookie", cookie.as_str()), ("origin", APP_ORIGIN)];
    let mut socket = connect_small(stack.nodes[0].addr, "", &headers).await;
    let logged_in = Instant::now();
    stall_mid_replay(&mut socket).await;
    let node = stack.nodes[0].state.clone();
    while node.hub.connection_count() > 0 {
        assert!(
            logged_in.elapsed() < Duration::from_secs(15),
            "a connection outlived its session by {:?} while a write to it was blocked",
            logged_in.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    expect_dropped(&mut socket, PATIENCE).await;
}

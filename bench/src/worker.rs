//! Client worker processes: how the bench gets past the 20 000 open files one
//! process may hold. A worker is this binary run as `tessera-bench worker
//! --job <json>`; it opens its share of connections from its own 127.0.0.x
//! source address and talks to the parent in JSON lines:
//!
//! ```text
//! worker → parent   {"event":"started"}                   runtime and HTTP client up
//! parent → worker   {"cmd":"go"}                          all workers started: connect now
//! worker → parent   {"event":"ready", ...}                every connection open (and subscribed)
//! parent → worker   {"cmd":"finish",...} | {"cmd":"close"} wait for the last deliveries | just stop
//! worker → parent   {"event":"result", ...}               figures; then the worker exits
//! ```
//!
//! The "go" step lines all workers up, so a rate computed over all of them
//! does not count process start-up. A worker exits by itself when its stdin
//! closes (the parent died) or its deadline passes, so none outlives a run.

use crate::client::{self, Ws};
use crate::hist::{self, Hist, Wire};
use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

/// One handshake (mint, connect, upgrade, welcome, subscribe) may take this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// Errors kept verbatim for the report (the rest are only counted).
const ERROR_SAMPLES: usize = 5;

/// A worker's assignment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub auth_url: String,
    /// API keys used round-robin to mint tickets.
    pub api_keys: Vec<String>,
    /// Every socket of this worker is bound to this address.
    pub source_ip: IpAddr,
    /// How many connections to open on which node.
    pub targets: Vec<Target>,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// What each connection subscribes to after `welcome`, if anything.
    pub rooms: Option<Rooms>,
    /// Messages each connection will be sent (sequence numbers `0..messages`
    /// in its channel); 0 if none.
    pub messages: u64,
    /// Mint each ticket at the node the connection goes to (`http://<node>`)
    /// instead of `auth_url`: each reference server keeps its own tickets.
    pub mint_at_node: bool,
    /// Mint every ticket before reporting `started`, so that the timed part
    /// of a handshake is connect + upgrade + `welcome` only.
    pub premint: bool,
    /// The worker exits after this many seconds whatever happens.
    pub deadline_secs: u64,
}

/// The channels a scenario's connections subscribe to: `count` rooms, and
/// the connection with index `g` over all workers joins room `g % count`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rooms {
    /// The channel's name, or with several rooms the prefix of theirs
    /// (`<name>-<room>`).
    pub name: String,
    pub count: usize,
    /// The index, over all workers, of this worker's first connection.
    pub first: usize,
    /// Put each room's members on one node, `targets[room % targets]`:
    /// reference servers in separate processes share no rooms.
    pub pinned: bool,
}

impl Rooms {
    /// The channel of `room`.
    pub fn channel(&self, room: usize) -> String {
        if self.count <= 1 {
            self.name.clone()
        } else {
            format!("{}-{room}", self.name)
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Target {
    pub node: SocketAddr,
    pub count: usize,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    Go,
    /// The publisher is done and `expected` messages were accepted: wait until
    /// every connection has them all, or until nothing arrived for `quiet_ms`.
    Finish {
        expected: u64,
        quiet_ms: u64,
    },
    Close,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Started,
    Ready(Ready),
    Result(Outcome),
}

/// The connection phase, as the worker saw it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ready {
    pub connected: usize,
    pub failed: usize,
    pub errors: Vec<String>,
    /// Per connection: mint + TCP connect + upgrade + welcome.
    pub handshake: Wire,
    pub started_ns: u64,
    pub finished_ns: u64,
}

/// What the connections received, once stopped.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub connections: usize,
    /// `message` frames received (duplicates included).
    pub deliveries: u64,
    /// Sum over connections of the expected messages each did not receive.
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub latency: Wire,
    pub first_delivery_ns: u64,
    pub last_delivery_ns: u64,
    /// Connections that ended before the worker was told to stop, by how they ended.
    pub dropped: BTreeMap<String, usize>,
    /// The worker's CPU time since it started, in clock ticks, read last.
    pub cpu_ticks: u64,
}

/// Entry point of `tessera-bench worker`.
pub fn main(job: &str) -> anyhow::Result<()> {
    let job: Job = serde_json::from_str(job).context("parsing the job")?;
    // Sockets are files: use everything the hard limit allows.
    rlimit::increase_nofile_limit(u64::MAX).context("raising the open-file limit")?;
    // One thread per worker: the parallelism comes from processes, and a
    // single thread needs no synchronisation between connection tasks.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deadline = Duration::from_secs(job.deadline_secs);
    let result = runtime.block_on(async {
        match tokio::time::timeout(deadline, run(job)).await {
            Ok(result) => result,
            Err(_) => bail!("deadline of {deadline:?} passed"),
        }
    });
    // The stdin reader sits in a blocking read that only the parent can end;
    // an ordinary runtime drop would wait for it forever.
    runtime.shutdown_background();
    result
}

fn emit(event: &Event) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, event)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Forwards the parent's commands; exits the process when stdin closes.
async fn read_commands(tx: mpsc::UnboundedSender<Command>) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => match serde_json::from_str(&line) {
                Ok(command) => {
                    let _ = tx.send(command);
                }
                Err(e) => crate::say(format!("worker: bad command {line:?}: {e}")),
            },
            // The parent is gone: nobody will read our results.
            Ok(None) | Err(_) => std::process::exit(3),
        }
    }
}

/// State the connection tasks share.
struct Shared {
    latency: Mutex<Hist>,
    /// Connections that have received every message.
    complete: AtomicUsize,
    first_delivery_ns: AtomicU64,
    last_delivery_ns: AtomicU64,
    messages: u64,
}

async fn run(job: Job) -> anyhow::Result<()> {
    let (tx, mut commands) = mpsc::unbounded_channel();
    tokio::spawn(read_commands(tx));
    let minters = Minters::new(&job).await?;
    prefault_heap(job.targets.iter().map(|t| t.count).sum());

    let shared = Arc::new(Shared {
        latency: Mutex::new(hist::new()),
        complete: AtomicUsize::new(0),
        first_delivery_ns: AtomicU64::new(u64::MAX),
        last_delivery_ns: AtomicU64::new(0),
        messages: job.messages,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let job = Arc::new(job);

    let plan = connection_plan(&job);
    let tickets = if job.premint {
        premint(&job, &minters, &plan).await?
    } else {
        Vec::new()
    };
    emit(&Event::Started)?;
    match commands.recv().await {
        Some(Command::Go) => {}
        other => bail!("expected go, got {other:?}"),
    }

    let started_ns = client::unix_nanos();
    let attempts: Vec<_> = futures_util::stream::iter(plan.into_iter().enumerate())
        .map(|(i, (node, room))| {
            let (job, minters, shared, stop) =
                (job.clone(), &minters, shared.clone(), stop_rx.clone());
            let ticket = tickets.get(i).cloned();
            async move {
                let began = Instant::now();
                let opened = tokio::time::timeout(
                    HANDSHAKE_TIMEOUT,
                    open(&job, minters, i, node, room, ticket),
                )
                .await;
                match opened {
                    Ok(Ok((ws, handshake))) => {
                        let task = tokio::spawn(serve(ws, shared, stop));
                        Ok((task, handshake))
                    }
                    Ok(Err(e)) => Err(format!("{e:#}")),
                    Err(_) => Err(format!("handshake timed out after {:?}", began.elapsed())),
                }
            }
        })
        .buffer_unordered(job.concurrency.max(1))
        .collect()
        .await;
    let finished_ns = client::unix_nanos();

    let mut handshakes = hist::new();
    let mut tasks = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut failed = 0;
    for attempt in attempts {
        match attempt {
            Ok((task, took)) => {
                hist::record_ns(
                    &mut handshakes,
                    u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
                );
                tasks.push(task);
            }
            Err(e) => {
                failed += 1;
                if errors.len() < ERROR_SAMPLES && !errors.contains(&e) {
                    errors.push(e);
                }
            }
        }
    }
    let connected = tasks.len();
    emit(&Event::Ready(Ready {
        connected,
        failed,
        errors,
        handshake: hist::to_wire(&handshakes),
        started_ns,
        finished_ns,
    }))?;

    let expected = match commands.recv().await {
        Some(Command::Finish { expected, quiet_ms }) => {
            let told = client::unix_nanos();
            let quiet_ns = quiet_ms * 1_000_000;
            loop {
                let last = shared.last_delivery_ns.load(Ordering::Relaxed).max(told);
                if shared.complete.load(Ordering::Relaxed) >= connected
                    || client::unix_nanos().saturating_sub(last) > quiet_ns
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            expected
        }
        Some(Command::Close) => 0,
        other => bail!("expected finish or close, got {other:?}"),
    };
    stop_tx.send_replace(true);

    let mut outcome = Outcome {
        connections: connected,
        ..Outcome::default()
    };
    for task in tasks {
        let stats = task.await.context("a connection task panicked")?;
        outcome.deliveries += stats.deliveries;
        outcome.duplicates += stats.duplicates;
        outcome.out_of_order += stats.out_of_order;
        outcome.lost += expected.saturating_sub(stats.distinct);
        if let Some(how) = stats.ended {
            *outcome.dropped.entry(how).or_default() += 1;
        }
    }
    outcome.latency = hist::to_wire(&shared.latency.lock().unwrap_or_else(|e| e.into_inner()));
    outcome.first_delivery_ns = match shared.first_delivery_ns.load(Ordering::Relaxed) {
        u64::MAX => 0,
        ns => ns,
    };
    outcome.last_delivery_ns = shared.last_delivery_ns.load(Ordering::Relaxed);
    outcome.cpu_ticks = crate::proc::cpu_ticks(std::process::id()).unwrap_or(0);
    emit(&Event::Result(outcome))
}

/// Heap a worker's connection uses, rounded up from what a worker was seen to
/// use (see [`prefault_heap`]).
const HEAP_PER_CONNECTION: usize = 8 * 1024;

/// Touches, then frees, the heap `connections` will need, before the worker
/// reports `started`. Otherwise the kernel zeroes those pages on first touch
/// during the measured window, 2 MiB at a time with transparent huge pages:
/// `perf` showed it taking a visible share of the machine's CPU in the
/// handshake scenario, from the servers the load generator shares it with.
/// mimalloc keeps the freed pages for reuse because the parent starts workers
/// with `MIMALLOC_PURGE_DELAY=-1` (never hand memory back to the OS).
fn prefault_heap(connections: usize) {
    const BLOCK: usize = 1024;
    let blocks: Vec<Box<[u8]>> = (0..connections * HEAP_PER_CONNECTION / BLOCK)
        .map(|_| vec![1u8; BLOCK].into_boxed_slice())
        .collect();
    std::hint::black_box(&blocks);
}

/// Where tickets are minted: auth-service, or each node itself.
struct Minters {
    by_node: HashMap<SocketAddr, client::Minter>,
    auth: Option<client::Minter>,
}

impl Minters {
    async fn new(job: &Job) -> anyhow::Result<Self> {
        let mut by_node = HashMap::new();
        if job.mint_at_node {
            for t in &job.targets {
                by_node.insert(
                    t.node,
                    client::Minter::new(&format!("http://{}", t.node)).await?,
                );
            }
        }
        let auth = if job.mint_at_node {
            None
        } else {
            Some(client::Minter::new(&job.auth_url).await?)
        };
        Ok(Self { by_node, auth })
    }

    /// A ticket for a connection to `node`, with the `i`-th connection's key.
    async fn mint(&self, job: &Job, i: usize, node: SocketAddr) -> anyhow::Result<String> {
        let key = &job.api_keys[i % job.api_keys.len()];
        let minter = match &self.auth {
            Some(auth) => auth,
            None => self.by_node.get(&node).context("no minter for the node")?,
        };
        minter.mint(key).await
    }
}

/// Each connection's node and room, in the order they are opened. Unpinned,
/// the nodes alternate so every node takes load from the start.
fn connection_plan(job: &Job) -> Vec<(SocketAddr, Option<usize>)> {
    let total: usize = job.targets.iter().map(|t| t.count).sum();
    let room = |i: usize| job.rooms.as_ref().map(|r| (r.first + i) % r.count.max(1));
    if let Some(rooms) = job
        .rooms
        .as_ref()
        .filter(|r| r.pinned && !job.targets.is_empty())
    {
        return (0..total)
            .map(|i| {
                let room = (rooms.first + i) % rooms.count.max(1);
                (job.targets[room % job.targets.len()].node, Some(room))
            })
            .collect();
    }
    let mut nodes = Vec::with_capacity(total);
    let most = job.targets.iter().map(|t| t.count).max().unwrap_or(0);
    for round in 0..most {
        nodes.extend(
            job.targets
                .iter()
                .filter(|t| round < t.count)
                .map(|t| t.node),
        );
    }
    nodes
        .into_iter()
        .enumerate()
        .map(|(i, node)| (node, room(i)))
        .collect()
}

/// A ticket for every connection of `plan`, in its order.
async fn premint(
    job: &Job,
    minters: &Minters,
    plan: &[(SocketAddr, Option<usize>)],
) -> anyhow::Result<Vec<String>> {
    futures_util::stream::iter(plan.iter().enumerate())
        .map(|(i, &(node, _))| minters.mint(job, i, node))
        .buffered(job.concurrency.clamp(1, 32))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// One connection: mint a ticket (unless given one), connect, read
/// `welcome`, maybe subscribe. Returns the handshake time (the subscription
/// is not part of it).
async fn open(
    job: &Job,
    minters: &Minters,
    i: usize,
    node: SocketAddr,
    room: Option<usize>,
    ticket: Option<String>,
) -> anyhow::Result<(Ws, Duration)> {
    let began = Instant::now();
    let ticket = match ticket {
        Some(ticket) => ticket,
        None => minters.mint(job, i, node).await?,
    };
    let mut ws = client::connect(node, &ticket, job.source_ip).await?;
    client::expect_welcome(&mut ws).await?;
    let took = began.elapsed();
    if let (Some(rooms), Some(room)) = (&job.rooms, room) {
        client::subscribe(&mut ws, &rooms.channel(room), 1).await?;
    }
    Ok((ws, took))
}

/// What one connection saw.
struct ConnStats {
    deliveries: u64,
    distinct: u64,
    duplicates: u64,
    out_of_order: u64,
    /// How the connection ended, if it did before being stopped.
    ended: Option<String>,
}

/// A set of sequence numbers `0..len`.
struct Seen {
    words: Vec<u64>,
    len: u64,
}

impl Seen {
    fn new(len: u64) -> Self {
        Self {
            words: vec![0; usize::try_from(len.div_ceil(64)).unwrap_or(0)],
            len,
        }
    }

    /// Marks `seq`; false if it was already marked or is out of range.
    fn insert(&mut self, seq: u64) -> bool {
        if seq >= self.len {
            return false;
        }
        let (Ok(word), bit) = (usize::try_from(seq / 64), seq % 64) else {
            return false;
        };
        match self.words.get_mut(word) {
            Some(w) if *w & (1 << bit) == 0 => {
                *w |= 1 << bit;
                true
            }
            _ => false,
        }
    }
}

/// Reads a connection until told to stop (answering pings on the way, which
/// tungstenite does while reading); counts and times deliveries.
async fn serve(mut ws: Ws, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) -> ConnStats {
    let mut seen = Seen::new(shared.messages);
    let mut last_seq: Option<u64> = None;
    let mut stats = ConnStats {
        deliveries: 0,
        distinct: 0,
        duplicates: 0,
        out_of_order: 0,
        ended: None,
    };
    // This loop runs once per delivery for thousands of sockets, so it keeps
    // its bookkeeping local and touches what the worker's connections share
    // (histogram lock, first/last atomics) in batches: per-message lock and
    // cache-line traffic made the load generator take CPU from the servers.
    let mut latencies: Vec<u64> = Vec::new();
    let mut last_delivery = 0u64;
    let mut last_shared = 0u64;
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        let message = tokio::select! {
            _ = &mut stopped => break,
            message = ws.next() => message,
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                let Some(data) = client::parse_delivery(text.as_str()) else {
                    continue;
                };
                let now = client::unix_nanos();
                if stats.deliveries == 0 {
                    shared.first_delivery_ns.fetch_min(now, Ordering::Relaxed);
                }
                stats.deliveries += 1;
                last_delivery = now;
                // The quiet-period check reads this while deliveries still
                // arrive; a millisecond of staleness does not matter to it.
                if now.saturating_sub(last_shared) > 1_000_000 {
                    shared.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
                    last_shared = now;
                }
                latencies.push(now.saturating_sub(data.t));
                if latencies.len() == LATENCY_BATCH {
                    record_latencies(&shared, &mut latencies);
                }
                if seen.insert(data.seq) {
                    stats.distinct += 1;
                    if stats.distinct == shared.messages {
                        shared.complete.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    stats.duplicates += 1;
                }
                if last_seq.is_some_and(|last| data.seq <= last) {
                    stats.out_of_order += 1;
                }
                last_seq = Some(data.seq);
            }
            Some(Ok(Message::Close(frame))) => {
                stats.ended = Some(match frame {
                    Some(f) => format!("close {}", u16::from(f.code)),
                    None => "close".into(),
                });
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                stats.ended = Some(format!("error: {e}"));
                break;
            }
            None => {
                stats.ended = Some("eof".into());
                break;
            }
        }
    }
    record_latencies(&shared, &mut latencies);
    shared
        .last_delivery_ns
        .fetch_max(last_delivery, Ordering::Relaxed);
    stats
}

/// Latencies a connection collects before taking the worker's histogram lock.
const LATENCY_BATCH: usize = 64;

fn record_latencies(shared: &Shared, latencies: &mut Vec<u64>) {
    if latencies.is_empty() {
        return;
    }
    let mut histogram = shared.latency.lock().unwrap_or_else(|e| e.into_inner());
    for &ns in latencies.iter() {
        hist::record_ns(&mut histogram, ns);
    }
    latencies.clear();
}

/// The parent's handle on a worker process.
pub struct WorkerProc {
    pub label: String,
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl WorkerProc {
    /// Starts `tessera-bench worker` with `job`.
    pub fn spawn(label: String, job: &Job) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating tessera-bench")?;
        let mut child = tokio::process::Command::new(exe)
            .arg("worker")
            .arg("--job")
            .arg(serde_json::to_string(job)?)
            // Keep the heap `prefault_heap` touched (mimalloc would return
            // freed memory to the OS after a delay, to be zeroed again later).
            .env("MIMALLOC_PURGE_DELAY", "-1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting worker {label}"))?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        Ok(Self {
            label,
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// The worker's next event, within `within`.
    pub async fn event(&mut self, within: Duration) -> anyhow::Result<Event> {
        let line = tokio::time::timeout(within, self.lines.next_line())
            .await
            .with_context(|| format!("worker {} said nothing for {within:?}", self.label))?
            .with_context(|| format!("reading from worker {}", self.label))?;
        let Some(line) = line else {
            let status = self.child.wait().await?;
            bail!("worker {} exited ({status}) before reporting", self.label);
        };
        serde_json::from_str(&line).with_context(|| format!("worker {} sent {line:?}", self.label))
    }

    pub async fn send(&mut self, command: &Command) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(command)?;
        line.push(b'\n');
        self.stdin
            .write_all(&line)
            .await
            .with_context(|| format!("writing to worker {}", self.label))?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Waits for the process to exit (it does after its result); kills it if it lingers.
    pub async fn reap(mut self) {
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// A scenario's set of workers, driven through the protocol in lockstep.
pub struct Workers(pub Vec<WorkerProc>);

impl Workers {
    /// The worker processes' ids (for their CPU time).
    pub fn pids(&self) -> Vec<u32> {
        self.0.iter().filter_map(|w| w.child.id()).collect()
    }

    /// Spawns one worker per job and waits until all have started.
    pub async fn start(label: &str, jobs: Vec<Job>) -> anyhow::Result<Self> {
        let mut workers = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            workers.push(WorkerProc::spawn(format!("{label}#{i}"), job)?);
        }
        let mut workers = Self(workers);
        for w in &mut workers.0 {
            match w.event(Duration::from_secs(30)).await? {
                Event::Started => {}
                other => bail!("worker {}: expected started, got {other:?}", w.label),
            }
        }
        Ok(workers)
    }

    /// Lets every worker connect; returns their reports once all are connected.
    pub async fn connect(&mut self, within: Duration) -> anyhow::Result<Vec<Ready>> {
        for w in &mut self.0 {
            w.send(&Command::Go).await?;
        }
        let readies = futures_util::future::try_join_all(self.0.iter_mut().map(|w| async move {
            match w.event(within).await? {
                Event::Ready(ready) => Ok(ready),
                other => bail!("worker {}: expected ready, got {other:?}", w.label),
            }
        }))
        .await?;
        Ok(readies)
    }

    /// Sends `command` (finish or close) and collects every worker's result.
    pub async fn stop(self, command: Command, within: Duration) -> anyhow::Result<Vec<Outcome>> {
        let mut workers = self.0;
        for w in &mut workers {
            w.send(&command).await?;
        }
        let outcomes = futures_util::future::try_join_all(workers.iter_mut().map(|w| async move {
            match w.event(within).await? {
                Event::Result(outcome) => Ok(outcome),
                other => bail!("worker {}: expected result, got {other:?}", w.label),
            }
        }))
        .await?;
        for w in workers {
            w.reap().await;
        }
        Ok(outcomes)
    }
}

/// Splits `total` connections into `workers` jobs spread over `nodes`: worker
/// `w` gets an even share, and within it an even share per node.
pub fn split(total: usize, workers: usize, nodes: &[SocketAddr]) -> Vec<Vec<Target>> {
    let workers = workers.max(1);
    (0..workers)
        .map(|w| {
            let mine = total / workers + usize::from(w < total % workers);
            nodes
                .iter()
                .enumerate()
                .map(|(n, &node)| Target {
                    node,
                    count: mine / nodes.len() + usize::from(n < mine % nodes.len()),
                })
                .filter(|t| t.count > 0)
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_everything_evenly() {
        let nodes: Vec<SocketAddr> = vec![
            "127.0.0.1:1".parse().expect("addr"),
            "127.0.0.1:2".parse().expect("addr"),
        ];
        let jobs = split(1001, 3, &nodes);
        let total: usize = jobs.iter().flatten().map(|t| t.count).sum();
        assert_eq!(total, 1001);
        for job in &jobs {
            let n: usize = job.iter().map(|t| t.count).sum();
            assert!((333..=334).contains(&n));
        }
        assert_eq!(split(1, 2, &nodes).concat().len(), 1);
    }

    #[test]
    fn seen_counts_each_sequence_number_once() {
        let mut seen = Seen::new(100);
        assert!(seen.insert(0));
        assert!(seen.insert(99));
        assert!(!seen.insert(99));
        assert!(!seen.insert(100));
    }

    #[test]
    fn protocol_lines_round_trip() {
        let line = serde_json::to_string(&Command::Finish {
            expected: 5,
            quiet_ms: 10,
        })
        .expect("serialises");
        assert_eq!(line, r#"{"cmd":"finish","expected":5,"quiet_ms":10}"#);
        let event: Event = serde_json::from_str(r#"{"event":"started"}"#).expect("parses");
        assert!(matches!(event, Event::Started));
    }
}

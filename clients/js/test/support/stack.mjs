// Real services for the integration and browser tests: auth-service and two
// ws-nodes (the workspace's debug builds) on free ports, against a fresh
// Postgres database and a Redis key prefix of their own, and optionally
// Debian's nginx running the repository's proxy config in front of them
// (as docker-compose.yml does). Each test file starts its own stack, so a
// test that kills a node harms no other file.
//
// Everything started here is stopped by stack.stop(), and killed when the
// process exits however it exits. What a hard kill of the test process
// itself would leave (processes, the database, Redis keys) is written to
// the file named by TESSERA_JS_REGISTRY, which scripts/js-tests.sh cleans
// up after the run.
import { spawn, spawnSync } from 'node:child_process';
import { appendFileSync, chmodSync, cpSync, mkdirSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../../../../', import.meta.url));
// The binaries scripts/js-tests.sh builds (cargo's target dir, debug profile).
const TARGET = process.env.TESSERA_TARGET_DIR || join(process.env.CARGO_TARGET_DIR || join(ROOT, 'target'), 'debug');
export const DEMO_DIR = join(ROOT, 'clients/demo');

const running = new Set();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => process.exit(130));
}

function register(line) {
  if (process.env.TESSERA_JS_REGISTRY) appendFileSync(process.env.TESSERA_JS_REGISTRY, `${line}\n`);
}

/** A port nothing listens on, outside the ephemeral range (as scripts/lib.sh's free_port). */
async function freePort(taken) {
  for (let i = 0; i < 200; i++) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    if (taken.has(port)) continue;
    const free = await new Promise((resolve) => {
      const server = createServer();
      server.once('error', () => resolve(false));
      server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
    });
    if (free) {
      taken.add(port);
      return port;
    }
  }
  throw new Error('no free port');
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits until `url` answers 2xx; fails early if `child` exits. */
async function waitReady(url, child, seconds = 60) {
  const deadline = Date.now() + seconds * 1000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`${url}: the process exited`);
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(2000) });
      if (response.ok) return;
    } catch {
      // not listening yet
    }
    await sleep(100);
  }
  throw new Error(`${url} was not ready within ${seconds} s`);
}

/**
 * A long-running process, its output appended to a log file in the work dir.
 * `marker` is a string its command line holds (the registry's cleanup checks
 * it, so a pid reused by someone else's process is never signalled).
 */
class Proc {
  constructor(name, command, args, env, log, marker = command) {
    Object.assign(this, { name, command, args, env, log, marker });
    this.child = undefined;
  }

  start() {
    const out = openSync(this.log, 'a');
    const child = spawn(this.command, this.args, { env: this.env, stdio: ['ignore', out, out] });
    this.child = child;
    running.add(child);
    register(`pid ${child.pid} ${this.marker}`);
    this.exited = new Promise((resolve) => child.once('exit', resolve));
    this.exited.then(() => running.delete(child));
    return child;
  }

  /** Sends `signal` and waits for the process to end (SIGKILL after 5 s). */
  async stop(signal = 'SIGTERM') {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(timer);
  }
}

/** A ws-node that a test can kill and start again on the same port. */
class WsNode extends Proc {
  constructor(id, port, metricsPort, env, log) {
    super(id, join(TARGET, 'ws-node'), [], { ...env, WS_LISTEN: `127.0.0.1:${port}`, NODE_ID: id, METRICS_LISTEN: `127.0.0.1:${metricsPort}` }, log);
    this.id = id;
    this.port = port;
    this.url = `ws://127.0.0.1:${port}/ws`;
    this.metricsUrl = `http://127.0.0.1:${metricsPort}/metrics`;
  }

  async start() {
    const child = super.start();
    await waitReady(`http://127.0.0.1:${this.port}/readyz`, child);
  }

  /** Kills the node the hard way (no drain, no close frames): SIGKILL by default. */
  kill(signal = 'SIGKILL') {
    return this.stop(signal);
  }

  /** Starts the node again if a test stopped it (and did not get as far as starting it). */
  async ensureRunning() {
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null && !child.killed) return;
    await this.exited;
    await this.start();
  }
}

/** Namespaces of the test stack: the defaults, and `tiny:` with a 5-message history (recovery fails fast). */
const NAMESPACES = JSON.stringify([
  { name: 'public', subscribe: 'any', publish: 'any', history: { max_len: 1000, max_age_secs: 600 }, presence: true },
  { name: 'user', subscribe: 'owner', publish: 'server', history: { max_len: 1000, max_age_secs: 600 } },
  { name: 'broadcast', subscribe: 'any', publish: 'server', history: { max_len: 1000, max_age_secs: 600 } },
  { name: 'tiny', subscribe: 'any', publish: 'any', history: { max_len: 5, max_age_secs: 600 } },
]);

/**
 * Starts auth-service and two ws-nodes; with `proxy`, nginx in front of them
 * serving the demo at / (the origin pages are loaded from).
 */
export async function startStack({ proxy = false } = {}) {
  const work = mkdtempSync(join(tmpdir(), 'tessera-js-'));
  chmodSync(work, 0o755); // nginx's workers run unprivileged
  const suffix = work.slice(-6).toLowerCase().replace(/[^a-z0-9]/g, 'x') + Date.now().toString(36);
  const database = `tessera_js_${suffix}`;
  const prefix = `tessera-js-${suffix}`;
  register(`db ${database}`);
  register(`prefix ${prefix}`);
  const taken = new Set();
  const ports = {};
  for (const name of ['auth', 'authMetrics', 'ws1', 'ws1Metrics', 'ws2', 'ws2Metrics', 'proxy']) {
    ports[name] = await freePort(taken);
  }
  const authUrl = `http://127.0.0.1:${ports.auth}`;
  const proxyUrl = proxy ? `http://127.0.0.1:${ports.proxy}` : undefined;
  const env = {
    PATH: process.env.PATH,
    REDIS_URL: 'redis://127.0.0.1:6379',
    REDIS_PREFIX: prefix,
    DATABASE_URL: `postgres://postgres@127.0.0.1:5432/${database}`,
    ALLOWED_ORIGINS: [authUrl, proxyUrl].filter(Boolean).join(','),
    COOKIE_SECURE: 'true',
    CHANNEL_NAMESPACES: NAMESPACES,
    // Reconnect tests mint many tickets.
    MINT_LIMIT_PER_USER: '100000',
    SHUTDOWN_TIMEOUT_SECS: '2',
    DRAIN_TIMEOUT_SECS: '2',
    RUST_LOG: 'info',
  };
  const stack = {
    work,
    database,
    prefix,
    authUrl,
    proxyUrl,
    /** The origin pages (and the Node tests' requests) come from. */
    origin: proxyUrl ?? authUrl,
    authMetricsUrl: `http://127.0.0.1:${ports.authMetrics}/metrics`,
    env,
    nodes: [],
    procs: [],
  };
  stack.auth = new Proc(
    'auth-service',
    join(TARGET, 'auth-service'),
    [],
    {
      ...env,
      AUTH_LISTEN: `127.0.0.1:${ports.auth}`,
      METRICS_LISTEN: `127.0.0.1:${ports.authMetrics}`,
      PUBLIC_WS_URL: proxy ? `ws://127.0.0.1:${ports.proxy}/ws` : `ws://127.0.0.1:${ports.ws1}/ws`,
      STATIC_DIR: DEMO_DIR,
    },
    join(work, 'auth-service.log'),
  );
  stack.procs.push(stack.auth);
  stack.stop = () => stopStack(stack);
  try {
    await waitReady(`${authUrl}/readyz`, stack.auth.start());
    for (const n of [1, 2]) {
      const node = new WsNode(`js-node-${n}`, ports[`ws${n}`], ports[`ws${n}Metrics`], env, join(work, `ws-node-${n}.log`));
      stack.nodes.push(node);
      stack.procs.push(node);
    }
    await Promise.all(stack.nodes.map((node) => node.start()));
    if (proxy) await startProxy(stack, ports);
  } catch (error) {
    await stack.stop({ keepLogs: true });
    throw error;
  }
  return stack;
}

async function startProxy(stack, ports) {
  const { work } = stack;
  cpSync(DEMO_DIR, join(work, 'static'), { recursive: true });
  const rendered = spawnSync('bash', [join(ROOT, 'scripts/render-proxy-config.sh'), join(work, 'nginx.conf')], {
    env: {
      ...process.env,
      TESSERA_LISTEN: `127.0.0.1:${ports.proxy}`,
      TESSERA_AUTH_UPSTREAM: `server 127.0.0.1:${ports.auth};`,
      TESSERA_WS_UPSTREAM: stack.nodes.map((node) => `server 127.0.0.1:${node.port};`).join(' '),
      TESSERA_RESOLVER: '127.0.0.1',
      TESSERA_ACCESS_LOG: join(work, 'access.log'),
      TESSERA_NGINX_TEMP: join(work, 'nginx-temp'),
      TESSERA_STATIC_ROOT: join(work, 'static'),
    },
    encoding: 'utf8',
  });
  if (rendered.status !== 0) throw new Error(`render-proxy-config.sh: ${rendered.stderr}`);
  const nginx = new Proc(
    'nginx',
    'nginx',
    ['-p', `${work}/`, '-c', join(work, 'nginx.conf'), '-g', `daemon off; pid ${join(work, 'nginx.pid')};`],
    { PATH: process.env.PATH },
    join(work, 'nginx.log'),
    work, // nginx rewrites its command line, but keeps -p <work>/
  );
  stack.procs.push(nginx);
  stack.nginx = nginx;
  mkdirSync(join(work, 'nginx-temp'));
  await waitReady(`${stack.proxyUrl}/healthz`, nginx.start(), 10);
}

async function stopStack(stack, { keepLogs = false } = {}) {
  await Promise.all(stack.procs.map((proc) => proc.stop('SIGTERM')));
  spawnSync('psql', ['-h', '127.0.0.1', '-p', '5432', '-U', 'postgres', '-d', 'postgres', '-qAtc', `DROP DATABASE IF EXISTS "${stack.database}" WITH (FORCE)`]);
  spawnSync('bash', ['-c', `redis-cli -h 127.0.0.1 -p 6379 --scan --pattern '${stack.prefix}:*' | xargs -r -n 500 redis-cli -h 127.0.0.1 -p 6379 del >/dev/null`]);
  if (keepLogs || process.env.TESSERA_KEEP_LOGS === '1') {
    console.log(`# logs kept in ${stack.work}`);
  } else {
    rmSync(stack.work, { recursive: true, force: true });
  }
}

/** Runs the operator CLI (auth-service's subcommands) against the stack; resolves with stdout. */
export function cli(stack, args, extraEnv = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(join(TARGET, 'auth-service'), args, { env: { ...stack.env, ...extraEnv }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('exit', (code) => (code === 0 ? resolve(out.trim()) : reject(new Error(`auth-service ${args.join(' ')}: ${err}`))));
  });
}

let userCount = 0;
/**
 * A new user, with the operator CLI (its API keys may have every scope).
 * Named `name-<n>`, or `name` itself with `exact` (once per stack).
 */
export async function createUser(stack, name = 'user', { exact = false } = {}) {
  const username = exact ? name : `${name}-${++userCount}`;
  const password = `pw-${Math.random().toString(36).slice(2)}-${Date.now()}`;
  await cli(stack, ['user', 'add', username, '--key-scopes', 'connect,publish,admin'], { AUTH_PASSWORD: password });
  return { username, password };
}

export function createApiKey(stack, username, scopes = 'connect,publish,publish_any,admin') {
  return cli(stack, ['api-key', 'create', username, '--scopes', scopes]);
}

/** Logs in as a page on `origin` would; resolves with the Cookie header value. */
export async function login(stack, { username, password }, origin = stack.origin) {
  const response = await fetch(`${stack.authUrl}/v1/login`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Origin: origin },
    body: JSON.stringify({ username, password }),
  });
  if (response.status !== 200) throw new Error(`login: ${response.status} ${await response.text()}`);
  const cookie = response.headers.getSetCookie().find((c) => c.startsWith('__Host-session='));
  if (!cookie) throw new Error('login set no __Host-session cookie');
  return cookie.split(';')[0];
}

/** Publishes as a backend would (POST /v1/publish with an API key). */
export async function serverPublish(stack, key, channel, data) {
  const response = await fetch(`${stack.authUrl}/v1/publish`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ channel, data }),
  });
  if (response.status !== 202) throw new Error(`publish: ${response.status} ${await response.text()}`);
  return response.json();
}

/** The value of one Prometheus sample (0 when absent), e.g. metric(text, 'ws_handshakes_total', {outcome: 'accepted'}). */
export async function metric(url, name, labels = {}) {
  const text = await (await fetch(url)).text();
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== '{' && rest[0] !== ' ') continue;
    if (want.every((pair) => rest.includes(pair))) total += Number(line.split(' ').at(-1));
  }
  return total;
}

/** Polls `check` until it returns a truthy value, or fails after `ms`. */
export async function eventually(check, ms = 10_000, what = 'condition') {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

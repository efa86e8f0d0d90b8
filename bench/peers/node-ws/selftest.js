'use strict';
// Self-test: starts two peers (sharing one Redis, as the harness does) plus one
// with no reachable Redis, drives them over HTTP and WebSocket, stops them, and
// deletes its keys. Exits 0 on success, 1 on failure.
//   node selftest.js        (REDIS_URL defaults to redis://127.0.0.1:6379)

const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const net = require('node:net');
const path = require('node:path');
const Redis = require('ioredis');
const WebSocket = require('ws');

const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const PREFIX = `peertest-${crypto.randomBytes(4).toString('hex')}`;
const CHANNEL = 'public:x';
const MESSAGES = 100;

let passed = 0;
let failed = 0;
function check(ok, what) {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  return ok;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

const children = [];
async function startPeer(nodeId, redisUrl = REDIS_URL) {
  const port = await freePort();
  const child = spawn(process.execPath, [path.join(__dirname, 'server.js')], {
    env: { ...process.env, PEER_LISTEN: `127.0.0.1:${port}`, REDIS_URL: redisUrl, REDIS_PREFIX: PREFIX, NODE_ID: nodeId },
    stdio: ['ignore', 'inherit', 'pipe'],
  });
  child.log = '';
  child.stderr.on('data', (d) => (child.log += d)); // shown only on failure
  children.push(child);
  return { nodeId, port, child, base: `http://127.0.0.1:${port}` };
}

async function readyz(peer) {
  try {
    const res = await fetch(`${peer.base}/readyz`);
    return { status: res.status, body: await res.json() };
  } catch {
    return null; // not listening yet
  }
}

async function waitReady(peer, ms = 10000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const r = await readyz(peer);
    if (r && r.status === 200) return r;
    await sleep(50);
  }
  throw new Error(`${peer.nodeId} not ready after ${ms} ms`);
}

async function mint(peer, token = 'test-key') {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const res = await fetch(`${peer.base}/v1/tickets`, { method: 'POST', headers });
  return { status: res.status, type: res.headers.get('content-type'), body: await res.json() };
}

// Opens a WebSocket; resolves { ws, welcome, frames } after the welcome frame,
// or { status, body } if the upgrade is refused.
function connect(peer, ticket) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${peer.port}/ws?ticket=${ticket}`, { perMessageDeflate: false });
    const frames = [];
    const waiters = [];
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    ws.on('error', reject);
    ws.on('message', (data) => {
      const text = data.toString();
      if (frames.length === 0 && !ws.welcome) {
        ws.welcome = text;
        return resolve({ ws, welcome: JSON.parse(text), frames, waiters });
      }
      frames.push(text);
      for (const w of waiters.splice(0)) w();
    });
  });
}

// Sends a frame and resolves with the next frame whose id matches.
function request(client, frame) {
  client.ws.send(JSON.stringify(frame));
  return new Promise((resolve) => {
    const look = () => {
      const i = client.frames.findIndex((f) => JSON.parse(f).id === frame.id);
      if (i >= 0) return resolve(JSON.parse(client.frames.splice(i, 1)[0]));
      client.waiters.push(look);
    };
    look();
  });
}

async function waitFrames(client, n, ms = 5000) {
  const deadline = Date.now() + ms;
  while (client.frames.length < n && Date.now() < deadline) await sleep(10);
  return client.frames;
}

async function cleanup() {
  const redis = new Redis(REDIS_URL);
  let cursor = '0';
  let removed = 0;
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${PREFIX}:*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length) removed += await redis.unlink(...keys);
  } while (cursor !== '0');
  await redis.quit();
  return removed;
}

async function stopAll() {
  const exits = children.map(
    (child) =>
      new Promise((resolve) => {
        if (child.exitCode !== null) return resolve(child.exitCode);
        child.once('exit', (code, signal) => resolve(code ?? signal));
        child.kill('SIGTERM');
      }),
  );
  return Promise.all(exits);
}

async function main() {
  console.log(`prefix ${PREFIX}`);
  const deadRedis = `redis://127.0.0.1:${await freePort()}`;
  const [a, b, dead] = await Promise.all([startPeer('A'), startPeer('B'), startPeer('Z', deadRedis)]);
  await waitReady(a);
  await waitReady(b);
  check(true, 'peers A and B ready: GET /readyz -> 200');
  let r = await readyz(dead);
  while (!r) r = (await sleep(50), await readyz(dead));
  check(r.status === 503, `peer without Redis: GET /readyz -> ${r.status} (want 503)`);
  r = await readyz(a);
  check(JSON.stringify(r.body) === '{"status":"ready"}', `readyz body ${JSON.stringify(r.body)}`);

  // Mint, errors.
  const t1 = await mint(a);
  check(t1.status === 201 && t1.type === 'application/json', `mint -> ${t1.status} ${t1.type}`);
  check(/^[0-9a-f]{32}$/.test(t1.body.ticket) && t1.body.expires_in === 30, `mint body ${JSON.stringify(t1.body)}`);
  const noAuth = await mint(a, null);
  check(noAuth.status === 401 && noAuth.body.error.code === 'unauthorized', `mint without Authorization -> ${noAuth.status} ${JSON.stringify(noAuth.body)}`);
  const nf = await fetch(`${a.base}/nope`);
  const nfBody = await nf.json();
  check(nf.status === 404 && nfBody.error.code === 'not_found', `GET /nope -> ${nf.status} ${JSON.stringify(nfBody)}`);

  // Connect subscriber 1 on A.
  const s1 = await connect(a, t1.body.ticket);
  check(s1.welcome && s1.welcome.type === 'welcome' && s1.welcome.node === 'A' && /^A:\d+$/.test(s1.welcome.connection_id) && s1.welcome.user.username === 'bench',
    `welcome on A: ${s1.ws && s1.ws.welcome}`);

  // Publisher on A with a second ticket; reusing that ticket must be refused.
  const t2 = await mint(a, 'publisher-key');
  const pub = await connect(a, t2.body.ticket);
  check(pub.welcome && pub.welcome.type === 'welcome', 'publisher connected on A');
  const reused = await connect(b, t2.body.ticket);
  check(reused.status === 401 && JSON.parse(reused.body).error.code === 'unauthorized', `reused ticket -> ${reused.status} ${reused.body}`);
  const bogus = await connect(a, 'f'.repeat(32));
  check(bogus.status === 401, `unknown ticket -> ${bogus.status}`);

  // Subscriber 2 on B (ticket minted on A: both share Redis).
  const t3 = await mint(a);
  const s2 = await connect(b, t3.body.ticket);
  check(s2.welcome && s2.welcome.node === 'B', `welcome on B: ${s2.ws && s2.ws.welcome}`);

  // Subscribe both.
  const ack1 = await request(s1, { action: 'subscribe', id: 1, channel: CHANNEL });
  const ack2 = await request(s2, { action: 'subscribe', id: 7, channel: CHANNEL });
  check(JSON.stringify(ack1) === '{"type":"ack","id":1}' && JSON.stringify(ack2) === '{"type":"ack","id":7}', `subscribe acks ${JSON.stringify(ack1)} ${JSON.stringify(ack2)}`);

  // Bad frames.
  pub.ws.send('not json');
  const e1 = JSON.parse((await waitFrames(pub, 1))[0]);
  pub.frames.length = 0;
  check(e1.type === 'error' && e1.id === null && e1.code === 'bad_request', `bad JSON -> ${JSON.stringify(e1)}`);
  const e2 = await request(pub, { action: 'dance', id: 99 });
  check(e2.type === 'error' && e2.id === 99 && e2.code === 'bad_request', `unknown action -> ${JSON.stringify(e2)}`);

  // Publish 100 messages from A as fast as the socket takes them; count acks.
  const sent = [];
  for (let seq = 0; seq < MESSAGES; seq++) {
    const t = BigInt(Date.now()) * 1000000n + (process.hrtime.bigint() % 1000000n); // unix ns, > 2^53
    sent.push(t);
    pub.ws.send(`{"action":"publish","id":${1000 + seq},"channel":"${CHANNEL}","data":{"t":${t},"seq":${seq}}}`);
  }
  const pubFrames = await waitFrames(pub, MESSAGES);
  check(pubFrames.length === MESSAGES && pubFrames.every((f, i) => f === `{"type":"ack","id":${1000 + i}}`), `publisher got ${pubFrames.length} acks in order`);

  const shape = /^\{"type":"message","channel":"public:x","data":\{"t":(\d+),"seq":(\d+)\}\}$/;
  let maxDrift = 0n;
  for (const [name, client] of [['A', s1], ['B', s2]]) {
    const frames = await waitFrames(client, MESSAGES);
    let ok = frames.length === MESSAGES;
    for (let i = 0; ok && i < frames.length; i++) {
      const m = shape.exec(frames[i]);
      if (!m || Number(m[2]) !== i) {
        ok = false;
        console.log(`  frame ${i} on ${name}: ${frames[i]}`);
        break;
      }
      const drift = BigInt(m[1]) - sent[i];
      if ((drift < 0n ? -drift : drift) > maxDrift) maxDrift = drift < 0n ? -drift : drift;
    }
    check(ok, `subscriber on ${name}: ${frames.length}/${MESSAGES} frames, in order, exact shape`);
  }
  check(maxDrift <= 256n, `t survives JSON.parse/stringify within ${maxDrift} ns (doubles: <= 256 ns near 2^60)`);

  // Unsubscribe: no more deliveries to s1, s2 still gets them.
  s1.frames.length = 0;
  s2.frames.length = 0;
  const ack3 = await request(s1, { action: 'unsubscribe', id: 2, channel: CHANNEL });
  check(JSON.stringify(ack3) === '{"type":"ack","id":2}', `unsubscribe ack ${JSON.stringify(ack3)}`);
  const ack4 = await request(pub, { action: 'publish', id: 5000, channel: CHANNEL, data: 'after' });
  check(ack4.type === 'ack', 'publish after unsubscribe acked');
  await waitFrames(s2, 1);
  await sleep(100);
  check(s1.frames.length === 0 && s2.frames[0] === '{"type":"message","channel":"public:x","data":"after"}', `after unsubscribe: A got ${s1.frames.length}, B got ${s2.frames[0]}`);

  for (const c of [s1, s2, pub]) c.ws.close();
  await sleep(100);
}

(async () => {
  let error = null;
  try {
    await main();
  } catch (err) {
    error = err;
  }
  const codes = await stopAll();
  check(codes.every((c) => c === 0), `peers exited on SIGTERM with ${codes.join(', ')}`);
  const removed = await cleanup().catch((err) => (console.log(`cleanup: ${err.message}`), -1));
  console.log(`cleanup: removed ${removed} key(s) under ${PREFIX}:`);
  if (error) {
    failed++;
    console.log(`FAIL ${error.stack}`);
  }
  if (failed) for (const child of children) process.stdout.write(child.log.replace(/^/gm, '  | '));
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
})();

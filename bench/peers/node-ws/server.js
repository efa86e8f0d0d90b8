'use strict';
// A Node.js `ws` + `ioredis` WebSocket node: the design people commonly reach
// for, run by tessera's benchmark harness as a same-run reference. See README.md.

const crypto = require('node:crypto');
const http = require('node:http');
const Redis = require('ioredis');
const { WebSocketServer, WebSocket } = require('ws');

const LISTEN = process.env.PEER_LISTEN || '127.0.0.1:9100';
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const PREFIX = process.env.REDIS_PREFIX || 'peer';
const NODE_ID = process.env.NODE_ID || `node-${crypto.randomBytes(3).toString('hex')}`;
const TICKET_TTL = 30;

const ticketKey = (ticket) => `${PREFIX}:ticket:${ticket}`;
const channelKey = (channel) => `${PREFIX}:ch:${channel}`;

const redis = new Redis(REDIS_URL); // commands: SET, GETDEL, PUBLISH
const sub = new Redis(REDIS_URL); // SUBSCRIBE / UNSUBSCRIBE only
for (const [name, conn] of [['command', redis], ['subscriber', sub]]) {
  conn.on('error', (err) => console.error(`[${NODE_ID}] redis ${name}: ${err.message}`));
}
const redisReady = () => redis.status === 'ready' && sub.status === 'ready';

// Redis channel key -> { members: Set<WebSocket>, subscribed: Promise }
const channels = new Map();

sub.on('message', (key, frame) => {
  const entry = channels.get(key);
  if (!entry) return;
  for (const ws of entry.members) {
    if (ws.readyState === WebSocket.OPEN) ws.send(frame);
  }
});

function join(ws, channel) {
  const key = channelKey(channel);
  let entry = channels.get(key);
  if (!entry) {
    entry = { members: new Set(), subscribed: sub.subscribe(key) };
    channels.set(key, entry);
    const failed = entry;
    entry.subscribed.catch(() => channels.get(key) === failed && channels.delete(key));
  }
  entry.members.add(ws);
  ws.channels.add(key);
  return entry.subscribed;
}

function leave(ws, key) {
  ws.channels.delete(key);
  const entry = channels.get(key);
  if (!entry || !entry.members.delete(ws) || entry.members.size > 0) return Promise.resolve();
  channels.delete(key);
  return sub.unsubscribe(key);
}

// ---- HTTP ----

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(text),
  });
  res.end(text);
}

const errorBody = (code, message) => ({ error: { code, message } });

function bearer(req) {
  const match = /^Bearer\s+(\S+)/i.exec(req.headers.authorization || '');
  return match ? match[1] : null;
}

async function mint(req, res) {
  const token = bearer(req);
  if (!token) return sendJson(res, 401, errorBody('unauthorized', 'missing bearer token'));
  // The token stands for a user; no key lookup, no rate limit (see README.md).
  const userId = crypto.createHash('sha256').update(token).digest('hex').slice(0, 16);
  const ticket = crypto.randomBytes(16).toString('hex');
  await redis.set(ticketKey(ticket), userId, 'EX', TICKET_TTL);
  sendJson(res, 201, { ticket, expires_in: TICKET_TTL });
}

const server = http.createServer((req, res) => {
  req.resume(); // no route reads a body
  const path = req.url.split('?', 1)[0];
  if (path === '/readyz' && req.method === 'GET') {
    if (redisReady()) sendJson(res, 200, { status: 'ready' });
    else sendJson(res, 503, errorBody('not_ready', 'redis is not connected'));
  } else if (path === '/v1/tickets' && req.method === 'POST') {
    mint(req, res).catch((err) => sendJson(res, 500, errorBody('internal', err.message)));
  } else if (path === '/readyz' || path === '/v1/tickets') {
    sendJson(res, 405, errorBody('method_not_allowed', `${req.method} not allowed on ${path}`));
  } else {
    sendJson(res, 404, errorBody('not_found', `no route for ${path}`));
  }
});

// ---- WebSocket ----

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
let connections = 0;

function reject(socket, status, reason, code, message) {
  const body = JSON.stringify(errorBody(code, message));
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
  socket.destroy();
}

server.on('upgrade', async (req, socket, head) => {
  socket.on('error', () => {});
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname !== '/ws') return reject(socket, 404, 'Not Found', 'not_found', 'no such route');
  const ticket = url.searchParams.get('ticket');
  let userId = null;
  try {
    if (ticket) userId = await redis.getdel(ticketKey(ticket));
  } catch (err) {
    return reject(socket, 503, 'Service Unavailable', 'unavailable', err.message);
  }
  if (!userId) return reject(socket, 401, 'Unauthorized', 'unauthorized', 'invalid or expired ticket');
  if (socket.destroyed) return;
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.channels = new Set();
    ws.send(
      JSON.stringify({
        type: 'welcome',
        connection_id: `${NODE_ID}:${++connections}`,
        user: { id: userId, username: 'bench' },
        node: NODE_ID,
      }),
    );
    ws.on('message', (data, isBinary) => onFrame(ws, data, isBinary));
    ws.on('close', () => {
      for (const key of [...ws.channels]) leave(ws, key).catch(() => {});
    });
    ws.on('error', () => {});
  });
});

function reply(ws, frame) {
  if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
}

const badRequest = (ws, id, message) =>
  reply(ws, { type: 'error', id, code: 'bad_request', message });

function onFrame(ws, data, isBinary) {
  if (isBinary) return badRequest(ws, null, 'binary frames are not supported');
  let msg;
  try {
    msg = JSON.parse(data.toString());
  } catch {
    return badRequest(ws, null, 'invalid JSON');
  }
  if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) {
    return badRequest(ws, null, 'expected a JSON object');
  }
  const id = msg.id ?? null;
  const { action, channel } = msg;
  if (!['subscribe', 'unsubscribe', 'publish'].includes(action)) {
    return badRequest(ws, id, `unknown action ${JSON.stringify(action)}`);
  }
  if (typeof channel !== 'string' || channel === '') {
    return badRequest(ws, id, 'channel must be a non-empty string');
  }
  const ack = () => reply(ws, { type: 'ack', id });
  const fail = (err) => reply(ws, { type: 'error', id, code: 'internal', message: err.message });

  if (action === 'subscribe') {
    join(ws, channel).then(ack, fail);
  } else if (action === 'unsubscribe') {
    leave(ws, channelKey(channel)).then(ack, fail);
  } else {
    if (msg.data === undefined) return badRequest(ws, id, 'publish needs data');
    const frame = `{"type":"message","channel":${JSON.stringify(channel)},"data":${JSON.stringify(msg.data)}}`;
    redis.publish(channelKey(channel), frame).then(ack, fail);
  }
}

// ---- start / stop ----

const sep = LISTEN.lastIndexOf(':');
const host = LISTEN.slice(0, sep).replace(/^\[(.*)\]$/, '$1');
const port = Number(LISTEN.slice(sep + 1));
server.listen(port, host, () => console.error(`[${NODE_ID}] listening on ${LISTEN}`));

let stopping = false;
function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  console.error(`[${NODE_ID}] ${signal}: shutting down`);
  setTimeout(() => process.exit(0), 3000).unref();
  for (const ws of wss.clients) ws.terminate();
  server.close();
  server.closeAllConnections();
  const close = (conn) => (conn.status === 'ready' ? conn.quit() : conn.disconnect());
  Promise.allSettled([close(redis), close(sub)]).then(() => process.exit(0));
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

// The client against real services: auth-service and two ws-nodes (started
// here, see test/support/stack.mjs), logged in with a session cookie the way
// a page is. Node 20 has no global WebSocket: the `ws` package is injected,
// sending the page's Origin (the ticket is bound to it).
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { Client, fetchTicket } from '../../dist/tessera.js';
import { createApiKey, createUser, eventually, login, metric, serverPublish, startStack } from '../support/stack.mjs';

let stack;
let user;
let cookie;
let apiKey;

before(async () => {
  stack = await startStack();
  user = await createUser(stack, 'alice');
  cookie = await login(stack, user);
  apiKey = await createApiKey(stack, user.username);
});

// Whatever a test leaves, even when it fails half-way, is undone before the
// next: its clients stop (a client left retrying would also keep this
// process alive), and a node it stopped runs again.
const clients = [];
afterEach(async () => {
  await Promise.all(clients.splice(0).map((client) => client.disconnect()));
  for (const node of stack.nodes) await node.ensureRunning();
});

after(async () => {
  await stack?.stop();
});

const unique = (prefix) => `${prefix}${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;

/**
 * A client as a page would have it: tickets minted with the session cookie
 * from the page's origin. Records every socket it opens and every frame it
 * sends; `hold()` makes the next ticket wait until `release()`, so a test
 * can act while the client is certainly disconnected.
 */
function pageClient({ sessionCookie = cookie, ...options } = {}) {
  const sockets = [];
  const sent = [];
  const origin = stack.origin;
  class PageWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { origin });
      sockets.push(this);
    }

    send(data) {
      sent.push({ socket: sockets.indexOf(this), frame: JSON.parse(data) });
      super.send(data);
    }
  }
  const mint = fetchTicket({ url: `${stack.authUrl}/v1/tickets`, headers: { Cookie: sessionCookie, Origin: origin } });
  const state = { tickets: 0, gate: undefined, release: () => {} };
  const client = new Client({
    WebSocket: PageWebSocket,
    url: stack.nodes.map((node) => node.url),
    network: null,
    getTicket: async () => {
      state.tickets++;
      await state.gate;
      return mint();
    },
    ...options,
  });
  clients.push(client);
  const events = [];
  for (const name of ['state', 'connected', 'disconnected', 'resync']) client.on(name, (arg) => events.push([name, arg]));
  return {
    client,
    sockets,
    sent,
    events,
    tickets: () => state.tickets,
    hold() {
      state.gate = new Promise((resolve) => (state.release = resolve));
    },
    release() {
      state.gate = undefined;
      state.release();
    },
    of: (name) => events.filter((e) => e[0] === name).map((e) => e[1]),
  };
}

async function connectedClient(options) {
  const page = pageClient(options);
  page.client.connect();
  await eventually(() => page.client.state === 'connected', 10_000, 'connected');
  return page;
}

/** Subscribes, collecting each message's `data.n` and each resync. */
async function collect(client, channel) {
  const got = { n: [], resyncs: [] };
  await client.subscribe(channel, {
    message: (data) => got.n.push(data.n),
    resync: (info) => got.resyncs.push(info.reason),
  });
  return got;
}

async function publishRange(channel, from, to) {
  for (let n = from; n <= to; n++) await serverPublish(stack, apiKey, channel, { n });
}

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

describe('reconnecting to a real cluster', () => {
  test('a node SIGKILLed: a new ticket, another node, resume with since — every message exactly once', { timeout: 60_000 }, async () => {
    const page = await connectedClient();
    const { client } = page;
    assert.equal(client.node, 'js-node-1');
    const channel = unique('public:kill-');
    const got = await collect(client, channel);
    await publishRange(channel, 1, 5);
    await eventually(() => got.n.length === 5, 10_000, 'the first five');

    page.hold();
    await stack.nodes[0].kill('SIGKILL');
    await eventually(() => client.state === 'connecting', 10_000, 'the loss noticed');
    assert.equal(page.of('disconnected')[0].code, 1006);
    await publishRange(channel, 6, 20); // while the client is certainly disconnected
    page.release();
    await eventually(() => client.state === 'connected', 15_000, 'reconnected');
    assert.equal(client.node, 'js-node-2');
    await publishRange(channel, 21, 25);
    await eventually(() => got.n.length >= 25, 10_000, 'all 25');
    await new Promise((resolve) => setTimeout(resolve, 300)); // room for a duplicate to show up

    assert.deepEqual(got.n, range(1, 25), 'every message once, in order');
    assert.deepEqual(got.resyncs, []);
    assert.equal(page.tickets(), 2, 'a fresh ticket for the second connection');
    const resumed = page.sent.find((s) => s.socket === 1 && s.frame.action === 'subscribe');
    assert.equal(resumed.frame.since.offset, 5, 'resumed from the last delivered message');
    assert.notEqual(page.sockets[0].protocol, page.sockets[1].protocol, 'two different tickets');
  });

  test('a draining node (SIGTERM) closes with 1001: at once to the other node, nothing lost', { timeout: 60_000 }, async () => {
    const page = await connectedClient();
    const { client } = page;
    assert.equal(client.node, 'js-node-1');
    const channel = unique('public:drain-');
    const got = await collect(client, channel);
    await publishRange(channel, 1, 3);
    await eventually(() => got.n.length === 3, 10_000, 'the first three');
    void stack.nodes[0].kill('SIGTERM'); // drains: closes its sockets with 1001
    await eventually(() => page.of('disconnected').length > 0, 10_000, 'the 1001');
    const [closed] = page.of('disconnected');
    assert.equal(closed.code, 1001);
    assert.equal(closed.delay, 0, 'at once');
    await publishRange(channel, 4, 10);
    await eventually(() => got.n.length >= 10, 15_000, 'all ten');
    assert.deepEqual(got.n, range(1, 10));
    assert.equal(client.node, 'js-node-2');
  });

  test('history that no longer covers the gap: recovered false, a resync event, live delivery goes on', { timeout: 60_000 }, async () => {
    const page = await connectedClient();
    const { client } = page;
    const channel = unique('tiny:gap-'); // history of about five messages
    const got = await collect(client, channel);
    await publishRange(channel, 1, 3);
    await eventually(() => got.n.length === 3, 10_000, 'the first three');
    page.hold();
    page.sockets.at(-1).terminate(); // the network drops it
    await eventually(() => client.state === 'connecting', 10_000, 'the loss noticed');
    await publishRange(channel, 4, 250); // far more than the history keeps
    page.release();
    await eventually(() => got.resyncs.length > 0, 15_000, 'the resync event');
    assert.deepEqual(got.resyncs, ['not_recovered']);
    await serverPublish(stack, apiKey, channel, { n: 251 });
    await eventually(() => got.n.includes(251), 10_000, 'live after the gap');
    assert.deepEqual(got.n, [1, 2, 3, 251]);
    await client.disconnect();
  });

  test('publishes queued while disconnected reach another user on the other node, once', { timeout: 60_000 }, async () => {
    const bob = await createUser(stack, 'bob');
    const bobPage = await connectedClient({ sessionCookie: await login(stack, bob), url: stack.nodes[1].url });
    assert.equal(bobPage.client.node, 'js-node-2');
    const alicePage = await connectedClient({ url: stack.nodes[0].url });
    const channel = unique('public:chat-');
    const got = await collect(bobPage.client, channel);
    await alicePage.client.subscribe(channel);
    const members = await bobPage.client.presence(channel);
    assert.deepEqual(members.map((m) => m.user.username).sort(), [bob.username, user.username].sort());

    alicePage.hold();
    alicePage.sockets.at(-1).terminate();
    await eventually(() => alicePage.client.state === 'connecting', 10_000, 'the loss noticed');
    const acks = [1, 2, 3].map((n) => alicePage.client.publish(channel, { n }));
    alicePage.release();
    const results = await Promise.all(acks);
    assert.deepEqual(results.map((r) => r.duplicate), [false, false, false]);
    await eventually(() => got.n.length >= 3, 10_000, 'bob gets them');
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.deepEqual(got.n, [1, 2, 3]);
    await Promise.all([alicePage.client.disconnect(), bobPage.client.disconnect()]);
  });
});

describe('ending', () => {
  test('logout closes the session\'s socket with 4003: the client stops; a 401 ticket is terminal', { timeout: 30_000 }, async () => {
    const session = await login(stack, user);
    const page = await connectedClient({ sessionCookie: session });
    const response = await fetch(`${stack.authUrl}/v1/logout`, {
      method: 'POST',
      headers: { Cookie: session, Origin: stack.origin },
    });
    assert.equal(response.status, 204);
    await eventually(() => page.client.state === 'disconnected', 10_000, 'the 4003');
    const [closed] = page.of('disconnected');
    assert.equal(closed.code, 4003);
    assert.equal(closed.reconnect, false);
    assert.equal(closed.error.code, 'revoked');
    await new Promise((resolve) => setTimeout(resolve, 1500));
    assert.equal(page.tickets(), 1, 'no retry');

    page.client.connect(); // the page tries again: the session is gone
    await eventually(() => page.of('disconnected').length === 2, 10_000, 'the refusal');
    const refused = page.of('disconnected')[1];
    assert.equal(refused.error.code, 'logged_out');
    assert.equal(refused.error.status, 401);
    assert.equal(page.client.state, 'disconnected');
    assert.equal(page.sockets.length, 1, 'no socket without a ticket');
  });

  test('a client-initiated close completes the handshake: the client\'s code, wasClean true', { timeout: 30_000 }, async () => {
    for (const [code, reason] of [
      [1000, 'client disconnect'],
      [4000, 'bye'],
    ]) {
      const page = await connectedClient();
      const accepted = await metric(stack.nodes[0].metricsUrl, 'ws_handshakes_total', { outcome: 'accepted' });
      assert.ok(accepted > 0);
      const closed = await page.client.disconnect(code, reason);
      assert.deepEqual(closed, { code, reason, wasClean: true });
      assert.equal(page.of('disconnected').at(-1).wasClean, true);
    }
  });

  test('a raw ws socket closed by the client gets its close frame back', { timeout: 30_000 }, async () => {
    const ticket = await fetchTicket({ url: `${stack.authUrl}/v1/tickets`, headers: { Cookie: cookie, Origin: stack.origin } })();
    const socket = new WebSocket(stack.nodes[1].url, [`ticket.${ticket.ticket}`], { origin: stack.origin });
    await new Promise((resolve, reject) => {
      socket.once('message', resolve);
      socket.once('error', reject);
    });
    const closed = new Promise((resolve) => socket.addEventListener('close', (e) => resolve(e)));
    socket.close(4321, 'done');
    const event = await closed;
    assert.equal(event.code, 4321);
    assert.equal(event.reason, 'done');
    assert.equal(event.wasClean, true);
  });
});

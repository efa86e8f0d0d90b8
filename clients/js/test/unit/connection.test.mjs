// The connection state machine against a fake WebSocket and fake timers:
// tickets, backoff, close codes, heartbeat, online/offline.
import assert from 'node:assert/strict';
import { afterEach, describe, mock, test } from 'node:test';
import { backoffDelay } from '../../dist/tessera.js';
import { connected, flush, setup, teardown } from '../support/fake.mjs';

let t;
afterEach(() => {
  teardown(t);
  t = undefined;
});

/** Advances fake time by `ms`, then lets the async ticket step run. */
async function tick(ms) {
  mock.timers.tick(ms);
  await flush();
}

describe('backoff', () => {
  test('stays within the upper half of a doubling ceiling, capped at 20 s', () => {
    for (let attempt = 0; attempt < 40; attempt++) {
      const ceiling = Math.min(20_000, 500 * 2 ** attempt);
      assert.equal(backoffDelay(attempt, 500, 20_000, () => 0), ceiling / 2);
      assert.ok(backoffDelay(attempt, 500, 20_000, () => 0.999999) <= ceiling);
    }
    assert.equal(backoffDelay(0, 500, 20_000, () => 0), 250);
    assert.equal(backoffDelay(100, 500, 20_000, () => 0.5), 15_000);
  });

  test('is jittered: a thousand tabs do not come back in step', () => {
    const delays = Array.from({ length: 1000 }, () => backoffDelay(3, 500, 20_000));
    assert.ok(Math.min(...delays) >= 2000 && Math.max(...delays) <= 4000);
    assert.ok(new Set(delays).size > 900, 'delays are spread');
    const mean = delays.reduce((a, b) => a + b) / delays.length;
    assert.ok(mean > 2800 && mean < 3200, `mean ${mean} near the middle`);
  });
});

describe('connecting', () => {
  test('goes disconnected -> connecting -> connected and exposes the node', async () => {
    t = setup();
    assert.equal(t.client.state, 'disconnected');
    t.client.connect();
    assert.equal(t.client.state, 'connecting');
    await flush();
    const socket = t.last();
    assert.equal(socket.url, 'ws://node-1/ws');
    assert.deepEqual(socket.protocols, ['ticket.ticket-1'], 'the ticket travels as a subprotocol');
    socket.accept('node-7');
    assert.equal(t.client.state, 'connected');
    assert.equal(t.client.node, 'node-7');
    assert.equal(t.client.user.username, 'alice');
    assert.deepEqual(t.of('state'), ['connecting', 'connected']);
    assert.deepEqual(t.of('connected'), [{ node: 'node-7', connectionId: 'node-7:1', user: t.client.user }]);
  });

  test('uses the ticket answer\'s ws_url when no url is given', async () => {
    t = setup({ url: undefined, getTicket: async () => ({ ticket: 'abc', ws_url: 'ws://proxy/ws' }) });
    t.client.connect();
    await flush();
    assert.equal(t.last().url, 'ws://proxy/ws');
    assert.deepEqual(t.last().protocols, ['ticket.abc']);
  });

  test('mints a new ticket for every attempt', async () => {
    t = setup();
    t.client.connect();
    await flush();
    for (let i = 1; i <= 4; i++) {
      assert.deepEqual(t.last().protocols, [`ticket.ticket-${i}`]);
      t.last().end(1006); // refused before the welcome (a browser sees no status)
      await tick(20_000);
    }
    assert.equal(t.tickets(), 5);
    assert.equal(new Set(t.sockets.map((s) => s.protocols[0])).size, 5);
  });

  test('backs off exponentially between failed attempts, and starts over after a welcome', async () => {
    t = setup();
    t.client.connect();
    await flush();
    for (let attempt = 0; attempt < 8; attempt++) {
      const ceiling = Math.min(20_000, 500 * 2 ** attempt);
      const before = t.sockets.length;
      t.last().end(1006);
      await tick(ceiling / 2 - 1);
      assert.equal(t.sockets.length, before, `attempt ${attempt}: not before ${ceiling / 2} ms`);
      await tick(ceiling / 2 + 1);
      assert.equal(t.sockets.length, before + 1, `attempt ${attempt}: by ${ceiling} ms`);
    }
    const delays = t.of('disconnected').map((d) => d.delay);
    assert.ok(delays.every((d, i) => d >= Math.min(20_000, 500 * 2 ** i) / 2));
    t.last().accept();
    t.last().end(1006);
    await tick(500);
    assert.equal(t.client.state, 'connecting');
    assert.equal(t.sockets.length, 10, 'after a welcome, the first retry is within 0.5 s again');
  });

  test('a connection without a welcome in time is given up', async () => {
    t = setup({ connectTimeout: 5000 });
    t.client.connect();
    await flush();
    await tick(5000);
    assert.equal(t.last().closedWith?.reason, 'abandoned');
    assert.equal(t.of('disconnected')[0].reason, 'connect timeout');
    await tick(500);
    assert.equal(t.sockets.length, 2);
  });

  test('rotates through a list of urls after each failure', async () => {
    t = setup({ url: ['ws://a/ws', 'ws://b/ws'] });
    t.client.connect();
    await flush();
    t.last().end(1006);
    await tick(500);
    t.last().end(1006);
    await tick(1000);
    assert.deepEqual(t.sockets.map((s) => s.url), ['ws://a/ws', 'ws://b/ws', 'ws://a/ws']);
  });
});

describe('close codes', () => {
  test('1001 (node going away): reconnects at once with a new ticket, to another node', async () => {
    t = await connected({ url: ['ws://a/ws', 'ws://b/ws'] });
    t.last().end(1001, 'node shutting down');
    await tick(0);
    assert.equal(t.sockets.length, 2);
    assert.equal(t.last().url, 'ws://b/ws');
    assert.deepEqual(t.last().protocols, ['ticket.ticket-2']);
    // Only the first retry in a row is immediate.
    t.last().end(1001);
    await tick(0);
    assert.equal(t.sockets.length, 2);
    await tick(1000);
    assert.equal(t.sockets.length, 3);
  });

  test('4001 (credential expired): a new ticket at once', async () => {
    t = await connected();
    t.last().end(4001, 'credential expired');
    await tick(0);
    assert.deepEqual(t.last().protocols, ['ticket.ticket-2']);
  });

  test('4003 (revoked): stops, reports, never retries', async () => {
    t = await connected();
    const sub = t.client.subscribe('public:room');
    t.last().ack('subscribe', { channel: 'public:room' });
    await sub;
    const pending = t.client.publish('public:room', { text: 'hi' });
    pending.catch(() => {}); // looked at below
    t.last().end(4003, 'session revoked');
    assert.equal(t.client.state, 'disconnected');
    const [info] = t.of('disconnected');
    assert.equal(info.code, 4003);
    assert.equal(info.reconnect, false);
    assert.equal(info.error.code, 'revoked');
    assert.equal(t.client.subscription('public:room').state, 'unsubscribed');
    await assert.rejects(pending, { code: 'revoked' });
    await tick(120_000);
    assert.equal(t.sockets.length, 1);
    assert.equal(t.tickets(), 1);
  });

  test('4008 (rate limited, slow reader): backs off from several seconds', async () => {
    t = await connected();
    t.last().end(4008, 'message rate exceeded');
    await tick(1999);
    assert.equal(t.sockets.length, 1, 'not within 2 s');
    await tick(2001);
    assert.equal(t.sockets.length, 2, 'within 4 s');
  });

  test('1006 (connection lost): reconnects within half a second', async () => {
    t = await connected();
    t.last().end(1006);
    await tick(249);
    assert.equal(t.sockets.length, 1);
    await tick(251);
    assert.equal(t.sockets.length, 2);
  });
});

describe('tickets', () => {
  test('a getTicket answering 401 is terminal: logged out', async () => {
    const error = Object.assign(new Error('no session'), { status: 401 });
    t = setup({ getTicket: async () => Promise.reject(error) });
    t.client.connect();
    await flush();
    assert.equal(t.client.state, 'disconnected');
    const [info] = t.of('disconnected');
    assert.equal(info.reconnect, false);
    assert.equal(info.error.code, 'logged_out');
    assert.equal(info.error.status, 401);
    await tick(60_000);
    assert.equal(t.sockets.length, 0);
  });

  test('a 403 is terminal too', async () => {
    t = setup({ getTicket: async () => Promise.reject(Object.assign(new Error('origin'), { status: 403 })) });
    t.client.connect();
    await flush();
    assert.equal(t.client.state, 'disconnected');
    assert.equal(t.of('disconnected')[0].error.code, 'ticket_refused');
  });

  test('other failures are retried with backoff, honouring Retry-After', async () => {
    let calls = 0;
    t = setup({
      getTicket: async () => {
        calls++;
        if (calls === 1) throw new TypeError('fetch failed');
        if (calls === 2) throw Object.assign(new Error('slow down'), { status: 429, retryAfter: 7 });
        return 'ok';
      },
    });
    t.client.connect();
    await flush();
    assert.equal(t.client.state, 'connecting');
    await tick(500);
    assert.equal(calls, 2);
    await tick(6900);
    assert.equal(calls, 2, 'Retry-After: 7 is respected');
    await tick(100);
    assert.equal(calls, 3);
    assert.deepEqual(t.last().protocols, ['ticket.ok']);
  });
});

describe('liveness', () => {
  test('pings after silence; an answered ping keeps the connection', async () => {
    t = await connected({ heartbeatInterval: 25_000, heartbeatTimeout: 10_000 });
    await tick(24_999);
    assert.equal(t.last().frames('ping').length, 0);
    await tick(1);
    assert.equal(t.last().frames('ping').length, 1);
    t.last().ack('ping');
    await tick(30_000);
    assert.equal(t.client.state, 'connected');
    assert.equal(t.last().frames('ping').length, 2);
  });

  test('any frame counts as heard', async () => {
    t = await connected({ heartbeatInterval: 25_000 });
    for (let i = 0; i < 10; i++) {
      await tick(20_000);
      t.last().receive({ type: 'message', channel: 'user:x', data: i });
    }
    assert.equal(t.last().frames('ping').length, 0);
  });

  test('an unanswered ping means a dead connection: abandon it and reconnect', async () => {
    t = await connected({ heartbeatInterval: 25_000, heartbeatTimeout: 10_000 });
    const dead = t.last();
    await tick(25_000);
    assert.equal(t.last().frames('ping').length, 1);
    await tick(9_999);
    assert.equal(t.client.state, 'connected');
    await tick(1);
    assert.equal(t.client.state, 'connecting');
    assert.equal(dead.closedWith?.reason, 'abandoned');
    assert.equal(t.of('disconnected')[0].reason, 'no heartbeat');
    dead.receive({ type: 'ack', id: 1 }); // too late: ignored
    await tick(500);
    assert.equal(t.sockets.length, 2);
    t.last().accept();
    assert.equal(t.client.state, 'connected');
  });
});

describe('online and offline', () => {
  test('offline drops the connection and waits; online reconnects at once', async () => {
    const network = new EventTarget();
    t = await connected({ network });
    network.dispatchEvent(new Event('offline'));
    assert.equal(t.client.state, 'connecting');
    assert.equal(t.sockets[0].closedWith?.reason, 'abandoned');
    await tick(300_000);
    assert.equal(t.sockets.length, 1, 'no attempt while offline');
    network.dispatchEvent(new Event('online'));
    await flush();
    assert.equal(t.sockets.length, 2, 'online: at once');
    t.last().accept();
    assert.equal(t.client.state, 'connected');
  });

  test('online cuts a long backoff short', async () => {
    const network = new EventTarget();
    t = setup({ network });
    t.client.connect();
    await flush();
    for (let i = 0; i < 6; i++) {
      t.last().end(1006);
      await tick(20_000);
    }
    t.last().end(1006); // now waiting up to 20 s
    const before = t.sockets.length;
    network.dispatchEvent(new Event('online'));
    await flush();
    assert.equal(t.sockets.length, before + 1);
  });

  test('disconnect() stops listening to the network', async () => {
    const network = new EventTarget();
    t = await connected({ network });
    void t.client.disconnect();
    network.dispatchEvent(new Event('online'));
    await flush();
    assert.equal(t.sockets.length, 1);
  });
});

describe('disconnect()', () => {
  test('closes with the code given and reports the close event', async () => {
    t = await connected();
    const socket = t.last();
    const closed = t.client.disconnect(4000, 'bye');
    assert.equal(t.client.state, 'disconnected');
    assert.deepEqual(socket.closedWith, { code: 4000, reason: 'bye' });
    socket.end(4000, 'bye', true); // the node echoes the close
    assert.deepEqual(await closed, { code: 4000, reason: 'bye', wasClean: true });
    const info = t.of('disconnected').at(-1);
    assert.equal(info.reconnect, false);
    assert.equal(info.wasClean, true);
    await tick(60_000);
    assert.equal(t.sockets.length, 1);
  });

  test('refuses close codes a browser refuses', async () => {
    t = await connected();
    assert.throws(() => t.client.disconnect(1001), RangeError);
    assert.equal(t.client.state, 'connected');
  });

  test('connect() after disconnect() starts again', async () => {
    t = await connected();
    void t.client.disconnect();
    t.client.connect();
    await flush();
    t.last().accept();
    assert.equal(t.client.state, 'connected');
    assert.equal(t.tickets(), 2);
  });
});

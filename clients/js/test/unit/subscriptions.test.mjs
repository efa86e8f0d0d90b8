// Subscriptions against a fake WebSocket: states, resume with `since`,
// de-duplication by offset, resync events, and the requests' promises.
import assert from 'node:assert/strict';
import { afterEach, describe, mock, test } from 'node:test';
import { connected, flush, teardown } from '../support/fake.mjs';

let t;
afterEach(() => {
  teardown(t);
  t = undefined;
});

async function tick(ms) {
  mock.timers.tick(ms);
  await flush();
}

const message = (offset, epoch = 'e1', channel = 'public:room') => ({
  type: 'message',
  channel,
  epoch,
  offset,
  data: { n: offset },
});

/** A client subscribed to public:room, recording what its handlers get. */
async function subscribed(options) {
  t = await connected(options);
  const got = { messages: [], states: [], resyncs: [], joins: [] };
  const pending = t.client.subscribe('public:room', {
    message: (data, m) => got.messages.push(m.offset ?? data),
    state: (state) => got.states.push(state),
    resync: (info) => got.resyncs.push(info.reason),
    join: (user) => got.joins.push(user.username),
  });
  t.last().ack('subscribe', { channel: 'public:room' });
  got.sub = await pending;
  return got;
}

/** Loses the connection and completes the next handshake. */
async function reconnect() {
  t.last().end(1006);
  await tick(500);
  t.last().accept('node-2');
}

describe('subscribe', () => {
  test('goes unsubscribed -> subscribing -> subscribed and resolves on the ack', async () => {
    const got = await subscribed();
    assert.deepEqual(got.states, ['subscribing', 'subscribed']);
    assert.equal(got.sub.state, 'subscribed');
    assert.deepEqual(t.last().frames('subscribe')[0], { action: 'subscribe', channel: 'public:room', id: 1 });
    assert.deepEqual(
      t.of('subscription'),
      ['public:room', 'public:room'],
      'the client emits each subscription state too',
    );
  });

  test('a refusal rejects with the node\'s code and forgets the subscription', async () => {
    t = await connected();
    const pending = t.client.subscribe('broadcast:x:y');
    const frame = t.last().frames('subscribe')[0];
    t.last().receive({ type: 'error', id: frame.id, code: 'forbidden', message: 'no' });
    await assert.rejects(pending, { code: 'forbidden' });
    assert.equal(t.client.subscription('broadcast:x:y'), undefined);
    t.client.subscribe('public:room').catch(() => {});
    await assert.rejects(t.client.subscribe('public:room'), { code: 'already_subscribed' });
  });

  test('subscribing while connecting waits for the connection', async () => {
    t = await connected();
    t.last().end(1006);
    const pending = t.client.subscribe('public:later');
    assert.equal(t.client.subscription('public:later').state, 'subscribing');
    await tick(500);
    t.last().accept();
    t.last().ack('subscribe', { channel: 'public:later' });
    assert.equal((await pending).state, 'subscribed');
  });

  test('join and leave go to the handlers', async () => {
    const got = await subscribed();
    t.last().receive({ type: 'join', channel: 'public:room', user: { id: 'b', username: 'bob' } });
    assert.deepEqual(got.joins, ['bob']);
  });
});

describe('resume', () => {
  test('resubscribes with since = the last delivered position; nothing twice, nothing lost', async () => {
    const got = await subscribed();
    for (const n of [1, 2, 3]) t.last().receive(message(n));
    await reconnect();
    assert.equal(got.sub.state, 'subscribing');
    const frame = t.last().frames('subscribe')[0];
    assert.deepEqual(frame.since, { epoch: 'e1', offset: 3 });
    t.last().ack('subscribe', { channel: 'public:room', recovered: true, epoch: 'e1', offset: 6 });
    // The replay, overlapping what was delivered, then live.
    for (const n of [2, 3, 4, 5, 6, 6, 7]) t.last().receive(message(n));
    assert.deepEqual(got.messages, [1, 2, 3, 4, 5, 6, 7]);
    assert.deepEqual(got.resyncs, []);
    assert.equal(got.sub.state, 'subscribed');
    assert.deepEqual(got.sub.position, { epoch: 'e1', offset: 7 });
  });

  test('drops a live duplicate within a connection too', async () => {
    const got = await subscribed();
    for (const n of [1, 2, 2, 1, 3]) t.last().receive(message(n));
    assert.deepEqual(got.messages, [1, 2, 3]);
  });

  test('a new epoch starts over', async () => {
    const got = await subscribed();
    t.last().receive(message(5, 'e1'));
    t.last().receive(message(1, 'e2'));
    assert.deepEqual(got.messages, [5, 1]);
  });

  test('recovered: false tells the application, and goes on from the ack\'s position', async () => {
    const got = await subscribed();
    t.last().receive(message(3));
    await reconnect();
    t.last().ack('subscribe', { channel: 'public:room', recovered: false, epoch: 'e2', offset: 40 });
    assert.deepEqual(got.resyncs, ['not_recovered']);
    assert.deepEqual(t.of('resync'), [{ channel: 'public:room', reason: 'not_recovered' }]);
    t.last().receive(message(40, 'e2')); // at the ack's position: already counted
    t.last().receive(message(41, 'e2'));
    assert.deepEqual(got.messages, [3, 41]);
  });

  test('a recovery frame (history lost under a replay) tells the application', async () => {
    const got = await subscribed();
    t.last().receive({ type: 'recovery', channel: 'public:room', recovered: false });
    assert.deepEqual(got.resyncs, ['history_lost']);
  });

  test('a resume with no position to resume from tells the application', async () => {
    const got = await subscribed();
    await reconnect();
    assert.equal(t.last().frames('subscribe')[0].since, undefined);
    t.last().ack('subscribe', { channel: 'public:room' });
    assert.deepEqual(got.resyncs, ['no_position']);
  });

  test('a subscribe ack that carries the position is used as one', async () => {
    t = await connected();
    const pending = t.client.subscribe('public:room');
    t.last().ack('subscribe', { channel: 'public:room', epoch: 'e9', offset: 12 });
    await pending;
    await reconnect();
    assert.deepEqual(t.last().frames('subscribe')[0].since, { epoch: 'e9', offset: 12 });
  });

  test('a channel without history yet resumes from its start', async () => {
    t = await connected();
    const pending = t.client.subscribe('public:room');
    t.last().ack('subscribe', { channel: 'public:room', epoch: '', offset: 0 });
    await pending;
    await reconnect();
    assert.deepEqual(t.last().frames('subscribe')[0].since, { epoch: '', offset: 0 });
  });

  test('resubscribes every channel, then sends what waited', async () => {
    t = await connected();
    for (const c of ['public:a', 'public:b']) {
      const p = t.client.subscribe(c);
      t.last().ack('subscribe', { channel: c });
      await p;
    }
    t.last().end(1006);
    const published = t.client.publish('public:a', 'queued');
    await tick(500);
    t.last().accept();
    assert.deepEqual(
      t.last().sent.map((f) => `${f.action} ${f.channel}`),
      ['subscribe public:a', 'subscribe public:b', 'publish public:a'],
    );
    t.last().ack('publish', { channel: 'public:a', epoch: 'e', offset: 1 });
    assert.deepEqual(await published, { channel: 'public:a', epoch: 'e', offset: 1, duplicate: false });
  });

  test('unsubscribe stops delivery at once', async () => {
    const got = await subscribed();
    const done = t.client.unsubscribe('public:room');
    t.last().receive(message(1));
    t.last().ack('unsubscribe', { channel: 'public:room' });
    await done;
    assert.deepEqual(got.messages, []);
    assert.equal(got.sub.state, 'unsubscribed');
    await reconnect();
    assert.equal(t.last().frames('subscribe').length, 0, 'not resubscribed');
  });
});

describe('publish and presence', () => {
  test('publish resolves with the ack\'s position; an error frame rejects', async () => {
    t = await connected();
    const ok = t.client.publish('public:room', { text: 'hi' });
    const frame = t.last().ack('publish', { channel: 'public:room', epoch: 'e', offset: 4, duplicate: true });
    assert.match(frame.idempotency_key, /^[0-9a-f]{32}$/, 'a random idempotency key by default');
    assert.deepEqual(frame.data, { text: 'hi' });
    assert.deepEqual(await ok, { channel: 'public:room', epoch: 'e', offset: 4, duplicate: true });
    const refused = t.client.publish('broadcast:news', 1);
    const sent = t.last().frames('publish').at(-1);
    t.last().receive({ type: 'error', id: sent.id, code: 'forbidden', message: 'server only' });
    await assert.rejects(refused, { code: 'forbidden', message: 'server only' });
  });

  test('queues while disconnected, bounded: an error when full', async () => {
    t = await connected({ maxQueue: 3 });
    t.last().end(1006);
    const queued = [1, 2, 3].map((n) => t.client.publish('public:room', n));
    await assert.rejects(t.client.publish('public:room', 4), { code: 'queue_full' });
    await tick(500);
    t.last().accept();
    const frames = t.last().frames('publish');
    assert.deepEqual(frames.map((f) => f.data), [1, 2, 3]);
    for (const f of frames) t.last().receive({ type: 'ack', id: f.id, channel: 'public:room', epoch: 'e', offset: f.data });
    assert.deepEqual((await Promise.all(queued)).map((r) => r.offset), [1, 2, 3]);
  });

  test('a publish whose answer was lost is sent again with the same key', async () => {
    t = await connected();
    const pending = t.client.publish('public:room', 'x');
    const first = t.last().frames('publish')[0];
    await reconnect();
    const again = t.last().frames('publish')[0];
    assert.equal(again.idempotency_key, first.idempotency_key);
    t.last().ack('publish', { channel: 'public:room', epoch: 'e', offset: 1, duplicate: true });
    assert.equal((await pending).duplicate, true);
  });

  test('without a key, a publish whose answer was lost is rejected, not repeated', async () => {
    t = await connected();
    const pending = t.client.publish('public:room', 'x', { idempotencyKey: null });
    assert.equal(t.last().frames('publish')[0].idempotency_key, undefined);
    t.last().end(1006);
    await assert.rejects(pending, { code: 'disconnected' });
    await tick(500);
    t.last().accept();
    assert.equal(t.last().frames('publish').length, 0);
  });

  test('a namespace without history: the default key is dropped, the publish goes through', async () => {
    t = await connected();
    const pending = t.client.publish('nohistory:room', 'x');
    const keyed = t.last().frames('publish')[0];
    t.last().receive({ type: 'error', id: keyed.id, code: 'idempotency_unsupported', message: '' });
    await flush();
    const plain = t.last().frames('publish')[1];
    assert.equal(plain.idempotency_key, undefined);
    t.last().ack('publish', { channel: 'nohistory:room' });
    assert.deepEqual(await pending, { channel: 'nohistory:room', duplicate: false });
  });

  test('too big a frame is refused before it is sent', async () => {
    t = await connected({ maxMessageBytes: 1000 });
    await assert.rejects(t.client.publish('public:room', 'x'.repeat(1000)), { code: 'too_big' });
    assert.equal(t.last().frames('publish').length, 0);
  });

  test('a rate_limited error (no id) belongs to the oldest unanswered request, which is retried', async () => {
    t = await connected();
    const a = t.client.publish('public:room', 'a');
    const b = t.client.publish('public:room', 'b');
    t.last().receive({ type: 'error', code: 'rate_limited', message: 'slow down' });
    const [fa, fb] = t.last().frames('publish');
    t.last().receive({ type: 'ack', id: fb.id, channel: 'public:room', epoch: 'e', offset: 1 });
    assert.equal((await b).offset, 1);
    await tick(2000);
    const retried = t.last().frames('publish').at(-1);
    assert.equal(retried.data, 'a');
    assert.equal(retried.idempotency_key, fa.idempotency_key);
    t.last().ack('publish', { channel: 'public:room', epoch: 'e', offset: 2 });
    assert.equal((await a).offset, 2);
  });

  test('presence resolves with the members', async () => {
    t = await connected();
    const pending = t.client.presence('public:room');
    const frame = t.last().frames('presence')[0];
    const members = [{ user: { id: 'a', username: 'alice' }, connections: 2 }];
    t.last().receive({ type: 'presence', id: frame.id, channel: 'public:room', members });
    assert.deepEqual(await pending, members);
  });

  test('disconnect() rejects what waits', async () => {
    t = await connected();
    t.last().end(1006);
    const queued = t.client.publish('public:room', 1);
    void t.client.disconnect();
    await assert.rejects(queued, { code: 'disconnected' });
    await assert.rejects(t.client.publish('public:room', 2), { code: 'disconnected' });
  });

  test('messages on channels without a subscription (the user channel) reach the client event', async () => {
    t = await connected();
    t.last().receive({ type: 'message', channel: 'user:me', epoch: 'u', offset: 1, data: 'hello' });
    assert.deepEqual(t.of('message'), [{ channel: 'user:me', epoch: 'u', offset: 1, data: 'hello' }]);
  });
});

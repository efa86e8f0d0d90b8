// The demo (clients/demo) in headless Chromium against real services:
// auth-service and two ws-nodes behind nginx running the repository's proxy
// config (as docker-compose.yml runs them), all started here. The pages come
// from nginx (the origin in ALLOWED_ORIGINS), which spreads WebSockets over
// the nodes by least connections — so two tabs opened one after the other
// land on different nodes, and a tab whose node dies is reconnected by nginx
// to the one left.
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import { count, joinRoom, launch, logIn, messages, newTab, say, text, waitText } from '../support/browser.mjs';
import { createUser, eventually, metric, ROOT, startStack } from '../support/stack.mjs';

const ARTIFACTS = process.env.TESSERA_ARTIFACTS || join(ROOT, 'clients/js/test-artifacts');

let stack;
let browser;
const open = [];

before(async () => {
  [stack, browser] = await Promise.all([startStack({ proxy: true }), launch()]);
});

// A node a test stopped runs again, even when the test failed half-way.
afterEach(async () => {
  for (const node of stack.nodes) await node.ensureRunning();
});

after(async () => {
  await browser?.close();
  await stack?.stop();
});

/** Closes the test's browser contexts, then waits until the nodes hold no socket. */
async function settle() {
  for (const ctx of open.splice(0)) await ctx.close();
  await eventually(async () => {
    const held = await Promise.all(stack.nodes.map((node) => metric(node.metricsUrl, 'ws_connections')));
    return held.every((n) => n === 0);
  }, 15_000, 'no sockets left on the nodes');
}

async function tab(url = stack.proxyUrl, options) {
  const t = await newTab(browser, url, options);
  open.push(t.context);
  return t;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const unique = (prefix) => `${prefix}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;

/** The users' names, in the presence list. */
const presence = async (page) => (await page.getByTestId('presence').locator('li').allTextContents()).sort();

describe('the demo in Chromium', () => {
  test('log in (HttpOnly cookie), connect; two browsers on different nodes chat', { timeout: 90_000 }, async () => {
    await settle();
    const [alice, bob] = await Promise.all([
      createUser(stack, 'alice', { exact: true }),
      createUser(stack, 'bob', { exact: true }),
    ]);
    const a = await tab();
    await logIn(a.page, alice);
    // The session cookie exists, and the page's script cannot read it.
    const [cookie] = (await a.context.cookies()).filter((c) => c.name === '__Host-session');
    assert.ok(cookie, 'the login set __Host-session');
    assert.equal(cookie.httpOnly, true);
    assert.equal(cookie.secure, true);
    assert.equal(cookie.sameSite, 'Lax');
    assert.equal(cookie.path, '/');
    const visible = await a.page.evaluate(() => document.cookie);
    assert.ok(!visible.includes('session'), `document.cookie is ${JSON.stringify(visible)}`);

    const b = await tab();
    await logIn(b.page, bob);
    const nodeA = await text(a.page, 'node');
    const nodeB = await text(b.page, 'node');
    assert.match(nodeA, /^js-node-[12]$/);
    assert.match(nodeB, /^js-node-[12]$/);
    assert.notEqual(nodeA, nodeB, 'the two browsers are on different nodes');

    const room = 'demo'; // a fresh database: nobody else is in it
    await Promise.all([joinRoom(a.page, room), joinRoom(b.page, room)]);
    const both = [alice.username, bob.username].sort();
    for (const t of [a, b]) {
      await eventually(async () => JSON.stringify(await presence(t.page)) === JSON.stringify(both), 10_000, 'presence of both');
    }
    await say(a.page, `Hi Bob! This tab is on ${nodeA}.`);
    await eventually(async () => (await count(b.page, `This tab is on ${nodeA}`)) === 1, 10_000, 'bob gets it');
    await say(b.page, `Hello Alice, here it is ${nodeB}: Redis carries us across.`);
    await eventually(async () => (await count(a.page, `here it is ${nodeB}`)) === 1, 10_000, 'alice gets it');
    await screenshot(a.page, b.page);
    // Text is text: markup in a message is shown, never run.
    await say(a.page, '<img src=x onerror="document.title=1">');
    await eventually(async () => (await count(b.page, '<img src=x')) === 1, 10_000, 'markup as text');
    assert.equal(await b.page.getByTestId('messages').locator('img').count(), 0);
    await sleep(300);
    for (const t of [a, b]) assert.equal((await messages(t.page)).length, 3, 'each message once');
    assert.deepEqual([...a.console, ...b.console].filter((line) => line.startsWith('pageerror')), []);
  });

  test('its node killed, a tab reconnects by itself with a new ticket and shows what was sent meanwhile, once', { timeout: 90_000 }, async () => {
    await settle();
    const [alice, bob] = await Promise.all([createUser(stack, 'alice'), createUser(stack, 'bob')]);
    const a = await tab();
    await logIn(a.page, alice);
    const b = await tab();
    await logIn(b.page, bob);
    const room = unique('kill');
    await Promise.all([joinRoom(a.page, room), joinRoom(b.page, room)]);
    for (const t of [a, b]) {
      await eventually(async () => (await presence(t.page)).length === 2, 10_000, 'both in the room');
    }
    await say(b.page, 'before the kill');
    await eventually(async () => (await count(a.page, 'before the kill')) === 1, 10_000, 'alice has it');

    const nodeA = await text(a.page, 'node');
    const victim = stack.nodes.find((node) => node.id === nodeA);
    assert.notEqual(nodeA, await text(b.page, 'node'), 'bob is on the node that stays');
    // Alice's next ticket waits until bob has spoken: what he says is
    // certainly said while alice is disconnected.
    let release;
    const gate = new Promise((resolve) => (release = resolve));
    await a.context.route('**/v1/tickets', async (route) => {
      await gate;
      await route.continue();
    });
    const ticketsBefore = a.tickets;
    const framesBefore = a.frames.length;
    await victim.kill('SIGKILL');
    await waitText(a.page, 'connection-state', (t) => t.startsWith('connecting'));
    const said = [1, 2, 3, 4, 5].map((n) => `meanwhile ${n}`);
    for (const line of said) await say(b.page, line);
    for (const line of said) {
      await eventually(async () => (await count(b.page, line)) === 1, 10_000, `bob sees "${line}"`);
    }
    assert.equal(await count(a.page, 'meanwhile'), 0, 'alice is really disconnected');
    release();

    await waitText(a.page, 'connection-state', 'connected', 20_000);
    assert.notEqual(await text(a.page, 'node'), nodeA, 'on the node that is left');
    for (const line of said) {
      await eventually(async () => (await count(a.page, line)) >= 1, 10_000, `alice sees "${line}"`);
    }
    await sleep(500); // room for a duplicate to show up
    for (const line of [...said, 'before the kill']) assert.equal(await count(a.page, line), 1, `"${line}" once`);
    assert.ok(a.tickets > ticketsBefore, 'a new ticket');
    const resumed = a.frames
      .slice(framesBefore)
      .map((f) => JSON.parse(f.payload))
      .find((f) => f.action === 'subscribe' && f.channel === `public:${room}`);
    assert.ok(resumed?.since, `resubscribed with since: ${JSON.stringify(resumed)}`);

    await a.context.unroute('**/v1/tickets');
  });

  test('logging out in one tab closes the session\'s socket in the other (4003), and the page shows it', { timeout: 60_000 }, async () => {
    await settle();
    const carol = await createUser(stack, 'carol');
    const first = await tab();
    await logIn(first.page, carol);
    // A second tab of the same browser: the same session, logged in already.
    const second = await tab(stack.proxyUrl, { context: first.context });
    await waitText(second.page, 'connection-state', 'connected');
    const secondTickets = second.tickets;

    await first.page.getByTestId('logout').click();
    const state = await waitText(second.page, 'connection-state', (t) => t.includes('4003'));
    assert.match(state, /logged out \(4003\)/);
    assert.match(await text(second.page, 'error'), /logged out \(4003\)/);
    assert.equal(await second.page.getByTestId('username').isVisible(), true, 'the login form is back');
    assert.match(await text(first.page, 'connection-state'), /logged out/);
    await sleep(1500);
    assert.equal(second.tickets, secondTickets, 'no retry after 4003');
    await second.page.reload();
    await second.page.getByTestId('username').waitFor();
    assert.equal(await second.page.getByTestId('message-input').isVisible(), false, 'still logged out');
  });

  test('cross-site WebSocket hijacking: a page on another origin gets no socket and no ticket with the victim\'s cookie', { timeout: 60_000 }, async () => {
    await settle();
    const dave = await createUser(stack, 'dave');
    const victim = await tab();
    await logIn(victim.page, dave);

    // The attacker's page: same host, another port (same site, so the
    // SameSite=Lax cookie does go along; only the Origin differs).
    const evil = createServer((_, res) => {
      res.writeHead(200, { 'Content-Type': 'text/html' });
      res.end('<!doctype html><title>definitely not evil</title><p>Win a prize!</p>');
    });
    await new Promise((resolve) => evil.listen(0, '127.0.0.1', resolve));
    try {
      const page = await victim.context.newPage(); // the victim's browser, with the cookie
      await page.goto(`http://127.0.0.1:${evil.address().port}/`);
      const sum = async (name, labels) =>
        (await Promise.all(stack.nodes.map((node) => metric(node.metricsUrl, name, labels)))).reduce((x, y) => x + y);
      const before = {
        refused: await sum('ws_handshakes_total', { outcome: 'origin_not_allowed' }),
        accepted: await sum('ws_handshakes_total', { outcome: 'accepted' }),
        minted: await metric(stack.authMetricsUrl, 'tickets_minted_total'),
        mintRefused: await metric(stack.authMetricsUrl, 'http_requests_total', { route: '/v1/tickets', status: '4xx' }),
      };
      const wsUrls = [...stack.nodes.map((node) => node.url), `ws://127.0.0.1:${new URL(stack.proxyUrl).port}/ws`];
      const ticketUrls = [`${stack.proxyUrl}/v1/tickets`, `${stack.authUrl}/v1/tickets`];
      const result = await page.evaluate(
        async ({ wsUrls, ticketUrls }) => {
          const socket = (url) =>
            new Promise((resolve) => {
              const ws = new WebSocket(url);
              ws.onopen = () => resolve('open');
              ws.onclose = (e) => resolve(`closed ${e.code}`);
              setTimeout(() => resolve('no answer'), 5000);
            });
          const mint = async (url, mode) => {
            try {
              const response = await fetch(url, { method: 'POST', credentials: 'include', mode });
              return `${response.type} ${response.status} ${await response.text()}`;
            } catch (e) {
              return `blocked: ${e.name}`;
            }
          };
          return {
            sockets: await Promise.all(wsUrls.map((url) => socket(url))),
            cors: await Promise.all(ticketUrls.map((url) => mint(url, 'cors'))),
            noCors: await Promise.all(ticketUrls.map((url) => mint(url, 'no-cors'))),
          };
        },
        { wsUrls, ticketUrls },
      );
      // In the attacker's page: no socket opened, no ticket readable.
      assert.deepEqual(result.sockets, ['closed 1006', 'closed 1006', 'closed 1006']);
      assert.deepEqual(result.cors, ['blocked: TypeError', 'blocked: TypeError']);
      assert.deepEqual(result.noCors, ['opaque 0 ', 'opaque 0 '], 'no-cors: an opaque answer, nothing to read');
      // And on the servers: each handshake came with the cookie and was
      // refused for its Origin; each mint was refused (403), none minted.
      await eventually(async () => (await sum('ws_handshakes_total', { outcome: 'origin_not_allowed' })) === before.refused + 3, 5000, 'three refusals counted');
      assert.equal(await sum('ws_handshakes_total', { outcome: 'accepted' }), before.accepted);
      assert.equal(await metric(stack.authMetricsUrl, 'tickets_minted_total'), before.minted, 'no ticket minted');
      assert.equal(
        await metric(stack.authMetricsUrl, 'http_requests_total', { route: '/v1/tickets', status: '4xx' }),
        before.mintRefused + 4,
        'the four mints reached auth-service and were refused',
      );
      // The victim's own tab is unaffected.
      assert.equal(await text(victim.page, 'connection-state'), 'connected');
    } finally {
      evil.close();
    }
  });

  test('served by auth-service itself (STATIC_DIR, strict CSP): works, and a client-initiated close is clean', { timeout: 60_000 }, async () => {
    await settle();
    const erin = await createUser(stack, 'erin');
    const t = await tab(stack.authUrl);
    const response = await t.page.request.get(`${stack.authUrl}/`);
    assert.match(response.headers()['content-security-policy'] ?? '', /default-src 'self'/);
    await logIn(t.page, erin);
    assert.match(await text(t.page, 'node'), /^js-node-[12]$/);
    assert.deepEqual(t.console.filter((line) => /Content Security Policy|Refused to/i.test(line)), []);

    const closes = await t.page.evaluate(async (nodeUrl) => {
      const { connect } = await import('/tessera.js');
      const client = connect();
      await new Promise((resolve) => client.on('connected', resolve));
      const viaClient = await client.disconnect(4000, 'bye');
      const { ticket } = await (await fetch('/v1/tickets', { method: 'POST' })).json();
      const raw = await new Promise((resolve) => {
        const ws = new WebSocket(nodeUrl, [`ticket.${ticket}`]);
        ws.onmessage = () => ws.close(3999, 'raw bye');
        ws.onclose = (e) => resolve({ code: e.code, reason: e.reason, wasClean: e.wasClean });
      });
      return { viaClient, raw };
    }, stack.nodes[0].url);
    assert.deepEqual(closes.viaClient, { code: 4000, reason: 'bye', wasClean: true }, 'through nginx');
    assert.deepEqual(closes.raw, { code: 3999, reason: 'raw bye', wasClean: true }, 'straight to a node');
  });
});

/** Both tabs side by side in one picture: test-artifacts/demo-two-tabs.png. */
async function screenshot(left, right) {
  const shots = await Promise.all([left.screenshot(), right.screenshot()]);
  const page = await browser.newPage({ viewport: { width: 1544, height: 580 } });
  try {
    const img = (png) => `<img src="data:image/png;base64,${png.toString('base64')}">`;
    await page.setContent(
      `<body style="margin:0;padding:10px;display:flex;gap:4px;background:#9aa3b2">${shots.map(img).join('')}</body>`,
    );
    mkdirSync(ARTIFACTS, { recursive: true });
    writeFileSync(join(ARTIFACTS, 'demo-two-tabs.png'), await page.screenshot());
  } finally {
    await page.close();
  }
}

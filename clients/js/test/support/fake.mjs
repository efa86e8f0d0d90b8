// A fake WebSocket for the unit tests: the test plays the node, frame by
// frame, with Node's fake timers driving every delay.
import { mock } from 'node:test';
import { Client } from '../../dist/tessera.js';

export const USER = { id: '7d1f0c2e-0000-4000-8000-000000000001', username: 'alice' };

export class FakeSocket {
  readyState = 0;
  onopen = null;
  onmessage = null;
  onclose = null;
  onerror = null;
  /** Frames the client sent, parsed. */
  sent = [];
  /** {code, reason} once the client called close(). */
  closedWith = null;

  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
  }

  send(data) {
    if (this.readyState !== 1) throw new Error('send on a socket that is not open');
    this.sent.push(JSON.parse(data));
  }

  close(code, reason) {
    this.closedWith = { code, reason };
    if (this.readyState < 2) this.readyState = 2;
  }

  // --- The node's side -------------------------------------------------------

  /** Completes the handshake and sends the welcome frame. */
  accept(node = 'node-1') {
    this.readyState = 1;
    this.onopen?.({});
    this.receive({ type: 'welcome', connection_id: `${node}:1`, user: USER, node });
  }

  receive(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** The socket ends (the node closed it, or the network died: 1006). */
  end(code, reason = '', wasClean = code !== 1006) {
    this.readyState = 3;
    this.onclose?.({ code, reason, wasClean });
  }

  /** The frames sent with this action. */
  frames(action) {
    return this.sent.filter((f) => f.action === action);
  }

  /** Acks the last frame sent with this action, with extra fields. */
  ack(action, fields = {}) {
    const frame = this.frames(action).at(-1);
    if (!frame) throw new Error(`no ${action} frame was sent`);
    this.receive({ type: 'ack', id: frame.id, ...fields });
    return frame;
  }
}

/** Lets pending promise callbacks run (getTicket is async). Timers stay fake. */
export async function flush() {
  for (let i = 0; i < 10; i++) await new Promise((resolve) => setImmediate(resolve));
}

/**
 * A client on fake sockets and fake timers. Returns the client, the sockets
 * it opened (in order), the events it emitted and how many tickets it got.
 */
export function setup(options = {}) {
  mock.timers.enable({ apis: ['setTimeout'] });
  const sockets = [];
  class Socket extends FakeSocket {
    constructor(url, protocols) {
      super(url, protocols);
      sockets.push(this);
    }
  }
  let tickets = 0;
  const client = new Client({
    WebSocket: Socket,
    url: 'ws://node-1/ws',
    getTicket: async () => `ticket-${++tickets}`,
    network: null,
    ...options,
  });
  const events = [];
  for (const name of ['state', 'connected', 'disconnected', 'resync', 'subscription', 'error', 'message']) {
    client.on(name, (...args) => events.push([name, ...args]));
  }
  return {
    client,
    sockets,
    events,
    tickets: () => tickets,
    last: () => sockets.at(-1),
    /** Events of one kind, their first argument each. */
    of: (name) => events.filter((e) => e[0] === name).map((e) => e[1]),
  };
}

/** Connects a fresh client and completes the handshake. */
export async function connected(options = {}) {
  const t = setup(options);
  t.client.connect();
  await flush();
  t.last().accept();
  return t;
}

export function teardown(t) {
  try {
    t?.client.disconnect();
  } catch {
    // already stopped
  }
  mock.timers.reset();
}

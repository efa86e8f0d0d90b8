/**
 * The client: one logical connection to the cluster that survives the
 * physical ones. It mints a ticket per attempt, reconnects with backoff,
 * resumes every subscription from the last delivered position, and settles
 * each request's promise with the node's answer.
 *
 * Connection states: `disconnected → connecting → connected`, back to
 * `connecting` whenever a connection ends and a retry is due, and to
 * `disconnected` only when it stops for good (`disconnect()`, close 4003, or
 * a ticket endpoint answering 401/403).
 */
import { backoffDelay } from './backoff.js';
import { Emitter, call } from './emitter.js';
import {
  AUTH_FAILED,
  GOING_AWAY,
  type Message,
  type PresenceMember,
  RATE_LIMITED,
  REVOKED,
  type ServerFrame,
  TesseraError,
  type UserInfo,
} from './protocol.js';
import {
  type ResyncInfo,
  type ResyncReason,
  Subscription,
  type SubscriptionHandlers,
  type SubscriptionState,
} from './subscription.js';
import { fetchTicket, type Ticket } from './ticket.js';
import { type CloseInfo, Transport, type WebSocketConstructor } from './transport.js';

export type ConnectionState = 'disconnected' | 'connecting' | 'connected';

/** Where the browser's `online`/`offline` events come from (`window`). */
export interface NetworkEvents {
  addEventListener(type: 'online' | 'offline', listener: () => void): void;
  removeEventListener(type: 'online' | 'offline', listener: () => void): void;
}

export interface ClientOptions {
  /**
   * The ws-node (or proxy) URL, or several, tried in turn after each failed
   * attempt or lost connection. Default: the `ws_url` of each ticket, else
   * `/ws` on the page's origin.
   */
  url?: string | string[];
  /**
   * Returns a fresh ticket; called for every connection attempt, because a
   * ticket works once. Default: POST /v1/tickets with the cookie
   * ({@link fetchTicket}). An error with `status` 401 or 403 stops the client.
   */
  getTicket?: () => Promise<string | Ticket>;
  /** A WebSocket class where there is no global one (Node 20: the `ws` package). */
  WebSocket?: WebSocketConstructor;
  /** First reconnect delay's ceiling, ms (default 500; the delay is drawn from its upper half). */
  minReconnectDelay?: number;
  /** Largest reconnect delay, ms (default 20 000). */
  maxReconnectDelay?: number;
  /**
   * Silence, ms, after which the client pings the node (default 25 000, just
   * above the node's 20 s pings, which browsers answer but do not show).
   */
  heartbeatInterval?: number;
  /** How long a ping may go unanswered before the connection counts as dead, ms (default 10 000). */
  heartbeatTimeout?: number;
  /** From opening a socket to the node's welcome, ms (default 10 000). */
  connectTimeout?: number;
  /** Requests (publish, presence) held while not connected (default 100); beyond, `queue_full`. */
  maxQueue?: number;
  /** The node's MAX_MESSAGE_BYTES (default 65 536): larger publishes are refused here, `too_big`. */
  maxMessageBytes?: number;
  /** `online`/`offline` events; default the global object in a browser, none in Node. */
  network?: NetworkEvents | null;
}

export interface ConnectedInfo {
  node: string;
  connectionId: string;
  user: UserInfo;
}

/**
 * A connection, or an attempt at one, ended. `code`, `reason` and
 * `wasClean` are the socket's close event's; `code` is 0 when no socket
 * closed (a ticket could not be had, no heartbeat, offline, connect timeout).
 * `reconnect` tells whether the client tries again (in `delay` ms); when it
 * stops for a reason other than `disconnect()`, `error` says why.
 */
export interface DisconnectedInfo extends CloseInfo {
  reconnect: boolean;
  delay?: number;
  error?: TesseraError;
}

export interface ClientEvents {
  state(state: ConnectionState, previous: ConnectionState): void;
  connected(info: ConnectedInfo): void;
  disconnected(info: DisconnectedInfo): void;
  /** Every delivered message, on any channel (also the user's own `user:<id>`). */
  message(message: Message): void;
  subscription(channel: string, state: SubscriptionState, previous: SubscriptionState): void;
  /** Messages of a channel may be missing: reload its state. */
  resync(info: ResyncInfo): void;
  /** A problem no promise reports (a refused resubscribe, an unmatched error frame). */
  error(error: TesseraError): void;
}

export interface PublishOptions {
  /**
   * Default: a random key, so that a publish whose answer was lost with the
   * connection is sent again safely (the node drops the repeat). `null`: no
   * key; such a publish is rejected with `disconnected` instead of resent.
   */
  idempotencyKey?: string | null;
}

export interface PublishResult {
  channel: string;
  epoch?: string;
  offset?: number;
  /** The key was seen before: this publish was not delivered again. */
  duplicate: boolean;
}

type Reply = Extract<ServerFrame, { type: 'ack' }> | Extract<ServerFrame, { type: 'presence' }>;

interface Request {
  kind: 'subscribe' | 'unsubscribe' | 'publish' | 'presence' | 'ping';
  frame: Record<string, unknown>;
  resolve(reply: Reply | undefined): void;
  reject(error: TesseraError): void;
  retries: number;
}

/** How often a request refused with `rate_limited` or `unavailable` is sent again. */
const MAX_RETRIES = 5;
const noop = (): void => {};

export class Client extends Emitter<ClientEvents> {
  state: ConnectionState = 'disconnected';
  /** The node of the current connection (from its welcome frame). */
  node: string | undefined;
  connectionId: string | undefined;
  /** The user the last welcome frame named. */
  user: UserInfo | undefined;

  private readonly options: Required<Omit<ClientOptions, 'url' | 'network'>>;
  private readonly urls: string[];
  private readonly network: NetworkEvents | undefined;
  private readonly subs = new Map<string, Subscription>();
  /** Channels unsubscribed whose answer is pending: their messages are no longer delivered. */
  private readonly leaving = new Set<string>();
  private transport: Transport | undefined;
  /** Requests sent on the current connection, oldest first, by id. */
  private readonly inflight = new Map<number, Request>();
  /** Requests waiting for a connection. */
  private queue: Request[] = [];
  private nextId = 1;
  /** Failed attempts in a row: the backoff's exponent. */
  private attempts = 0;
  /** Bumped when an attempt or connection is given up: its late callbacks see a stale number. */
  private generation = 0;
  /** The reconnect delay, or the connect timeout. */
  private timer: ReturnType<typeof setTimeout> | undefined;
  private watchdog: ReturnType<typeof setTimeout> | undefined;
  /** Waiting to reconnect (a delay, or offline): what `online` cuts short. */
  private waiting = false;
  private offline = false;
  private urlIndex = 0;

  constructor(options: ClientOptions = {}) {
    super();
    const WebSocket = options.WebSocket ?? (globalThis.WebSocket as WebSocketConstructor | undefined);
    if (!WebSocket) throw new TypeError('no global WebSocket: pass options.WebSocket (in Node 20, the ws package)');
    this.options = {
      getTicket: options.getTicket ?? fetchTicket(),
      WebSocket,
      minReconnectDelay: options.minReconnectDelay ?? 500,
      maxReconnectDelay: options.maxReconnectDelay ?? 20_000,
      heartbeatInterval: options.heartbeatInterval ?? 25_000,
      heartbeatTimeout: options.heartbeatTimeout ?? 10_000,
      connectTimeout: options.connectTimeout ?? 10_000,
      maxQueue: options.maxQueue ?? 100,
      maxMessageBytes: options.maxMessageBytes ?? 65_536,
    };
    this.urls = options.url === undefined ? [] : ([] as string[]).concat(options.url);
    const global = globalThis as unknown as Partial<NetworkEvents>;
    this.network =
      options.network === undefined
        ? typeof global.addEventListener === 'function'
          ? (global as NetworkEvents)
          : undefined
        : (options.network ?? undefined);
  }

  // --- Connection -------------------------------------------------------------

  /** Starts connecting (a no-op unless disconnected). Subscriptions kept from before resume. */
  connect(): void {
    if (this.state !== 'disconnected') return;
    this.attempts = 0;
    this.network?.addEventListener('offline', this.onOffline);
    this.network?.addEventListener('online', this.onOnline);
    this.setState('connecting');
    for (const sub of this.subs.values()) this.setSubState(sub, 'subscribing');
    void this.attempt();
  }

  /**
   * Stops: closes the socket with `code` (1000 or 3000–4999) and does not
   * reconnect. Pending requests reject with `disconnected`; subscriptions
   * stay registered and resume (with `since`) on the next `connect()`.
   * Resolves with the close event once the node has answered the close.
   */
  disconnect(code = 1000, reason = 'client disconnect'): Promise<CloseInfo> {
    if (code !== 1000 && (code < 3000 || code > 4999)) {
      throw new RangeError(`close code ${code}: only 1000 or 3000-4999`);
    }
    const transport = this.transport;
    if (this.state === 'disconnected') return Promise.resolve({ code, reason, wasClean: true });
    this.transport = undefined; // closed below, with the handshake, not abandoned
    this.halt(new TesseraError('disconnected', 'disconnect() was called'));
    const closed = transport ? transport.close(code, reason) : Promise.resolve({ code, reason, wasClean: true });
    return closed.then((info) => {
      this.emit('disconnected', { ...info, reconnect: false });
      return info;
    });
  }

  private async attempt(): Promise<void> {
    const generation = ++this.generation;
    this.waiting = false;
    this.transport?.abandon();
    this.transport = undefined;
    let ticket: Ticket;
    try {
      const got = await this.options.getTicket();
      ticket = typeof got === 'string' ? { ticket: got } : got;
    } catch (e) {
      if (generation !== this.generation) return;
      const error = asError(e);
      const info = { code: 0, reason: `no ticket: ${error.message}`, wasClean: false };
      if (error.status === 401) {
        this.stop(info, new TesseraError('logged_out', `logged out: ${error.message}`, 401));
      } else if (error.status === 403) {
        this.stop(info, new TesseraError('ticket_refused', error.message, 403));
      } else {
        this.retry(info, undefined, (error.retryAfter ?? 0) * 1000);
      }
      return;
    }
    if (generation !== this.generation) return;
    try {
      const transport: Transport = new Transport(
        this.options.WebSocket,
        this.pickUrl(ticket.ws_url),
        ticket.ticket,
        (frame) => this.onFrame(frame),
        (info) => this.onClose(transport, info),
      );
      this.transport = transport;
    } catch (e) {
      // A URL the WebSocket constructor rejects does not get better by retrying.
      this.stop({ code: 0, reason: String(e), wasClean: false }, new TesseraError('bad_url', String(e)));
      return;
    }
    this.timer = setTimeout(() => {
      if (generation === this.generation) this.retry({ code: 0, reason: 'connect timeout', wasClean: false });
    }, this.options.connectTimeout);
  }

  private pickUrl(fromTicket: string | undefined): string {
    const url = this.urls.length ? this.urls[this.urlIndex % this.urls.length]! : (fromTicket ?? '/ws');
    const location = (globalThis as { location?: { protocol: string; host: string } }).location;
    if (url.startsWith('/') && location) {
      return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${url}`;
    }
    return url;
  }

  private onFrame(frame: ServerFrame): void {
    this.heard();
    switch (frame.type) {
      case 'welcome':
        return this.onWelcome(frame);
      case 'message':
        return this.onMessage(frame);
      case 'ack':
      case 'presence':
        return this.answer(frame.id, frame);
      case 'error':
        return this.onErrorFrame(frame);
      case 'join':
      case 'leave': {
        const sub = this.subs.get(frame.channel);
        return call(sub?.handlers[frame.type], [frame.user]);
      }
      case 'recovery':
        return this.resync(frame.channel, 'history_lost');
    }
  }

  private onWelcome(frame: Extract<ServerFrame, { type: 'welcome' }>): void {
    const generation = this.generation;
    clearTimeout(this.timer);
    this.attempts = 0;
    this.node = frame.node;
    this.connectionId = frame.connection_id;
    this.user = frame.user;
    this.setState('connected');
    this.heard();
    this.emit('connected', { node: frame.node, connectionId: frame.connection_id, user: frame.user });
    // Resubscribe first, then what waited: a publish queued while offline
    // reaches a channel this client is back on.
    for (const sub of [...this.subs.values()]) {
      if (generation !== this.generation) return;
      this.sendSubscribe(sub);
    }
    const queued = this.queue;
    this.queue = [];
    for (const request of queued) this.send(request);
  }

  /** The socket ended by itself (the node closed it, or the network did). */
  private onClose(transport: Transport, info: CloseInfo): void {
    if (transport !== this.transport) return;
    this.transport = undefined;
    const code = info.code;
    if (code === REVOKED) {
      this.stop(info, new TesseraError('revoked', `the session or key was revoked (4003 ${info.reason})`));
      return;
    }
    // The node is going away (1001) or the ticket's credential ended (4001):
    // a fresh ticket, at once — but only for the first retry in a row, so a
    // node refusing every attempt is not hammered.
    const atOnce = (code === GOING_AWAY || code === AUTH_FAILED) && this.attempts === 0;
    // Rate limited or too slow a reader (4008): start the backoff high.
    if (code === RATE_LIMITED) this.attempts = Math.max(this.attempts, 3);
    this.retry(info, atOnce ? 0 : undefined);
  }

  /**
   * Gives up the current connection or attempt and schedules the next.
   * @param delay ms; default the backoff's next delay
   * @param atLeast ms (a `Retry-After`)
   */
  private retry(info: CloseInfo, delay?: number, atLeast = 0): void {
    this.drop();
    const wait = Math.max(
      atLeast,
      delay ?? backoffDelay(this.attempts, this.options.minReconnectDelay, this.options.maxReconnectDelay),
    );
    this.attempts++;
    this.urlIndex++;
    this.waiting = true;
    if (!this.offline) this.timer = setTimeout(() => void this.attempt(), wait);
    this.setState('connecting');
    this.emit('disconnected', { ...info, reconnect: true, delay: wait });
  }

  /** Stops for good, because of `error`. */
  private stop(info: CloseInfo, error: TesseraError): void {
    this.halt(error);
    this.emit('disconnected', { ...info, reconnect: false, error });
  }

  /**
   * Forgets the current connection: its timers, its socket, and its
   * unanswered requests (those safe to repeat wait for the next connection).
   */
  private drop(subState: SubscriptionState = 'subscribing'): void {
    this.generation++;
    clearTimeout(this.timer);
    clearTimeout(this.watchdog);
    this.transport?.abandon();
    this.transport = undefined;
    this.node = this.connectionId = undefined;
    const again = [...this.inflight.values()].filter((request) => this.repeatable(request));
    this.inflight.clear();
    this.queue = again.concat(this.queue);
    this.leaving.clear();
    for (const sub of this.subs.values()) this.setSubState(sub, subState);
  }

  /**
   * Whether a request whose connection ended unanswered may be sent again:
   * a read, or a publish with an idempotency key (the node drops a repeat).
   * The others are settled here: an unsubscribe is done (a closed
   * connection's subscriptions are gone), a publish without a key fails (it
   * may or may not have been carried out). A subscribe is sent again from
   * the subscription registry; a ping is moot.
   */
  private repeatable(request: Request): boolean {
    if (request.kind === 'presence' || (request.kind === 'publish' && request.frame['idempotency_key'])) return true;
    if (request.kind === 'unsubscribe') request.resolve(undefined);
    if (request.kind === 'publish') {
      request.reject(
        new TesseraError('disconnected', 'the connection ended before the node answered; the message may or may not be published'),
      );
    }
    return false;
  }

  /** Drops the connection and everything waiting for one; state `disconnected`. */
  private halt(error: TesseraError): void {
    const waiting = [...this.inflight.values(), ...this.queue];
    this.inflight.clear();
    this.queue = [];
    this.drop('unsubscribed');
    this.waiting = false;
    this.network?.removeEventListener('offline', this.onOffline);
    this.network?.removeEventListener('online', this.onOnline);
    for (const request of waiting) {
      if (request.kind === 'unsubscribe') request.resolve(undefined);
      else request.reject(error);
    }
    for (const sub of this.subs.values()) {
      sub.settle?.(error);
      sub.settle = undefined;
    }
    this.setState('disconnected');
  }

  // --- Liveness -----------------------------------------------------------------

  /**
   * Something came from the node: restart the watchdog. Browsers answer the
   * node's pings without telling the page, so silence is measured on frames:
   * after `heartbeatInterval` of it the client pings (the node acks), and
   * without any frame `heartbeatTimeout` later the connection is dead —
   * typically a network that vanished without a FIN (Wi-Fi gone, a laptop
   * that slept), which would otherwise look open for minutes.
   */
  private heard(): void {
    clearTimeout(this.watchdog);
    if (this.state !== 'connected') return;
    const generation = this.generation;
    this.watchdog = setTimeout(() => {
      if (generation !== this.generation) return;
      this.send({ kind: 'ping', frame: { action: 'ping' }, resolve: noop, reject: noop, retries: MAX_RETRIES });
      this.watchdog = setTimeout(() => {
        if (generation === this.generation) this.retry({ code: 0, reason: 'no heartbeat', wasClean: false });
      }, this.options.heartbeatTimeout);
    }, this.options.heartbeatInterval);
  }

  private readonly onOffline = (): void => {
    this.offline = true;
    if (this.waiting) clearTimeout(this.timer); // no attempt until back online
    else if (this.state !== 'disconnected') this.retry({ code: 0, reason: 'offline', wasClean: false });
  };

  private readonly onOnline = (): void => {
    this.offline = false;
    if (this.state === 'connecting' && this.waiting) {
      clearTimeout(this.timer);
      this.attempts = 0;
      void this.attempt();
    }
  };

  // --- Requests -------------------------------------------------------------------

  /** Sends now if connected, else holds it for the next connection (bounded). */
  private request(kind: Request['kind'], frame: Record<string, unknown>): Promise<Reply | undefined> {
    return new Promise((resolve, reject) => {
      const request: Request = { kind, frame, resolve, reject, retries: 0 };
      if (this.state === 'connected') return this.send(request);
      if (this.state === 'disconnected') {
        return reject(new TesseraError('disconnected', 'the client is disconnected: call connect()'));
      }
      if (this.queue.length >= this.options.maxQueue) {
        return reject(new TesseraError('queue_full', `${this.queue.length} requests already wait for a connection`));
      }
      this.queue.push(request);
    });
  }

  /** Sends on the current connection; without one, holds, settles or drops it (see {@link repeatable}). */
  private send(request: Request): void {
    const id = this.nextId++;
    if (this.state === 'connected' && this.transport?.send({ ...request.frame, id })) {
      this.inflight.set(id, request);
    } else if (request.kind === 'unsubscribe') {
      request.resolve(undefined);
    } else if (request.kind === 'publish' || request.kind === 'presence') {
      if (this.state === 'disconnected') request.reject(new TesseraError('disconnected', 'the client is disconnected'));
      else this.queue.push(request); // the socket is closing: the next connection sends it
    }
  }

  private answer(id: number, reply: Reply): void {
    const request = this.inflight.get(id);
    if (!request) return;
    this.inflight.delete(id);
    request.resolve(reply);
  }

  private onErrorFrame(frame: Extract<ServerFrame, { type: 'error' }>): void {
    let id = frame.id;
    // A frame over the rate is refused unparsed, so the error has no id. The
    // node answers in order: it belongs to the oldest unanswered request.
    if (id === undefined && frame.code === 'rate_limited') id = this.inflight.keys().next().value;
    const request = id === undefined ? undefined : this.inflight.get(id);
    const error = new TesseraError(frame.code, frame.message);
    if (!request) return this.emit('error', error);
    this.inflight.delete(id!);
    // Neither was carried out; both say "retry": later, on this connection.
    if ((frame.code === 'rate_limited' || frame.code === 'unavailable') && request.retries < MAX_RETRIES) {
      request.retries++;
      const generation = this.generation;
      setTimeout(() => {
        // On a later connection, only if it may be repeated there.
        if (generation === this.generation || this.repeatable(request)) this.send(request);
      }, backoffDelay(request.retries, 1000, 10_000));
      return;
    }
    request.reject(error);
  }

  // --- Subscriptions ---------------------------------------------------------------

  /**
   * Subscribes to `channel` and keeps it subscribed across reconnects,
   * resuming from the last delivered message. Resolves once the node has
   * accepted it; rejects (and forgets it) if the node refuses it.
   */
  subscribe(channel: string, handlers: SubscriptionHandlers = {}): Promise<Subscription> {
    if (this.subs.has(channel)) {
      return Promise.reject(new TesseraError('already_subscribed', `already subscribed to ${channel}`));
    }
    const sub = new Subscription(this, channel, handlers);
    this.subs.set(channel, sub);
    this.leaving.delete(channel);
    return new Promise((resolve, reject) => {
      sub.settle = (error) => (error ? reject(error) : resolve(sub));
      if (this.state === 'disconnected') return; // subscribed on connect()
      this.setSubState(sub, 'subscribing');
      if (this.state === 'connected') this.sendSubscribe(sub);
    });
  }

  /** Stops delivery from `channel` at once; resolves when the node confirms. */
  unsubscribe(channel: string): Promise<void> {
    const sub = this.subs.get(channel);
    if (!sub) return Promise.resolve();
    this.subs.delete(channel);
    this.setSubState(sub, 'unsubscribed');
    sub.settle?.(new TesseraError('unsubscribed', `unsubscribed from ${channel} before the node answered`));
    sub.settle = undefined;
    if (this.state !== 'connected') return Promise.resolve();
    this.leaving.add(channel);
    return this.request('unsubscribe', { action: 'unsubscribe', channel }).then(() => {
      if (!this.subs.has(channel)) this.leaving.delete(channel);
    });
  }

  /** The subscription to `channel`, if any. */
  subscription(channel: string): Subscription | undefined {
    return this.subs.get(channel);
  }

  private sendSubscribe(sub: Subscription): void {
    const resumeWithout = sub.wasSubscribed && !sub.position;
    this.send({
      kind: 'subscribe',
      frame: sub.frame(),
      retries: 0,
      resolve: (ack) => this.onSubscribed(sub, ack as Extract<Reply, { type: 'ack' }>, resumeWithout),
      reject: (error) => this.onSubscribeRefused(sub, error),
    });
  }

  private onSubscribed(sub: Subscription, ack: Extract<Reply, { type: 'ack' }>, resumeWithout: boolean): void {
    if (this.subs.get(sub.channel) !== sub) return; // unsubscribed meanwhile
    const at = ack.epoch !== undefined && ack.offset !== undefined ? { epoch: ack.epoch, offset: ack.offset } : undefined;
    // Not recovered: live delivery goes on from the ack's position; the gap
    // before it is the application's to fill.
    if (ack.recovered === false) sub.position = at;
    else sub.position ??= at;
    sub.wasSubscribed = true;
    this.setSubState(sub, 'subscribed');
    sub.settle?.();
    sub.settle = undefined;
    if (ack.recovered === false) this.resync(sub.channel, 'not_recovered');
    else if (resumeWithout) this.resync(sub.channel, 'no_position');
  }

  private onSubscribeRefused(sub: Subscription, error: TesseraError): void {
    if (this.subs.get(sub.channel) !== sub) return;
    this.subs.delete(sub.channel);
    this.setSubState(sub, 'unsubscribed');
    call(sub.handlers.error, [error]);
    if (sub.settle) sub.settle(error);
    else this.emit('error', error);
    sub.settle = undefined;
  }

  private onMessage(frame: Message): void {
    const message: Message = { channel: frame.channel, data: frame.data };
    if (frame.epoch !== undefined) message.epoch = frame.epoch;
    if (frame.offset !== undefined) message.offset = frame.offset;
    if (frame.from !== undefined) message.from = frame.from;
    const sub = this.subs.get(frame.channel);
    if (sub) {
      if (!sub.accept(message)) return;
      call(sub.handlers.message, [message.data, message]);
    } else if (this.leaving.has(frame.channel)) {
      return;
    }
    this.emit('message', message);
  }

  private resync(channel: string, reason: ResyncReason): void {
    const info = { channel, reason };
    call(this.subs.get(channel)?.handlers.resync, [info]);
    this.emit('resync', info);
  }

  // --- Publishing and presence ----------------------------------------------------

  /**
   * Publishes `data` (any JSON) to `channel`. Resolves with the message's
   * position once the node has stored it; while not connected, it waits in
   * a bounded queue. See {@link PublishOptions} for what happens when the
   * connection ends before the answer.
   */
  publish(channel: string, data: unknown, options: PublishOptions = {}): Promise<PublishResult> {
    const key = options.idempotencyKey === undefined ? randomKey() : options.idempotencyKey;
    const frame: Record<string, unknown> = { action: 'publish', channel, data: data === undefined ? null : data };
    if (key !== null) frame['idempotency_key'] = key;
    // The id is not known yet: count the longest one's digits.
    const size = new TextEncoder().encode(JSON.stringify({ ...frame, id: Number.MAX_SAFE_INTEGER })).length;
    if (size > this.options.maxMessageBytes) {
      return Promise.reject(
        new TesseraError('too_big', `the frame is ${size} bytes; the node takes ${this.options.maxMessageBytes}`),
      );
    }
    return this.request('publish', frame).then(
      (reply) => {
        const ack = reply as Extract<Reply, { type: 'ack' }>;
        const result: PublishResult = { channel, duplicate: ack.duplicate === true };
        if (ack.epoch !== undefined) result.epoch = ack.epoch;
        if (ack.offset !== undefined) result.offset = ack.offset;
        return result;
      },
      (error: TesseraError) => {
        // A namespace without history takes no keys; ours was only a safety net.
        if (error.code === 'idempotency_unsupported' && options.idempotencyKey === undefined) {
          return this.publish(channel, data, { idempotencyKey: null });
        }
        throw error;
      },
    );
  }

  /** Who is on `channel` (namespaces with presence), across all nodes. */
  presence(channel: string): Promise<PresenceMember[]> {
    return this.request('presence', { action: 'presence', channel }).then(
      (reply) => (reply as Extract<Reply, { type: 'presence' }>).members,
    );
  }

  // --- Helpers ----------------------------------------------------------------------

  private setState(state: ConnectionState): void {
    const previous = this.state;
    if (previous === state) return;
    this.state = state;
    this.emit('state', state, previous);
  }

  private setSubState(sub: Subscription, state: SubscriptionState): void {
    const previous = sub.state;
    if (previous === state) return;
    sub.state = state;
    call(sub.handlers.state, [state, previous]);
    this.emit('subscription', sub.channel, state, previous);
  }
}

/** 128 random bits as hex: an idempotency key (1–64 printable ASCII characters). */
function randomKey(): string {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Whatever `getTicket` threw, as a TesseraError (keeping the `status` and `retryAfter` it carried). */
function asError(e: unknown): TesseraError {
  if (e instanceof TesseraError) return e;
  const { status, retryAfter } = (e ?? {}) as { status?: unknown; retryAfter?: unknown };
  return new TesseraError(
    'ticket_unavailable',
    e instanceof Error ? e.message : String(e),
    typeof status === 'number' ? status : undefined,
    typeof retryAfter === 'number' ? retryAfter : undefined,
  );
}

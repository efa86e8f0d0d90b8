import { Emitter } from './emitter.js';
import { type Message, type PresenceMember, TesseraError, type UserInfo } from './protocol.js';
import { type ResyncInfo, Subscription, type SubscriptionHandlers, type SubscriptionState } from './subscription.js';
import { type Ticket } from './ticket.js';
import { type CloseInfo, type WebSocketConstructor } from './transport.js';
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
export declare class Client extends Emitter<ClientEvents> {
    state: ConnectionState;
    /** The node of the current connection (from its welcome frame). */
    node: string | undefined;
    connectionId: string | undefined;
    /** The user the last welcome frame named. */
    user: UserInfo | undefined;
    private readonly options;
    private readonly urls;
    private readonly network;
    private readonly subs;
    /** Channels unsubscribed whose answer is pending: their messages are no longer delivered. */
    private readonly leaving;
    private transport;
    /** Requests sent on the current connection, oldest first, by id. */
    private readonly inflight;
    /** Requests waiting for a connection. */
    private queue;
    private nextId;
    /** Failed attempts in a row: the backoff's exponent. */
    private attempts;
    /** Bumped when an attempt or connection is given up: its late callbacks see a stale number. */
    private generation;
    /** The reconnect delay, or the connect timeout. */
    private timer;
    private watchdog;
    /** Waiting to reconnect (a delay, or offline): what `online` cuts short. */
    private waiting;
    private offline;
    private urlIndex;
    constructor(options?: ClientOptions);
    /** Starts connecting (a no-op unless disconnected). Subscriptions kept from before resume. */
    connect(): void;
    /**
     * Stops: closes the socket with `code` (1000 or 3000–4999) and does not
     * reconnect. Pending requests reject with `disconnected`; subscriptions
     * stay registered and resume (with `since`) on the next `connect()`.
     * Resolves with the close event once the node has answered the close.
     */
    disconnect(code?: number, reason?: string): Promise<CloseInfo>;
    private attempt;
    private pickUrl;
    private onFrame;
    private onWelcome;
    /** The socket ended by itself (the node closed it, or the network did). */
    private onClose;
    /**
     * Gives up the current connection or attempt and schedules the next.
     * @param delay ms; default the backoff's next delay
     * @param atLeast ms (a `Retry-After`)
     */
    private retry;
    /** Stops for good, because of `error`. */
    private stop;
    /**
     * Forgets the current connection: its timers, its socket, and its
     * unanswered requests (those safe to repeat wait for the next connection).
     */
    private drop;
    /**
     * Whether a request whose connection ended unanswered may be sent again:
     * a read, or a publish with an idempotency key (the node drops a repeat).
     * The others are settled here: an unsubscribe is done (a closed
     * connection's subscriptions are gone), a publish without a key fails (it
     * may or may not have been carried out). A subscribe is sent again from
     * the subscription registry; a ping is moot.
     */
    private repeatable;
    /** Drops the connection and everything waiting for one; state `disconnected`. */
    private halt;
    /**
     * Something came from the node: restart the watchdog. Browsers answer the
     * node's pings without telling the page, so silence is measured on frames:
     * after `heartbeatInterval` of it the client pings (the node acks), and
     * without any frame `heartbeatTimeout` later the connection is dead —
     * typically a network that vanished without a FIN (Wi-Fi gone, a laptop
     * that slept), which would otherwise look open for minutes.
     */
    private heard;
    private readonly onOffline;
    private readonly onOnline;
    /** Sends now if connected, else holds it for the next connection (bounded). */
    private request;
    /** Sends on the current connection; without one, holds, settles or drops it (see {@link repeatable}). */
    private send;
    private answer;
    private onErrorFrame;
    /**
     * Subscribes to `channel` and keeps it subscribed across reconnects,
     * resuming from the last delivered message. Resolves once the node has
     * accepted it; rejects (and forgets it) if the node refuses it.
     */
    subscribe(channel: string, handlers?: SubscriptionHandlers): Promise<Subscription>;
    /** Stops delivery from `channel` at once; resolves when the node confirms. */
    unsubscribe(channel: string): Promise<void>;
    /** The subscription to `channel`, if any. */
    subscription(channel: string): Subscription | undefined;
    private sendSubscribe;
    private onSubscribed;
    private onSubscribeRefused;
    private onMessage;
    private resync;
    /**
     * Publishes `data` (any JSON) to `channel`. Resolves with the message's
     * position once the node has stored it; while not connected, it waits in
     * a bounded queue. See {@link PublishOptions} for what happens when the
     * connection ends before the answer.
     */
    publish(channel: string, data: unknown, options?: PublishOptions): Promise<PublishResult>;
    /** Who is on `channel` (namespaces with presence), across all nodes. */
    presence(channel: string): Promise<PresenceMember[]>;
    private setState;
    private setSubState;
}

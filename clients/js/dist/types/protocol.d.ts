/**
 * The wire protocol as the client needs it (docs/PROTOCOL.md): the frames a
 * node sends, the close codes that change what the client does, and the
 * error type every promise of the client rejects with.
 */
/** Where a message sits in a channel's history: what `since` resumes from. */
export interface StreamPosition {
    epoch: string;
    offset: number;
}
export interface UserInfo {
    id: string;
    username: string;
}
export interface PresenceMember {
    user: UserInfo;
    /** How many connections the user has on the channel, across all nodes. */
    connections: number;
}
/** Who published a message, as the server authenticated them (not the sender's claim). */
export interface Sender {
    user_id: string;
    username: string;
}
/** A message as delivered to the application (after de-duplication). */
export interface Message {
    channel: string;
    data: unknown;
    /** The publisher, stamped by the server; absent only from an older server. */
    from?: Sender;
    /** Present on channels with history. */
    epoch?: string;
    offset?: number;
}
/** The frames a node sends (PROTOCOL §3). */
export type ServerFrame = {
    type: 'welcome';
    connection_id: string;
    user: UserInfo;
    node: string;
} | ({
    type: 'message';
} & Message) | {
    type: 'ack';
    id: number;
    channel?: string;
    recovered?: boolean;
    epoch?: string;
    offset?: number;
    duplicate?: boolean;
} | {
    type: 'error';
    id?: number;
    code: string;
    message: string;
} | {
    type: 'presence';
    id: number;
    channel: string;
    members: PresenceMember[];
} | {
    type: 'join' | 'leave';
    channel: string;
    user: UserInfo;
} | {
    type: 'recovery';
    channel: string;
    recovered: false;
};
/** Close codes of PROTOCOL §8 that the client acts on. */
export declare const GOING_AWAY = 1001;
export declare const AUTH_FAILED = 4001;
export declare const REVOKED = 4003;
export declare const RATE_LIMITED = 4008;
/**
 * What every rejected promise and terminal event of the client carries.
 * `code` is the node's error code (`forbidden`, `unknown_namespace`, …) for a
 * refused request, or one of the client's own:
 *
 * - `logged_out`: the ticket endpoint answered 401 (the session is gone);
 * - `revoked`: the node closed the socket with 4003 (logout, revocation);
 * - `ticket_refused`: the ticket endpoint answered 403;
 * - `disconnected`: the connection ended before an answer came, or the client
 *   is stopped;
 * - `queue_full`: too many requests wait for a connection;
 * - `too_big`: the frame would exceed `maxMessageBytes`;
 * - `unsubscribed`: the subscription was removed before the node answered;
 * - `already_subscribed`: `subscribe` twice for one channel.
 */
export declare class TesseraError extends Error {
    readonly code: string;
    /** The HTTP status, for errors of the ticket endpoint. */
    readonly status: number | undefined;
    /** Seconds to wait before retrying, from a `Retry-After` header. */
    readonly retryAfter: number | undefined;
    constructor(code: string, message: string, status?: number, retryAfter?: number);
}

/**
 * A subscription: one channel the application wants, its state, and the
 * position of the last message delivered from it — what makes resuming
 * gapless and duplicate-free.
 */
import type { PublishResult } from './client.js';
import type { Message, PresenceMember, StreamPosition, TesseraError, UserInfo } from './protocol.js';
export type SubscriptionState = 'unsubscribed' | 'subscribing' | 'subscribed';
/**
 * Why the application must resync a channel from its own backend:
 *
 * - `not_recovered`: a resume's `since` is no longer covered by the channel's
 *   history (trimmed, expired, or Redis lost it);
 * - `history_lost`: the node could not fill a gap in a channel it was
 *   delivering (a `recovery` frame);
 * - `no_position`: a resume for a channel from which nothing had been
 *   delivered and whose subscribe ack carried no position (a node without
 *   positions in acks), so there was no `since` to resume from; whatever was
 *   published while disconnected may be missing.
 */
export type ResyncReason = 'not_recovered' | 'history_lost' | 'no_position';
export interface ResyncInfo {
    channel: string;
    reason: ResyncReason;
}
/** What a subscription calls; every handler is optional. */
export interface SubscriptionHandlers {
    /** A message, exactly once, in order (live or replayed: they look the same). */
    message?(data: unknown, message: Message): void;
    /** A user's first connection entered the channel (presence namespaces). */
    join?(user: UserInfo): void;
    /** A user's last connection left it. */
    leave?(user: UserInfo): void;
    /** Messages may be missing: reload the channel's state. */
    resync?(info: ResyncInfo): void;
    state?(state: SubscriptionState, previous: SubscriptionState): void;
    /** The node refused the subscription for good; it is removed. */
    error?(error: TesseraError): void;
}
/** What a subscription asks of its client (implemented by `Client`). */
export interface SubscriptionOwner {
    unsubscribe(channel: string): Promise<void>;
    publish(channel: string, data: unknown): Promise<PublishResult>;
    presence(channel: string): Promise<PresenceMember[]>;
}
export declare class Subscription {
    readonly channel: string;
    state: SubscriptionState;
    /**
     * The last delivered message's position, sent as `since` when the
     * subscription is resumed on a new connection.
     */
    position: StreamPosition | undefined;
    private readonly owner;
    unsubscribe(): Promise<void>;
    publish(data: unknown): Promise<PublishResult>;
    presence(): Promise<PresenceMember[]>;
}

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

export class Subscription {
  readonly channel: string;
  state: SubscriptionState = 'unsubscribed';
  /**
   * The last delivered message's position, sent as `since` when the
   * subscription is resumed on a new connection.
   */
  position: StreamPosition | undefined;
  /** @internal */
  readonly handlers: SubscriptionHandlers;
  /** @internal Whether it was subscribed before: the next subscribe is a resume. */
  wasSubscribed = false;
  /** @internal Settles the promise `subscribe` returned, on the first answer. */
  settle: ((error?: TesseraError) => void) | undefined;
  private readonly owner: SubscriptionOwner;

  /** @internal */
  constructor(owner: SubscriptionOwner, channel: string, handlers: SubscriptionHandlers) {
    this.owner = owner;
    this.channel = channel;
    this.handlers = handlers;
  }

  unsubscribe(): Promise<void> {
    return this.owner.unsubscribe(this.channel);
  }

  publish(data: unknown): Promise<PublishResult> {
    return this.owner.publish(this.channel, data);
  }

  presence(): Promise<PresenceMember[]> {
    return this.owner.presence(this.channel);
  }

  /** @internal The subscribe frame: with `since` when there is a position to resume from. */
  frame(): Record<string, unknown> {
    const frame: Record<string, unknown> = { action: 'subscribe', channel: this.channel };
    if (this.position) frame['since'] = { epoch: this.position.epoch, offset: this.position.offset };
    return frame;
  }

  /**
   * @internal Whether a message is new, advancing the position if so. A
   * message at or before the position in the same epoch was delivered
   * already (a replay overlapping live delivery, or a node repeating itself
   * across a hand-over) and is dropped. A new epoch starts over.
   */
  accept(message: Message): boolean {
    const { epoch, offset } = message;
    if (epoch === undefined || offset === undefined) return true;
    const position = this.position;
    if (position && position.epoch === epoch && offset <= position.offset) return false;
    this.position = { epoch, offset };
    return true;
  }
}

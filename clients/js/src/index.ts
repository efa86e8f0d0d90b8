/**
 * tessera's client for browsers and Node >= 20: log in, then
 *
 *     import { connect } from './tessera.js';
 *     const client = connect();                      // tickets from POST /v1/tickets, with the cookie
 *     await client.subscribe('public:lobby', { message: (data) => show(data) });
 *     await client.publish('public:lobby', { text: 'hi' });
 *
 * See README.md beside this package for the events, the close codes and the
 * reconnect and resume rules.
 */
import { Client, type ClientOptions } from './client.js';

export { backoffDelay } from './backoff.js';
export {
  Client,
  type ClientEvents,
  type ClientOptions,
  type ConnectedInfo,
  type ConnectionState,
  type DisconnectedInfo,
  type NetworkEvents,
  type PublishOptions,
  type PublishResult,
} from './client.js';
export { type Message, type PresenceMember, type Sender, type StreamPosition, TesseraError, type UserInfo } from './protocol.js';
export {
  type ResyncInfo,
  type ResyncReason,
  Subscription,
  type SubscriptionHandlers,
  type SubscriptionState,
} from './subscription.js';
export { type FetchTicketOptions, fetchTicket, type Ticket } from './ticket.js';
export type { CloseInfo, WebSocketConstructor, WebSocketLike } from './transport.js';

/** Creates a client and starts connecting. */
export function connect(options?: ClientOptions): Client {
  const client = new Client(options);
  client.connect();
  return client;
}

/** auth-service's answer to POST /v1/tickets (`expires_in` is not needed here). */
export interface Ticket {
    ticket: string;
    /** Where to connect (auth-service's PUBLIC_WS_URL), unless `url` is given. */
    ws_url?: string;
}
export interface FetchTicketOptions {
    /** The mint endpoint; default `/v1/tickets` on the page's origin. */
    url?: string;
    /** Extra request headers (in Node: `Cookie` and `Origin`, or `Authorization`). */
    headers?: Record<string, string>;
    /** Default `include`: the cookie goes along even when the API is on another origin. */
    credentials?: RequestCredentials;
    /** Narrow the ticket's scopes (auth-service's optional `{"scopes": […]}` body). */
    scopes?: string[];
    /** A fetch implementation; default the global one. */
    fetch?: typeof fetch;
}
/**
 * A `getTicket` that mints with POST /v1/tickets. A refusal throws a
 * {@link TesseraError} with auth-service's error code and the HTTP status,
 * which the client reads: 401 means logged out (it stops), 403 means refused
 * (it stops), anything else is retried with backoff (honouring `Retry-After`).
 */
export declare function fetchTicket(options?: FetchTicketOptions): () => Promise<Ticket>;

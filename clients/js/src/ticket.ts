/**
 * Tickets: what `getTicket` returns, and the default way to get one — POST
 * /v1/tickets with the page's session cookie.
 */
import { TesseraError } from './protocol.js';

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
export function fetchTicket(options: FetchTicketOptions = {}): () => Promise<Ticket> {
  const url = options.url ?? '/v1/tickets';
  return async () => {
    const request = options.fetch ?? globalThis.fetch;
    const headers: Record<string, string> = { ...options.headers };
    const init: RequestInit = { method: 'POST', credentials: options.credentials ?? 'include', headers };
    if (options.scopes) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify({ scopes: options.scopes });
    }
    const response = await request(url, init);
    if (response.ok) return (await response.json()) as Ticket;
    let code = `http_${response.status}`;
    let message = `POST ${url} answered ${response.status}`;
    try {
      const body = (await response.json()) as { error?: { code?: string; message?: string } };
      code = body.error?.code ?? code;
      message = body.error?.message ?? message;
    } catch {
      // not the API's JSON (a proxy's page): keep the status
    }
    const retryAfter = Number(response.headers.get('Retry-After')) || undefined;
    throw new TesseraError(code, message, response.status, retryAfter);
  };
}

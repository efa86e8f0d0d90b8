/**
 * One WebSocket to one node, from opening to its end: the only place that
 * touches a socket. The client makes a new Transport for every connection
 * attempt and forgets it when it ends, so no event of an old socket can reach
 * the state of a newer one.
 */
import type { ServerFrame } from './protocol.js';

/** What the client needs of a WebSocket: the browser's, Node's, or `ws`. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string; wasClean: boolean }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** How a socket ended, as its close event told it. */
export interface CloseInfo {
  code: number;
  reason: string;
  wasClean: boolean;
}

const OPEN = 1;
const ignore = (): void => {};

export class Transport {
  private socket: WebSocketLike | null;
  private onFrame: (frame: ServerFrame) => void;
  private onClose: (info: CloseInfo) => void;

  /**
   * Opens the socket at once. The ticket travels as the `ticket.<ticket>`
   * subprotocol, so it never appears in a URL, a proxy's access log or the
   * browser's history.
   *
   * @param onFrame every parsed frame, in order
   * @param onClose once, when the socket ends (not after {@link abandon} or
   *   {@link close}, which report their own way)
   */
  constructor(
    Socket: WebSocketConstructor,
    url: string,
    ticket: string,
    onFrame: (frame: ServerFrame) => void,
    onClose: (info: CloseInfo) => void,
  ) {
    this.onFrame = onFrame;
    this.onClose = onClose;
    const socket = new Socket(url, [`ticket.${ticket}`]);
    this.socket = socket;
    // Errors are always followed by a close event, which is what counts; but
    // an emitter-based WebSocket (`ws`) throws on an error nobody listens to.
    socket.onerror = ignore;
    socket.onmessage = (event) => {
      let frame: ServerFrame;
      try {
        frame = JSON.parse(String(event.data)) as ServerFrame;
      } catch {
        return; // the node only sends JSON; anything else is not ours to act on
      }
      this.onFrame(frame);
    };
    socket.onclose = (event) => {
      this.detach();
      this.onClose({ code: event.code, reason: event.reason, wasClean: event.wasClean });
    };
  }

  /** Sends a frame if the socket is open; false if it is not (it is ending). */
  send(frame: object): boolean {
    const socket = this.socket;
    if (!socket || socket.readyState !== OPEN) return false;
    socket.send(JSON.stringify(frame));
    return true;
  }

  /**
   * Closes with the close handshake: resolves with the close event's code,
   * reason and `wasClean` (the node echoes the client's code, so a clean
   * close reads as that code with `wasClean: true`). Frames arriving
   * meanwhile are dropped. A peer that never answers is abandoned after
   * `timeout` ms (`wasClean: false`).
   */
  close(code: number, reason: string, timeout = 3000): Promise<CloseInfo> {
    const socket = this.socket;
    if (!socket) return Promise.resolve({ code: 1006, reason: '', wasClean: false });
    this.onFrame = ignore;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.abandon();
        resolve({ code: 1006, reason: 'close handshake timed out', wasClean: false });
      }, timeout);
      this.onClose = (info) => {
        clearTimeout(timer);
        resolve(info);
      };
      socket.close(code, reason);
    });
  }

  /**
   * Gives up on a socket that is presumed dead (no heartbeat, the browser
   * went offline, a connect timeout): its handlers are removed first, so
   * nothing it does later reaches the client, then it is closed without
   * waiting for an answer.
   */
  abandon(): void {
    const socket = this.socket;
    if (!socket) return;
    this.detach();
    try {
      socket.close(1000, 'abandoned');
    } catch {
      // already closing
    }
  }

  private detach(): void {
    const socket = this.socket;
    if (!socket) return;
    socket.onopen = socket.onmessage = socket.onclose = null;
    socket.onerror = ignore;
    this.socket = null;
  }
}

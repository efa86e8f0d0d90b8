/**
 * A minimal typed event emitter. Not EventTarget: that would make every
 * listener unpack `event.detail`, and Node's and browsers' CustomEvent differ.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Listener = (...args: any[]) => void;

export class Emitter<Events extends { [K in keyof Events]: Listener }> {
  private listeners: { [K in keyof Events]?: Set<Events[K]> } = {};

  /** Adds a listener; returns the function that removes it. */
  on<K extends keyof Events>(event: K, listener: Events[K]): () => void {
    (this.listeners[event] ??= new Set()).add(listener);
    return () => this.off(event, listener);
  }

  off<K extends keyof Events>(event: K, listener: Events[K]): void {
    this.listeners[event]?.delete(listener);
  }

  /**
   * Calls the listeners in order. One that throws does not stop the others or
   * the client's own bookkeeping: its error is re-thrown on its own, where the
   * page's error reporting (or Node's) sees it.
   */
  protected emit<K extends keyof Events>(event: K, ...args: Parameters<Events[K]>): void {
    const set = this.listeners[event];
    if (set) for (const listener of [...set]) call(listener, args);
  }
}

/** Calls an application callback; a throw is reported asynchronously, not propagated. */
export function call(fn: Listener | undefined, args: unknown[]): void {
  if (!fn) return;
  try {
    fn(...args);
  } catch (error) {
    queueMicrotask(() => {
      throw error;
    });
  }
}

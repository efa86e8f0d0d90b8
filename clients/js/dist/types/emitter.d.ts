/**
 * A minimal typed event emitter. Not EventTarget: that would make every
 * listener unpack `event.detail`, and Node's and browsers' CustomEvent differ.
 */
type Listener = (...args: any[]) => void;
export declare class Emitter<Events extends {
    [K in keyof Events]: Listener;
}> {
    private listeners;
    /** Adds a listener; returns the function that removes it. */
    on<K extends keyof Events>(event: K, listener: Events[K]): () => void;
    off<K extends keyof Events>(event: K, listener: Events[K]): void;
    /**
     * Calls the listeners in order. One that throws does not stop the others or
     * the client's own bookkeeping: its error is re-thrown on its own, where the
     * page's error reporting (or Node's) sees it.
     */
    protected emit<K extends keyof Events>(event: K, ...args: Parameters<Events[K]>): void;
}
/** Calls an application callback; a throw is reported asynchronously, not propagated. */
export declare function call(fn: Listener | undefined, args: unknown[]): void;
export {};

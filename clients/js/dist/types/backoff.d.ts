/**
 * Reconnect delays: exponential, capped, with jitter.
 *
 * The ceiling doubles per failed attempt in a row (min, 2·min, 4·min, … up to
 * max) and the delay is drawn uniformly from its upper half. The lower bound
 * keeps a client from hammering a node that just refused it; the jitter keeps
 * thousands of tabs that lost the same node at once from returning in step
 * (the "thundering herd" a restarted node would otherwise meet).
 *
 * @param attempt failed attempts in a row before this one (0 for the first retry)
 * @param random a source of numbers in [0, 1) (tests pass a fixed one)
 */
export declare function backoffDelay(attempt: number, min: number, max: number, random?: () => number): number;

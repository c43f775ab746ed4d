/**
 * Reconnect pacing: exponential backoff with full jitter, so that clients dropped together by a
 * restart do not come back together. Pure, so the tests check the numbers directly.
 */

import type { BackoffOptions } from "./types.js";

export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: 500, maxMs: 30_000, stableMs: 10_000 };

/** Full jitter: uniform in [0, min(max, base * 2^attempt)). */
export function backoffDelay(attempt: number, options: Pick<BackoffOptions, "baseMs" | "maxMs">, random = Math.random): number {
  const ceiling = Math.min(options.maxMs, options.baseMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/**
 * Reconnect pacing: exponential backoff with full jitter, so that clients dropped together by a
 * restart do not come back together; the first attempt after a drop spread over a window; and
 * the server's `Retry-After` as a floor. Pure, so the tests check the numbers directly.
 */

import type { BackoffOptions } from "./types.js";

export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: 500, maxMs: 30_000, stableMs: 10_000, spreadMs: 3_000 };

/** A server's retry hint longer than this is taken as this (a misconfigured proxy should not
 * park every client for a day; `reconnect()` or the browser's `online` event still act at once). */
export const MAX_RETRY_AFTER_MS = 300_000;

/** The jitter added to a retry hint: uniform in [0, max(this, half the hint)). */
export const MIN_RETRY_AFTER_SPREAD_MS = 1_000;

/** Full jitter: uniform in [0, min(max, base * 2^attempt)). */
export function backoffDelay(attempt: number, options: Pick<BackoffOptions, "baseMs" | "maxMs">, random = Math.random): number {
  const ceiling = Math.min(options.maxMs, options.baseMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/**
 * The wait before reconnect attempt `attempt` (0: the first after a drop or a failed connect).
 * The first is uniform in [0, spreadMs): many clients dropped at once (a server killed, a 1012
 * drain, a network blip) spread their first attempts over the window instead of all arriving in
 * the same half second. Later ones are `backoffDelay`. A server's retry hint (`Retry-After`, or
 * `retry_after` in an error) is a floor: never earlier than it plus `retryAfterJitter`, and no
 * shorter than the backoff would be anyway, so a long outage answered with `Retry-After: 1` still
 * backs off to `maxMs`.
 */
export function reconnectDelay(
  attempt: number,
  options: Pick<BackoffOptions, "baseMs" | "maxMs" | "spreadMs">,
  random = Math.random,
  retryAfterMs: number | null = null,
): number {
  const drawn = attempt <= 0 ? Math.floor(random() * options.spreadMs) : backoffDelay(attempt, options, random);
  if (retryAfterMs === null) return drawn;
  const hint = Math.min(MAX_RETRY_AFTER_MS, Math.max(0, retryAfterMs));
  return Math.max(drawn, hint + retryAfterJitter(hint, random));
}

/** Clients told the same `Retry-After` must not return in the same millisecond: uniform in
 * [0, max(1 s, hint / 2)), i.e. "5" means 5 to 7.5 s, "1" means 1 to 2 s. */
export function retryAfterJitter(hintMs: number, random = Math.random): number {
  return Math.floor(random() * Math.max(MIN_RETRY_AFTER_SPREAD_MS, hintMs / 2));
}

const HTTP_DATE = /\b(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)\b/i;

/** An HTTP `Retry-After` in milliseconds from `now`: delta-seconds ("5", also "1.5") or an
 * HTTP-date (a date already past is 0); null when absent or unreadable. */
export function parseRetryAfter(value: string | null | undefined, now: number): number | null {
  const text = value?.trim();
  if (!text) return null;
  if (/^\d+(\.\d+)?$/.test(text)) return Math.min(MAX_RETRY_AFTER_MS, Number(text) * 1000);
  if (!HTTP_DATE.test(text)) return null; // Date.parse would read "soon 12" as a year
  const at = Date.parse(text);
  return Number.isNaN(at) ? null : Math.min(MAX_RETRY_AFTER_MS, Math.max(0, at - now));
}

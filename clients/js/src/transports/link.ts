/**
 * The contract between the client and its transports (WebSocket, SSE, long-polling): a transport
 * is opened with a `LinkContext`, reports what happens to a `Sink`, and is driven through the
 * `Link` it returns. Also the request helpers all three share.
 */

import { parseRetryAfter } from "../backoff.js";
import type { ConnectOptions, Env, RealtimeEvent, ServiceError } from "../types.js";

export interface Closed {
  reason: string;
  code?: number;
  /** The server answered and said no (bad token, bad cursor, forbidden channel): the transport
   * itself works, so this is no reason to fall back to the next one. */
  refused?: boolean;
  /** The server is overloaded and said when to come back (`Retry-After`, or `retry_after` in the
   * error before a WebSocket's 1013): the next attempt, on the same transport, waits at least this. */
  retryAfterMs?: number;
  error?: ServiceError;
}

export interface Sink {
  open(): void;
  event(event: RealtimeEvent): void;
  reset(): void;
  error(error: ServiceError): void;
  /** Long-polling: the position the server says to continue from. */
  cursor(cursor: string): void;
  closed(why: Closed): void;
}

export interface Link {
  /** The channels the connection was opened with (kept in sync by subscribe/unsubscribe ops). */
  channels: Set<string>;
  close(): void;
  /** WebSocket: join/leave in place. SSE and polling have no such op and reconnect. */
  subscribe?(channel: string): void;
  unsubscribe?(channel: string): void;
  /** WebSocket: hand over a fresh token. */
  refresh?(token: string): void;
  /** Polling: pick up changed channels with the next request, now. */
  resync?(): void;
}

export interface LinkContext {
  base: string;
  env: Env;
  token: () => string;
  channels: string[];
  since: string | null;
  clientId?: string;
  options: Required<Pick<ConnectOptions, "auth" | "pollTimeout" | "pingIntervalMs" | "idleTimeoutMs">>;
  cursor: () => string | null;
  currentChannels: () => string[];
}

export function query(params: Record<string, string | number | null | undefined>): string {
  const parts = Object.entries(params)
    .filter(([, value]) => value !== null && value !== undefined && value !== "")
    .map(([key, value]) => `${key}=${encodeURIComponent(String(value)).replace(/%2C/gi, ",")}`);
  return parts.length ? `?${parts.join("&")}` : "";
}

/** What an HTTP error answer means for the transport: our service says no (`refused`: 401, a
 * 400/403 with an error code such as a forbidden channel, or a 422 `too_many_subscriptions`), says
 * "not now" (503 or 429: `refused` too, so the same transport is tried again, after `Retry-After`
 * when given), or something in between (a proxy page, a 404, a 502) makes the transport
 * unavailable here. `now` reads an HTTP-date `Retry-After`. */
export async function refusal(response: Response, now: number): Promise<Closed> {
  let body: any = null;
  if ((response.headers.get("content-type") ?? "").includes("json")) body = await response.json().catch(() => null);
  const code = typeof body?.code === "string" ? body.code : null;
  const status = response.status;
  if (status === 401) {
    return { reason: "unauthorized", refused: true, error: { code: code ?? "unauthorized", message: body?.message ?? "unauthorized", status: 401 } };
  }
  if (((status === 400 || status === 403) && code) || (status === 422 && code === "too_many_subscriptions")) {
    return { reason: code, refused: true, error: { ...body, status } };
  }
  if (status === 503 || status === 429) {
    // Overloaded (too_many_connections), or the engine is restarting (unavailable): the transport
    // works and falling back would only move the load. The header wins; a body's exact
    // `retry_after` serves where a proxy hid the header from the page.
    const header = parseRetryAfter(response.headers.get("retry-after"), now);
    const exact = typeof body?.retry_after === "number" && body.retry_after >= 0 ? body.retry_after * 1000 : null;
    const retryAfterMs = header ?? exact;
    return {
      reason: code ?? `HTTP ${status}`,
      refused: true,
      ...(retryAfterMs !== null ? { retryAfterMs } : {}),
      ...(code ? { error: { ...body, status } } : {}),
    };
  }
  return { reason: `HTTP ${status}` };
}

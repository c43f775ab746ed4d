/**
 * The contract between the client and its transports (WebSocket, SSE, long-polling): a transport
 * is opened with a `LinkContext`, reports what happens to a `Sink`, and is driven through the
 * `Link` it returns. Also the request helpers all three share.
 */

import type { ConnectOptions, Env, RealtimeEvent, ServiceError } from "../types.js";

export interface Closed {
  reason: string;
  code?: number;
  /** The server answered and said no (bad token, bad cursor, forbidden channel): the transport
   * itself works, so this is no reason to fall back to the next one. */
  refused?: boolean;
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

/** What an HTTP error answer means for the transport: our service says no (`refused`), or
 * something in between (a proxy page, a 404, a 5xx) makes the transport unavailable here. */
export async function refusal(response: Response): Promise<Closed> {
  let body: any = null;
  if ((response.headers.get("content-type") ?? "").includes("json")) body = await response.json().catch(() => null);
  const code = typeof body?.code === "string" ? body.code : null;
  if (response.status === 401) {
    return { reason: "unauthorized", refused: true, error: { code: code ?? "unauthorized", message: body?.message ?? "unauthorized", status: 401 } };
  }
  if ((response.status === 400 || response.status === 403) && code) {
    return { reason: code, refused: true, error: { ...body, status: response.status } };
  }
  return { reason: `HTTP ${response.status}` };
}

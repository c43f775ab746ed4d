/**
 * The client's public types in one place: the envelope and errors the service sends, the events
 * the client emits, its options, and what it needs from the browser (`Env`, which tests fake).
 * Every other module imports its types from here, so none has to import the client for them.
 */

export type TransportName = "ws" | "sse" | "poll";
export const TRANSPORTS: readonly TransportName[] = ["ws", "sse", "poll"];

/** The envelope every transport delivers (contract section 3). */
export interface RealtimeEvent<T = any> {
  id: string;
  channel: string;
  type: string;
  data: T;
  ts: string;
  snapshot?: boolean;
}

/** An error the service reported (error frame, SSE `event: error`, or an HTTP error body). */
export interface ServiceError {
  code: string;
  message: string;
  channel?: string;
  status?: number;
  /** Seconds after which trying again may succeed (e.g. `too_many_connections`). */
  retry_after?: number;
}

export interface PresentUser {
  user_id: string;
  connections: number;
  since: string;
}

export type ConnectionState = "connecting" | "open" | "waiting" | "offline" | "closed";

export interface ClientEvents {
  open: { transport: TransportName };
  close: { transport: TransportName; reason: string; code?: number };
  /** History may be lost: refetch what you show. `gap`: the server's log no longer holds the
   * cursor; `bad_cursor`: the server refused it; `no_cursor`: reconnected without knowing where
   * the previous connection was. */
  reset: { reason: "gap" | "bad_cursor" | "no_cursor" };
  error: ServiceError;
  transport: TransportName;
  state: ConnectionState;
  /** Every event delivered, whatever its channel (after de-duplication). */
  event: RealtimeEvent;
}

export interface BackoffOptions {
  baseMs: number;
  maxMs: number;
  /** A connection that stays open this long resets the attempt count. */
  stableMs: number;
  /** The first reconnect after a drop (or a failed connect, or the browser's `online` event) is
   * uniform in [0, spreadMs), so that clients dropped together do not return together. */
  spreadMs: number;
}

/** What the client needs from its surroundings; tests pass fakes. */
export interface Env {
  WebSocket: new (url: string) => WebSocketLike;
  fetch: (url: string, init?: RequestInit) => Promise<Response>;
  setTimeout: (fn: () => void, ms: number) => unknown;
  clearTimeout: (handle: unknown) => void;
  now: () => number;
  random: () => number;
  online: () => boolean;
  /** Calls `listener(true|false)` on the browser's online/offline events; returns a remover. */
  watchConnectivity: (listener: (online: boolean) => void) => () => void;
}

export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export interface ConnectOptions {
  /** The service's base URL, e.g. `https://rt.example.com`; empty: this page's origin. */
  url?: string;
  /** Returns a JWT; asked on every (re)connect and before the current one expires. */
  getToken: () => string | Promise<string>;
  /** Transports in order of preference (default ws, sse, poll); a single one forces it. */
  transports?: TransportName[];
  /** Sent as `client_id`: the server then keeps a cursor for this client (and, for long-polling,
   * counts it as one presence connection). Keep it per tab, e.g. in sessionStorage. */
  clientId?: string;
  /** Channels to join from the start (besides `user:<sub>` and `tenant:<tid>`). */
  channels?: string[];
  /** How the WebSocket authenticates: a one-time ticket (default) or `?access_token=`. */
  auth?: "ticket" | "access_token";
  backoff?: Partial<BackoffOptions>;
  /** Seconds one long-poll waits (the server caps it; default 25). */
  pollTimeout?: number;
  /** A transport that has not opened after this long counts as unavailable (default 10 s). */
  openTimeoutMs?: number;
  /** WebSocket ping interval; a socket silent for twice as long is dropped (default 20 s). */
  pingIntervalMs?: number;
  /** An SSE stream silent this long (the server sends a comment every 15 s) is dropped (45 s). */
  idleTimeoutMs?: number;
  /** How long a transport that could not open is skipped while another works (default 5 min). */
  blockedForMs?: number;
  /** Namespaces whose channels keep live state (the server's STATE_NAMESPACES): a channel of
   * these subscribed while on SSE or polling fetches its snapshot (default analysis, job). */
  stateNamespaces?: string[];
  env?: Partial<Env>;
}

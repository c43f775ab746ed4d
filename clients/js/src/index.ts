/**
 * Browser client of the Forge Factory real-time service (wire contract: ../../../shared/CONTRACT.md,
 * summarised in the project README under "Wire protocol").
 *
 *     const rt = connect({ url: "https://rt.example.com", getToken: () => auth.jwt() });
 *     const off = rt.subscribe("analysis:a1", (event) => render(event));
 *     rt.on("reset", () => refetchEverything());
 *
 * What it does for the app:
 * - Transport: WebSocket first; a transport that cannot open (refused, blocked by a proxy, timed
 *   out) is skipped for the next one (SSE, then long-polling) and avoided for `blockedForMs`.
 *   `transports: ["sse"]` forces one; `setTransports()` switches at run time.
 * - Reconnects with exponential backoff and full jitter (`backoffDelay`), capped; the first attempt
 *   after a drop is spread over `spreadMs` (`reconnectDelay`); the attempt count resets once a
 *   connection has stayed up for `stableMs`. While the browser is offline nothing is tried; the
 *   `online` event reconnects within `spreadMs`.
 * - Overload: a 503 (or 429) with `Retry-After`, or a WebSocket closed with 1013 after a
 *   `too_many_connections` frame, retries the same transport no earlier than the server said
 *   (plus jitter), never falls back; `too_many_subscriptions` drops that channel like a 403.
 * - Resume: every transport starts from the last event id delivered (`since`), also after a
 *   transport switch; ids already delivered are dropped; a `snapshot: true` event never moves the
 *   cursor. Without a cursor yet, the client learns the head first (see `bootstrap`). When the
 *   server says history was lost (`reset`) the app is told, to refetch its state.
 * - Tokens: `getToken()` is asked on every (re)connect and again before the token's `exp`
 *   (a WebSocket gets `{"op":"refresh"}`, an SSE stream is resumed with the new token, polling
 *   just uses it). The WebSocket, which cannot send headers, authenticates with a one-time ticket
 *   (`POST /v1/tickets`) or, with `auth: "access_token"`, the token in the query; SSE and polling
 *   use `fetch` with an `Authorization` header.
 *
 * SSE is read with `fetch` rather than `EventSource`: an EventSource cannot send headers, only
 * dispatches event names it was told in advance (ours are the event types), and hides the HTTP
 * status that tells "blocked" from "unauthorized".
 *
 * This module is the package's entry and only re-exports the public API; the code is split by
 * concern: `client.ts` (state machine, reconnects, tokens, resume), `transports/` (ws, sse, poll
 * and the contract between them and the client), `sse-parser.ts`, `dedupe.ts`, `backoff.ts`,
 * `tokens.ts`, `env.ts`, `types.ts`, and `stores/` (re-exported through `stores.ts`).
 */

export { backoffDelay, parseRetryAfter, reconnectDelay } from "./backoff.js";
export { RealtimeClient, connect } from "./client.js";
export { SseParser } from "./sse-parser.js";
export { decodeToken } from "./tokens.js";
export {
  TRANSPORTS,
  type BackoffOptions,
  type ClientEvents,
  type ConnectOptions,
  type ConnectionState,
  type Env,
  type PresentUser,
  type RealtimeEvent,
  type ServiceError,
  type TransportName,
  type WebSocketLike,
} from "./types.js";

export * from "./stores.js";

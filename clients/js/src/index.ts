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
 * - Reconnects with exponential backoff and full jitter (`backoffDelay`), capped; the attempt count
 *   resets once a connection has stayed up for `stableMs`. While the browser is offline nothing is
 *   tried; the `online` event reconnects at once.
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

const DEFAULT_BACKOFF: BackoffOptions = { baseMs: 500, maxMs: 30_000, stableMs: 10_000 };

/** Full jitter: uniform in [0, min(max, base * 2^attempt)). */
export function backoffDelay(attempt: number, options: Pick<BackoffOptions, "baseMs" | "maxMs">, random = Math.random): number {
  const ceiling = Math.min(options.maxMs, options.baseMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/** The claims of a JWT, without verifying it (the server does): `exp` tells when to refresh. */
export function decodeToken(token: string): { sub?: string; tid?: string; exp?: number; [claim: string]: unknown } {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part + "=".repeat((4 - (part.length % 4)) % 4)), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return {};
  }
}

export function connect(options: ConnectOptions): RealtimeClient {
  const client = new RealtimeClient(options);
  client.start();
  return client;
}

// --- what a transport reports to the client -----------------------------------------------

interface Closed {
  reason: string;
  code?: number;
  /** The server answered and said no (bad token, bad cursor, forbidden channel): the transport
   * itself works, so this is no reason to fall back to the next one. */
  refused?: boolean;
  error?: ServiceError;
}

interface Sink {
  open(): void;
  event(event: RealtimeEvent): void;
  reset(): void;
  error(error: ServiceError): void;
  /** Long-polling: the position the server says to continue from. */
  cursor(cursor: string): void;
  closed(why: Closed): void;
}

interface Link {
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

interface LinkContext {
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

type Handler = (event: RealtimeEvent) => void;
type Outcome = "open" | "unavailable" | "refused";

export class RealtimeClient {
  state: ConnectionState = "connecting";
  /** The transport in use (or last used). */
  transport: TransportName | null = null;
  /** The id of the last event delivered: where the next connection resumes. */
  cursor: string | null = null;
  /** Milliseconds until the pending reconnect attempt (while `waiting`). */
  retryDelay: number | null = null;
  /** `sub` and `tid` of the current token. */
  user: string | null = null;
  tenant: string | null = null;

  private readonly opts: ConnectOptions;
  private readonly env: Env;
  private readonly base: string;
  private readonly backoff: BackoffOptions;
  private transports: TransportName[];
  private readonly handlers = new Map<string, Set<Handler>>();
  private readonly listeners = new Map<keyof ClientEvents, Set<(value: any) => void>>();
  private readonly seen = new RecentIds(2000);
  private readonly snapshotsSeen = new RecentIds(500);
  private readonly blockedUntil = new Map<TransportName, number>();
  private token: string | null = null;
  private expiresAt: number | null = null;
  private link: Link | null = null;
  private generation = 0;
  private attempt = 0;
  private everOpened = false;
  private timers: { retry?: unknown; stable?: unknown; refresh?: unknown } = {};
  private resyncQueued = false;
  private stopWatching: () => void = () => {};

  constructor(options: ConnectOptions) {
    this.opts = options;
    this.env = { ...defaultEnv(), ...options.env };
    this.base = (options.url ?? (globalThis as any).location?.origin ?? "").replace(/\/+$/, "");
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.transports = checkTransports(options.transports ?? [...TRANSPORTS]);
    for (const channel of options.channels ?? []) this.handlers.set(channel, new Set());
  }

  start(): void {
    this.stopWatching = this.env.watchConnectivity((online) => (online ? this.wentOnline() : this.wentOffline()));
    void this.dial();
  }

  // --- the app's side ---------------------------------------------------------------------

  /** Receive the events of `channel`; returns the function that stops it. */
  subscribe(channel: string, handler: Handler): () => void {
    let set = this.handlers.get(channel);
    const added = !set;
    if (!set) this.handlers.set(channel, (set = new Set()));
    set.add(handler);
    if (added) this.channelsChanged([channel]);
    return () => this.unsubscribe(channel, handler);
  }

  /** Stop `handler` (or every handler) of `channel`; the channel is left when none remains. */
  unsubscribe(channel: string, handler?: Handler): void {
    const set = this.handlers.get(channel);
    if (!set) return;
    if (handler) set.delete(handler);
    if (handler && set.size > 0) return;
    this.handlers.delete(channel);
    this.channelsChanged();
  }

  on<K extends keyof ClientEvents>(name: K, listener: (value: ClientEvents[K]) => void): () => void {
    let set = this.listeners.get(name);
    if (!set) this.listeners.set(name, (set = new Set()));
    set.add(listener);
    return () => set!.delete(listener);
  }

  /** Who is viewing `channel` now (`GET /v1/presence/{channel}`). */
  async presence(channel: string): Promise<PresentUser[]> {
    const answer = await this.request<{ users: PresentUser[] }>(`/v1/presence/${encodeURIComponent(channel)}`);
    return answer.users;
  }

  /** An authenticated JSON request to the service (used by the notification helpers). */
  async request<T = any>(path: string, init: { method?: string; body?: unknown } = {}): Promise<T> {
    const send = async (token: string) =>
      this.env.fetch(this.base + path, {
        method: init.method ?? "GET",
        headers: { Authorization: `Bearer ${token}`, ...(init.body !== undefined ? { "Content-Type": "application/json" } : {}) },
        body: init.body !== undefined ? JSON.stringify(init.body) : undefined,
      });
    let response = await send(this.token ?? (await this.freshToken()));
    if (response.status === 401) response = await send(await this.freshToken());
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw Object.assign(new Error(body.message ?? `HTTP ${response.status}`), { code: body.code ?? "http_error", status: response.status });
    }
    return (await response.json()) as T;
  }

  /** Use these transports from now on (in this order); the stream resumes from the cursor. */
  setTransports(transports: TransportName[]): void {
    this.transports = checkTransports(transports);
    this.blockedUntil.clear();
    this.reconnect();
  }

  /** Drop the current connection and connect again at once (cursor kept). */
  reconnect(): void {
    if (this.state === "closed") return;
    this.attempt = 0;
    void this.dial();
  }

  close(): void {
    this.generation++;
    this.link?.close();
    this.link = null;
    this.clearTimers();
    this.stopWatching();
    this.setState("closed");
  }

  // --- connecting -------------------------------------------------------------------------

  private async dial(): Promise<void> {
    const generation = ++this.generation;
    // Make before break: a connection being replaced (new channels on SSE, a new token, another
    // transport) stays open until its successor opens, so the user never leaves presence. Its
    // events are ignored from now on; the successor resumes from the cursor and replays them.
    const previous = this.link;
    this.link = null;
    this.clearTimers();
    try {
      if (!this.env.online()) return this.setState("offline");
      this.setState("connecting");
      const order = this.candidates();
      try {
        await this.freshToken();
        if (this.cursor === null && !this.opts.clientId && order[0] !== "poll") await this.bootstrap(generation);
      } catch (error) {
        if (generation !== this.generation) return;
        this.emit("error", { code: "token_unavailable", message: String((error as Error)?.message ?? error) });
        return this.retryLater();
      }
      const failed: TransportName[] = [];
      for (const name of order) {
        if (generation !== this.generation) return;
        const outcome = await this.attemptTransport(name, generation);
        if (generation !== this.generation) return;
        if (outcome === "open") {
          for (const f of failed) this.blockedUntil.set(f, this.env.now() + (this.opts.blockedForMs ?? 300_000));
          return;
        }
        if (outcome === "refused") return this.retryLater();
        failed.push(name);
      }
      this.retryLater(); // nothing opened: the service is down or unreachable
    } finally {
      previous?.close();
    }
  }

  private candidates(): TransportName[] {
    const now = this.env.now();
    const usable = this.transports.filter((t) => (this.blockedUntil.get(t) ?? 0) <= now);
    return usable.length ? usable : [...this.transports];
  }

  private attemptTransport(name: TransportName, generation: number): Promise<Outcome> {
    return new Promise((resolve) => {
      let opened = false;
      let settled = false;
      const settle = (outcome: Outcome) => {
        if (settled) return;
        settled = true;
        this.env.clearTimeout(timer);
        resolve(outcome);
      };
      const current = () => generation === this.generation && this.link === link;
      // A superseded attempt settles too (as unavailable; its dial() sees the new generation and
      // stops), so the promise never hangs; whoever superseded it closes its link.
      const sink: Sink = {
        open: () => {
          if (!current()) return settle("unavailable");
          opened = true;
          settle("open");
          this.opened(name, link);
        },
        event: (event) => current() && this.deliver(event),
        reset: () => current() && this.resetState("gap"),
        error: (error) => current() && this.serviceError(error),
        cursor: (cursor) => {
          if (current()) this.cursor = cursor;
        },
        closed: (why) => {
          if (!current()) return settle("unavailable");
          this.link = null;
          if (why.error) this.serviceError(why.error);
          if (!opened) return settle(why.refused ? "refused" : "unavailable");
          this.dropped(name, why);
        },
      };
      const timer = this.env.setTimeout(() => {
        if (opened) return;
        if (current()) {
          link.close();
          this.link = null;
        }
        settle("unavailable");
      }, this.opts.openTimeoutMs ?? 10_000);
      const context = this.linkContext();
      const link = (name === "ws" ? openWebSocket : name === "sse" ? openSse : openPoll)(context, sink);
      this.link = link;
    });
  }

  private linkContext(): LinkContext {
    return {
      base: this.base,
      env: this.env,
      token: () => this.token ?? "",
      channels: this.requestedChannels(),
      since: this.cursor,
      clientId: this.opts.clientId,
      options: {
        auth: this.opts.auth ?? "ticket",
        pollTimeout: this.opts.pollTimeout ?? 25,
        pingIntervalMs: this.opts.pingIntervalMs ?? 20_000,
        idleTimeoutMs: this.opts.idleTimeoutMs ?? 45_000,
      },
      cursor: () => this.cursor,
      currentChannels: () => this.requestedChannels(),
    };
  }

  private opened(name: TransportName, link: Link): void {
    // Reconnected without a cursor (the bootstrap failed): what was published in between is
    // unknown, so the app is told. With a clientId the server keeps the position instead.
    const resumedBlind = this.everOpened && this.cursor === null && !this.opts.clientId;
    this.everOpened = true;
    const switched = this.transport !== name;
    this.transport = name;
    this.setState("open");
    this.timers.stable = this.env.setTimeout(() => (this.attempt = 0), this.backoff.stableMs);
    this.scheduleRefresh();
    if (switched) this.emit("transport", name);
    this.emit("open", { transport: name });
    if (resumedBlind) this.resetState("no_cursor");
    const joinedMeanwhile = this.requestedChannels().filter((c) => !link.channels.has(c)); // while connecting
    if (joinedMeanwhile.length) void this.fetchSnapshots(joinedMeanwhile);
    this.syncChannels(link);
  }

  private dropped(name: TransportName, why: Closed): void {
    this.env.clearTimeout(this.timers.stable);
    this.emit("close", { transport: name, reason: why.reason, code: why.code });
    this.retryLater();
  }

  private retryLater(): void {
    this.clearTimers();
    if (!this.env.online()) return this.setState("offline");
    const delay = backoffDelay(this.attempt++, this.backoff, this.env.random);
    this.retryDelay = delay;
    this.setState("waiting");
    this.timers.retry = this.env.setTimeout(() => void this.dial(), delay);
  }

  private wentOffline(): void {
    if (this.state === "waiting" || this.state === "connecting") {
      this.generation++; // abandon the attempt in progress
      this.link?.close();
      this.link = null;
      this.clearTimers();
      this.setState("offline");
    }
  }

  private wentOnline(): void {
    if (this.state === "offline" || this.state === "waiting") {
      this.attempt = 0;
      void this.dial();
    }
  }

  // --- tokens -------------------------------------------------------------------------------

  private async freshToken(): Promise<string> {
    const token = await this.opts.getToken();
    const claims = decodeToken(token);
    this.token = token;
    this.expiresAt = typeof claims.exp === "number" ? claims.exp * 1000 : null;
    this.user = typeof claims.sub === "string" ? claims.sub : this.user;
    this.tenant = typeof claims.tid === "string" ? claims.tid : this.tenant;
    return token;
  }

  /** Refresh at 80% of the remaining lifetime, at most one minute before `exp`. */
  private scheduleRefresh(): void {
    this.env.clearTimeout(this.timers.refresh);
    if (this.expiresAt === null) return;
    const remaining = this.expiresAt - this.env.now();
    if (remaining <= 0) return; // getToken gave an expired token: the next reconnect asks again
    const delay = Math.max(1_000, remaining - Math.min(60_000, remaining * 0.2));
    const generation = this.generation;
    this.timers.refresh = this.env.setTimeout(async () => {
      if (this.link && !this.link.refresh && !this.link.resync) return void this.dial(); // SSE: resume with a new token
      try {
        const token = await this.freshToken();
        if (generation !== this.generation || !this.link) return;
        this.link.refresh?.(token); // WebSocket: {"op":"refresh"}; polling sends it with its next request
        this.scheduleRefresh();
      } catch (error) {
        this.emit("error", { code: "token_unavailable", message: String((error as Error)?.message ?? error) });
      }
    }, delay);
  }

  /**
   * A stream opened without a cursor starts wherever the live head is when the server gets to it,
   * so an event published just after the app saw `open` could be missed, and a connection lost
   * before its first event would not know where it was. So without a cursor the client asks first:
   * `GET /v1/poll?timeout=0` with the channels that keep live state answers at once with their
   * snapshots and the head, and every stream then starts from that head (`since`). Channels of
   * other namespaces are left out, so a presence channel never sees this short-lived request.
   * (With a `clientId` the server keeps the position; long-polling answers with its cursor.)
   */
  private async bootstrap(generation: number): Promise<void> {
    try {
      const channels = this.stateful(this.requestedChannels()).map(encodeURIComponent).join(",");
      const response = await this.env.fetch(`${this.base}/v1/poll?timeout=0${channels ? `&channels=${channels}` : ""}`, {
        headers: { Authorization: `Bearer ${this.token}` },
        cache: "no-store",
      });
      if (!response.ok || generation !== this.generation) return;
      const answer: { events: RealtimeEvent[]; cursor: string } = await response.json();
      if (generation !== this.generation || this.cursor !== null) return;
      for (const event of answer.events) this.deliver(event);
      this.cursor = answer.cursor;
    } catch {
      // best effort: the transports will tell whether the service is reachable
    }
  }

  // --- events -------------------------------------------------------------------------------

  private deliver(event: RealtimeEvent): void {
    if (this.seen.has(event.id)) return; // at-least-once delivery: an id we already have
    if (event.snapshot) {
      // A snapshot repeats the id of an event a replay may still deliver in order: that one is
      // delivered too (so the app ends on the latest state); only the same snapshot twice is not.
      if (this.snapshotsSeen.has(event.id)) return;
      this.snapshotsSeen.add(event.id);
    } else {
      this.seen.add(event.id);
      this.cursor = event.id;
    }
    this.emit("event", event);
    for (const handler of [...(this.handlers.get(event.channel) ?? [])]) safely(handler, event);
  }

  private resetState(reason: ClientEvents["reset"]["reason"]): void {
    this.seen.clear();
    this.snapshotsSeen.clear();
    this.emit("reset", { reason });
  }

  private serviceError(error: ServiceError): void {
    if (error.code === "bad_cursor") {
      this.cursor = null;
      this.resetState("bad_cursor");
    } else if (error.channel && (error.code === "forbidden" || error.code === "bad_channel") && this.handlers.has(error.channel)) {
      this.handlers.delete(error.channel); // refused: leave it, or SSE/polling would fail forever
      this.link?.channels.delete(error.channel);
    }
    this.emit("error", error);
  }

  // --- channels -----------------------------------------------------------------------------

  /** Channels to ask for: the subscribed ones except the user's and tenant's, joined anyway. */
  private requestedChannels(): string[] {
    const own = new Set([`user:${this.user}`, `tenant:${this.tenant}`]);
    return [...this.handlers.keys()].filter((c) => !own.has(c)).sort();
  }

  private channelsChanged(added: string[] = []): void {
    if (this.state !== "open" || !this.link) return; // the next connection asks for them
    // A channel joined while resuming brings its events since the cursor but no live-state
    // snapshot (the server sends one only to a stream without cursor): fetch it.
    if (added.length) void this.fetchSnapshots(added);
    if (this.link.subscribe) return this.syncChannels(this.link);
    // SSE and polling name their channels in the URL: join from the cursor with a new request.
    if (!this.resyncQueued) {
      this.resyncQueued = true;
      queueMicrotask(() => {
        this.resyncQueued = false;
        if (this.state !== "open" || !this.link) return;
        if (sameSet(this.link.channels, this.requestedChannels())) return;
        if (this.link.resync) this.link.resync();
        else void this.dial();
      });
    }
  }

  private syncChannels(link: Link): void {
    const wanted = this.requestedChannels();
    if (link.subscribe && link.unsubscribe) {
      for (const channel of wanted) if (!link.channels.has(channel)) link.subscribe(channel);
      for (const channel of [...link.channels]) if (!wanted.includes(channel)) link.unsubscribe(channel);
    } else if (!sameSet(link.channels, wanted)) {
      this.channelsChanged();
    }
  }

  private stateful(channels: string[]): string[] {
    const namespaces = this.opts.stateNamespaces ?? ["analysis", "job"];
    return channels.filter((c) => namespaces.includes(c.split(":")[0]));
  }

  private async fetchSnapshots(channels: string[]): Promise<void> {
    const stateful = this.stateful(channels);
    if (!stateful.length) return;
    try {
      const answer = await this.request<{ events: RealtimeEvent[] }>(`/v1/poll?timeout=0&channels=${stateful.map(encodeURIComponent).join(",")}`);
      for (const event of answer.events) if (event.snapshot && stateful.includes(event.channel)) this.deliver(event);
    } catch {
      // the channel's next event brings its state
    }
  }

  // --- plumbing -----------------------------------------------------------------------------

  private emit<K extends keyof ClientEvents>(name: K, value: ClientEvents[K]): void {
    for (const listener of [...(this.listeners.get(name) ?? [])]) safely(listener, value);
  }

  private setState(state: ConnectionState): void {
    if (state !== "waiting") this.retryDelay = null;
    if (this.state === state) return;
    this.state = state;
    this.emit("state", state);
  }

  private clearTimers(): void {
    for (const handle of Object.values(this.timers)) this.env.clearTimeout(handle);
    this.timers = {};
  }
}

// --- transports -----------------------------------------------------------------------------

function query(params: Record<string, string | number | null | undefined>): string {
  const parts = Object.entries(params)
    .filter(([, value]) => value !== null && value !== undefined && value !== "")
    .map(([key, value]) => `${key}=${encodeURIComponent(String(value)).replace(/%2C/gi, ",")}`);
  return parts.length ? `?${parts.join("&")}` : "";
}

/** What an HTTP error answer means for the transport: our service says no (`refused`), or
 * something in between (a proxy page, a 404, a 5xx) makes the transport unavailable here. */
async function refusal(response: Response): Promise<Closed> {
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

function openWebSocket(ctx: LinkContext, sink: Sink): Link {
  let socket: WebSocketLike | null = null;
  let finished = false;
  let lastError: ServiceError | null = null;
  let heard = ctx.env.now();
  let pinger: unknown;
  const finish = (why: Closed) => {
    if (finished) return;
    finished = true;
    ctx.env.clearTimeout(pinger);
    sink.closed(why);
  };
  const send = (frame: object) => {
    if (socket?.readyState === 1) socket.send(JSON.stringify(frame));
  };
  const ping = () => {
    if (ctx.env.now() - heard > 2 * ctx.options.pingIntervalMs) {
      socket?.close();
      return finish({ reason: "no answer to ping" });
    }
    send({ op: "ping" });
    pinger = ctx.env.setTimeout(ping, ctx.options.pingIntervalMs);
  };
  const link: Link = {
    channels: new Set(ctx.channels),
    close() {
      finished = true;
      ctx.env.clearTimeout(pinger);
      socket?.close(1000);
    },
    subscribe(channel) {
      link.channels.add(channel);
      send({ op: "subscribe", channel });
    },
    unsubscribe(channel) {
      link.channels.delete(channel);
      send({ op: "unsubscribe", channel });
    },
    refresh(token) {
      send({ op: "refresh", token });
    },
  };
  void (async () => {
    let credential: Record<string, string>;
    try {
      if (ctx.options.auth === "access_token") {
        credential = { access_token: ctx.token() };
      } else {
        const response = await ctx.env.fetch(`${ctx.base}/v1/tickets`, { method: "POST", headers: { Authorization: `Bearer ${ctx.token()}` } });
        if (!response.ok) return finish(await refusal(response));
        credential = { ticket: (await response.json()).ticket };
      }
    } catch {
      return finish({ reason: "network" });
    }
    if (finished) return;
    const url = ctx.base.replace(/^http/, "ws") + "/v1/ws" +
      query({ ...credential, channels: ctx.channels.join(","), since: ctx.since, client_id: ctx.clientId });
    try {
      socket = new ctx.env.WebSocket(url);
    } catch {
      return finish({ reason: "refused" });
    }
    socket.onopen = () => {
      if (finished) return;
      heard = ctx.env.now();
      pinger = ctx.env.setTimeout(ping, ctx.options.pingIntervalMs);
      sink.open();
    };
    socket.onmessage = (message) => {
      if (finished) return;
      heard = ctx.env.now();
      let frame: any;
      try {
        frame = JSON.parse(String(message.data));
      } catch {
        return;
      }
      if (typeof frame.op !== "string") return sink.event(frame);
      if (frame.op === "reset") sink.reset();
      else if (frame.op === "error") {
        lastError = frame;
        sink.error({ code: frame.code, message: frame.message, ...(frame.channel ? { channel: frame.channel } : {}) });
      }
      // subscribed / unsubscribed / pong / refreshed / presence need nothing here
    };
    socket.onclose = (event) => {
      // 4001: the token (the next connection asks getToken again); 4400: the request (a bad cursor
      // was reported by the error frame before); 4008: we fell behind; anything else: the network.
      const refused = event.code === 4001 || event.code === 4400;
      finish({ reason: lastError?.code ?? (event.reason || "closed"), code: event.code, refused });
    };
  })();
  return link;
}

function openSse(ctx: LinkContext, sink: Sink): Link {
  const abort = new AbortController();
  let finished = false;
  let watchdog: unknown;
  const finish = (why: Closed) => {
    ctx.env.clearTimeout(watchdog);
    if (finished) return;
    finished = true;
    sink.closed(why);
  };
  const link: Link = {
    channels: new Set(ctx.channels),
    close() {
      finished = true;
      ctx.env.clearTimeout(watchdog);
      abort.abort();
    },
  };
  const alive = () => {
    ctx.env.clearTimeout(watchdog);
    watchdog = ctx.env.setTimeout(() => {
      abort.abort();
      finish({ reason: "stream went silent" });
    }, ctx.options.idleTimeoutMs);
  };
  const dispatch = (type: string, data: string) => {
    if (type === "reset") return sink.reset();
    let payload: any;
    try {
      payload = JSON.parse(data);
    } catch {
      return;
    }
    if (type === "error") sink.error({ code: payload.code, message: payload.message });
    else sink.event(payload);
  };
  void (async () => {
    let response: Response;
    try {
      const url = `${ctx.base}/v1/sse` + query({ channels: ctx.channels.join(","), since: ctx.since, client_id: ctx.clientId });
      response = await ctx.env.fetch(url, {
        headers: { Accept: "text/event-stream", Authorization: `Bearer ${ctx.token()}` },
        cache: "no-store",
        signal: abort.signal,
      });
    } catch {
      return finish({ reason: "network" });
    }
    if (!response.ok || !(response.headers.get("content-type") ?? "").startsWith("text/event-stream") || !response.body) {
      return finish(response.ok ? { reason: "not an event stream" } : await refusal(response));
    }
    if (finished) return;
    alive();
    sink.open();
    const parser = new SseParser(dispatch);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || finished) break;
        alive();
        parser.push(decoder.decode(value, { stream: true }));
      }
      finish({ reason: "stream ended" });
    } catch {
      finish({ reason: "network" });
    }
  })();
  return link;
}

/** The `text/event-stream` format, fed in arbitrary chunks. */
export class SseParser {
  private pending = "";
  private type = "";
  private data: string[] = [];

  constructor(private readonly dispatch: (type: string, data: string) => void) {}

  push(chunk: string): void {
    let text = this.pending + chunk;
    const heldCR = text.endsWith("\r"); // maybe the first half of a CRLF
    if (heldCR) text = text.slice(0, -1);
    const lines = text.split(/\r\n|\r|\n/);
    this.pending = lines.pop()! + (heldCR ? "\r" : "");
    for (const line of lines) this.line(line);
  }

  private line(line: string): void {
    if (line === "") {
      if (this.data.length) this.dispatch(this.type || "message", this.data.join("\n"));
      this.type = "";
      this.data = [];
      return;
    }
    if (line.startsWith(":")) return; // a keep-alive comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.type = value;
    else if (field === "data") this.data.push(value);
    // `id` repeats the envelope's id; `retry` concerns EventSource only
  }
}

function openPoll(ctx: LinkContext, sink: Sink): Link {
  let finished = false;
  let request: AbortController | null = null;
  let resyncing = false;
  const link: Link = {
    channels: new Set(ctx.channels),
    close() {
      finished = true;
      request?.abort();
    },
    resync() {
      resyncing = true;
      request?.abort();
    },
  };
  const finish = (why: Closed) => {
    if (finished) return;
    finished = true;
    sink.closed(why);
  };
  void (async () => {
    let opened = false;
    while (!finished) {
      const channels = ctx.currentChannels();
      link.channels = new Set(channels);
      request = new AbortController();
      // the first request answers at once (it opens the link); then wait for events
      const wait = opened ? ctx.options.pollTimeout : 0;
      const guard = ctx.env.setTimeout(() => request?.abort(), (wait + 15) * 1000);
      let body: { events: RealtimeEvent[]; cursor: string; reset: boolean };
      try {
        const url = `${ctx.base}/v1/poll` + query({ channels: channels.join(","), since: ctx.cursor(), timeout: wait, client_id: ctx.clientId });
        const response = await ctx.env.fetch(url, {
          headers: { Authorization: `Bearer ${ctx.token()}` },
          cache: "no-store",
          signal: request.signal,
        });
        if (!response.ok) return finish(await refusal(response));
        body = await response.json();
      } catch {
        if (resyncing && !finished) {
          resyncing = false;
          continue;
        }
        return finish({ reason: "network" });
      } finally {
        ctx.env.clearTimeout(guard);
      }
      if (finished) return;
      if (!opened) {
        opened = true;
        sink.open();
      }
      if (body.reset) sink.reset();
      for (const event of body.events) sink.event(event);
      if (body.cursor) sink.cursor(body.cursor);
    }
  })();
  return link;
}

// --- small helpers --------------------------------------------------------------------------

/** The last `capacity` ids, for dropping duplicates in O(1). */
class RecentIds {
  private readonly ids = new Set<string>();
  constructor(private readonly capacity: number) {}
  has(id: string): boolean {
    return this.ids.has(id);
  }
  add(id: string): void {
    this.ids.add(id);
    if (this.ids.size > this.capacity) this.ids.delete(this.ids.values().next().value as string);
  }
  clear(): void {
    this.ids.clear();
  }
}

function checkTransports(list: TransportName[]): TransportName[] {
  const known = list.filter((t) => TRANSPORTS.includes(t));
  if (!known.length) throw new Error(`transports must name some of ${TRANSPORTS.join(", ")}`);
  return known;
}

function sameSet(set: Set<string>, list: string[]): boolean {
  return set.size === list.length && list.every((x) => set.has(x));
}

/** A handler that throws must not stop delivery to the others: report it the browser's way. */
function safely<T>(fn: (value: T) => void, value: T): void {
  try {
    fn(value);
  } catch (error) {
    const report = (globalThis as any).reportError;
    if (typeof report === "function") report(error);
    else setTimeout(() => { throw error; });
  }
}

function defaultEnv(): Env {
  const g = globalThis as any;
  return {
    WebSocket: g.WebSocket,
    fetch: (url, init) => g.fetch(url, init),
    setTimeout: (fn, ms) => g.setTimeout(fn, ms),
    clearTimeout: (handle) => g.clearTimeout(handle),
    now: () => Date.now(),
    random: Math.random,
    online: () => g.navigator?.onLine !== false,
    watchConnectivity(listener) {
      if (typeof g.addEventListener !== "function") return () => {};
      const online = () => listener(true);
      const offline = () => listener(false);
      g.addEventListener("online", online);
      g.addEventListener("offline", offline);
      return () => {
        g.removeEventListener("online", online);
        g.removeEventListener("offline", offline);
      };
    },
  };
}

export * from "./stores.js";

/**
 * The client: the connection state machine (connecting, open, waiting, offline, closed), which
 * transport to try next and which to avoid, reconnects paced by `backoffDelay`, token refreshes,
 * the cursor every connection resumes from, and the channels the app subscribed. The transports,
 * parsing, de-duplication and token decoding it delegates live in their own modules.
 */

import { DEFAULT_BACKOFF, reconnectDelay } from "./backoff.js";
import { DeliveredIds } from "./dedupe.js";
import { defaultEnv } from "./env.js";
import { decodeToken, refreshDelay } from "./tokens.js";
import type { Closed, Link, LinkContext, Sink } from "./transports/link.js";
import { openPoll } from "./transports/poll.js";
import { openSse } from "./transports/sse.js";
import { openWebSocket } from "./transports/ws.js";
import {
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
} from "./types.js";
import { safely, sameSet } from "./util.js";

export function connect(options: ConnectOptions): RealtimeClient {
  const client = new RealtimeClient(options);
  client.start();
  return client;
}

type Handler = (event: RealtimeEvent) => void;
type Outcome = "open" | "unavailable" | "refused";
/** How an attempt ended; `retryAfterMs`: the server's "not before" for the next one. */
interface Attempt {
  outcome: Outcome;
  retryAfterMs?: number;
}

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
  private readonly delivered = new DeliveredIds();
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
    // 204 (DELETE) and other empty answers have no body to parse
    const text = response.status === 204 ? "" : await response.text();
    return (text ? JSON.parse(text) : undefined) as T;
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
        const { outcome, retryAfterMs } = await this.attemptTransport(name, generation);
        if (generation !== this.generation) return;
        if (outcome === "open") {
          for (const f of failed) this.blockedUntil.set(f, this.env.now() + (this.opts.blockedForMs ?? 300_000));
          return;
        }
        // refused (a bad token, a refused channel) or overloaded (503, 1013): the transport works;
        // falling back would not help (and would block it for blockedForMs), so try it again
        if (outcome === "refused") return this.retryLater(retryAfterMs);
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

  private attemptTransport(name: TransportName, generation: number): Promise<Attempt> {
    return new Promise((resolve) => {
      let opened = false;
      let settled = false;
      const settle = (outcome: Outcome, retryAfterMs?: number) => {
        if (settled) return;
        settled = true;
        this.env.clearTimeout(timer);
        resolve(retryAfterMs === undefined ? { outcome } : { outcome, retryAfterMs });
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
          if (!opened) return settle(why.refused ? "refused" : "unavailable", why.retryAfterMs);
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
    this.retryLater(why.retryAfterMs);
  }

  /** Wait, then dial again: the first attempt spread over `spreadMs`, then full-jitter backoff;
   * never before the server's retry hint (plus jitter). See `reconnectDelay`. */
  private retryLater(retryAfterMs?: number): void {
    this.clearTimers();
    if (!this.env.online()) return this.setState("offline");
    const delay = reconnectDelay(this.attempt++, this.backoff, this.env.random, retryAfterMs ?? null);
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

  /** Back online: reconnect soon, spread over `spreadMs` like the first attempt after any drop
   * (every browser behind a network that came back hears `online` at the same moment). */
  private wentOnline(): void {
    if (this.state === "offline" || this.state === "waiting") {
      this.attempt = 0;
      this.retryLater();
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
    const delay = refreshDelay(remaining);
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
    if (!this.delivered.admit(event)) return; // at-least-once delivery: seen already
    if (!event.snapshot) this.cursor = event.id; // a snapshot never moves the cursor
    this.emit("event", event);
    for (const handler of [...(this.handlers.get(event.channel) ?? [])]) safely(handler, event);
  }

  private resetState(reason: ClientEvents["reset"]["reason"]): void {
    this.delivered.clear();
    this.emit("reset", { reason });
  }

  private serviceError(error: ServiceError): void {
    if (error.code === "bad_cursor") {
      this.cursor = null;
      this.resetState("bad_cursor");
    } else if (error.channel && REFUSED_CHANNEL.has(error.code) && this.handlers.has(error.channel)) {
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

/** Error codes that refuse one channel, not the connection: the channel is dropped and the
 * `error` event names it. `too_many_subscriptions` (MAX_SUBSCRIPTIONS) is one: waiting does not
 * help, asking for fewer channels does. */
const REFUSED_CHANNEL = new Set(["forbidden", "bad_channel", "too_many_subscriptions"]);

function checkTransports(list: TransportName[]): TransportName[] {
  const known = list.filter((t) => TRANSPORTS.includes(t));
  if (!known.length) throw new Error(`transports must name some of ${TRANSPORTS.join(", ")}`);
  return known;
}

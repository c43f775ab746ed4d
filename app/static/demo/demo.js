// Built from clients/js/demo/main.ts and clients/js/src by `make client`; do not edit.
var __defProp = Object.defineProperty;
var __defNormalProp = (obj, key, value) => key in obj ? __defProp(obj, key, { enumerable: true, configurable: true, writable: true, value }) : obj[key] = value;
var __publicField = (obj, key, value) => __defNormalProp(obj, typeof key !== "symbol" ? key + "" : key, value);

// src/backoff.ts
var DEFAULT_BACKOFF = { baseMs: 500, maxMs: 3e4, stableMs: 1e4, spreadMs: 3e3 };
var MAX_RETRY_AFTER_MS = 3e5;
var MIN_RETRY_AFTER_SPREAD_MS = 1e3;
function backoffDelay(attempt2, options, random = Math.random) {
  const ceiling = Math.min(options.maxMs, options.baseMs * 2 ** Math.min(attempt2, 30));
  return Math.floor(random() * ceiling);
}
function reconnectDelay(attempt2, options, random = Math.random, retryAfterMs = null) {
  const drawn = attempt2 <= 0 ? Math.floor(random() * options.spreadMs) : backoffDelay(attempt2, options, random);
  if (retryAfterMs === null) return drawn;
  const hint = Math.min(MAX_RETRY_AFTER_MS, Math.max(0, retryAfterMs));
  return Math.max(drawn, hint + retryAfterJitter(hint, random));
}
function retryAfterJitter(hintMs, random = Math.random) {
  return Math.floor(random() * Math.max(MIN_RETRY_AFTER_SPREAD_MS, hintMs / 2));
}
var HTTP_DATE = /\b(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)\b/i;
function parseRetryAfter(value, now) {
  const text = value?.trim();
  if (!text) return null;
  if (/^\d+(\.\d+)?$/.test(text)) return Math.min(MAX_RETRY_AFTER_MS, Number(text) * 1e3);
  if (!HTTP_DATE.test(text)) return null;
  const at = Date.parse(text);
  return Number.isNaN(at) ? null : Math.min(MAX_RETRY_AFTER_MS, Math.max(0, at - now));
}

// src/dedupe.ts
var RecentIds = class {
  constructor(capacity) {
    __publicField(this, "capacity", capacity);
    __publicField(this, "ids", /* @__PURE__ */ new Set());
  }
  has(id) {
    return this.ids.has(id);
  }
  add(id) {
    this.ids.add(id);
    if (this.ids.size > this.capacity) this.ids.delete(this.ids.values().next().value);
  }
  clear() {
    this.ids.clear();
  }
};
var DeliveredIds = class {
  constructor() {
    __publicField(this, "seen", new RecentIds(2e3));
    __publicField(this, "snapshotsSeen", new RecentIds(500));
  }
  /** Whether `event` is new, remembering it if so. */
  admit(event) {
    if (this.seen.has(event.id)) return false;
    if (event.snapshot) {
      if (this.snapshotsSeen.has(event.id)) return false;
      this.snapshotsSeen.add(event.id);
    } else {
      this.seen.add(event.id);
    }
    return true;
  }
  /** After a reset: history is refetched, ids seen before it must be delivered again. */
  clear() {
    this.seen.clear();
    this.snapshotsSeen.clear();
  }
};

// src/env.ts
function defaultEnv() {
  const g = globalThis;
  return {
    WebSocket: g.WebSocket,
    fetch: (url, init) => g.fetch(url, init),
    setTimeout: (fn, ms) => g.setTimeout(fn, ms),
    clearTimeout: (handle) => g.clearTimeout(handle),
    now: () => Date.now(),
    random: Math.random,
    online: () => g.navigator?.onLine !== false,
    watchConnectivity(listener) {
      if (typeof g.addEventListener !== "function") return () => {
      };
      const online = () => listener(true);
      const offline = () => listener(false);
      g.addEventListener("online", online);
      g.addEventListener("offline", offline);
      return () => {
        g.removeEventListener("online", online);
        g.removeEventListener("offline", offline);
      };
    }
  };
}

// src/tokens.ts
function decodeToken(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part + "=".repeat((4 - part.length % 4) % 4)), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return {};
  }
}
function refreshDelay(remaining) {
  return Math.max(1e3, remaining - Math.min(6e4, remaining * 0.2));
}

// src/transports/link.ts
function query(params2) {
  const parts = Object.entries(params2).filter(([, value]) => value !== null && value !== void 0 && value !== "").map(([key, value]) => `${key}=${encodeURIComponent(String(value)).replace(/%2C/gi, ",")}`);
  return parts.length ? `?${parts.join("&")}` : "";
}
async function refusal(response, now) {
  let body = null;
  if ((response.headers.get("content-type") ?? "").includes("json")) body = await response.json().catch(() => null);
  const code = typeof body?.code === "string" ? body.code : null;
  const status = response.status;
  if (status === 401) {
    return { reason: "unauthorized", refused: true, error: { code: code ?? "unauthorized", message: body?.message ?? "unauthorized", status: 401 } };
  }
  if ((status === 400 || status === 403) && code || status === 422 && code === "too_many_subscriptions") {
    return { reason: code, refused: true, error: { ...body, status } };
  }
  if (status === 503 || status === 429) {
    const header = parseRetryAfter(response.headers.get("retry-after"), now);
    const exact = typeof body?.retry_after === "number" && body.retry_after >= 0 ? body.retry_after * 1e3 : null;
    const retryAfterMs = header ?? exact;
    return {
      reason: code ?? `HTTP ${status}`,
      refused: true,
      ...retryAfterMs !== null ? { retryAfterMs } : {},
      ...code ? { error: { ...body, status } } : {}
    };
  }
  return { reason: `HTTP ${status}` };
}

// src/transports/poll.ts
function openPoll(ctx, sink) {
  let finished = false;
  let request = null;
  let resyncing = false;
  const link = {
    channels: new Set(ctx.channels),
    close() {
      finished = true;
      request?.abort();
    },
    resync() {
      resyncing = true;
      request?.abort();
    }
  };
  const finish = (why) => {
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
      const wait = opened ? ctx.options.pollTimeout : 0;
      const guard = ctx.env.setTimeout(() => request?.abort(), (wait + 15) * 1e3);
      let body;
      try {
        const url = `${ctx.base}/v1/poll` + query({ channels: channels.join(","), since: ctx.cursor(), timeout: wait, client_id: ctx.clientId });
        const response = await ctx.env.fetch(url, {
          headers: { Authorization: `Bearer ${ctx.token()}` },
          cache: "no-store",
          signal: request.signal
        });
        if (!response.ok) return finish(await refusal(response, ctx.env.now()));
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

// src/sse-parser.ts
var SseParser = class {
  constructor(dispatch) {
    __publicField(this, "dispatch", dispatch);
    __publicField(this, "pending", "");
    __publicField(this, "type", "");
    __publicField(this, "data", []);
  }
  push(chunk) {
    let text = this.pending + chunk;
    const heldCR = text.endsWith("\r");
    if (heldCR) text = text.slice(0, -1);
    const lines = text.split(/\r\n|\r|\n/);
    this.pending = lines.pop() + (heldCR ? "\r" : "");
    for (const line of lines) this.line(line);
  }
  line(line) {
    if (line === "") {
      if (this.data.length) this.dispatch(this.type || "message", this.data.join("\n"));
      this.type = "";
      this.data = [];
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.type = value;
    else if (field === "data") this.data.push(value);
  }
};

// src/transports/sse.ts
function openSse(ctx, sink) {
  const abort = new AbortController();
  let finished = false;
  let watchdog;
  const finish = (why) => {
    ctx.env.clearTimeout(watchdog);
    if (finished) return;
    finished = true;
    sink.closed(why);
  };
  const link = {
    channels: new Set(ctx.channels),
    close() {
      finished = true;
      ctx.env.clearTimeout(watchdog);
      abort.abort();
    }
  };
  const alive = () => {
    ctx.env.clearTimeout(watchdog);
    watchdog = ctx.env.setTimeout(() => {
      abort.abort();
      finish({ reason: "stream went silent" });
    }, ctx.options.idleTimeoutMs);
  };
  const dispatch = (type, data) => {
    if (type === "reset") return sink.reset();
    let payload;
    try {
      payload = JSON.parse(data);
    } catch {
      return;
    }
    if (type === "error") sink.error({ code: payload.code, message: payload.message });
    else sink.event(payload);
  };
  void (async () => {
    let response;
    try {
      const url = `${ctx.base}/v1/sse` + query({ channels: ctx.channels.join(","), since: ctx.since, client_id: ctx.clientId });
      response = await ctx.env.fetch(url, {
        headers: { Accept: "text/event-stream", Authorization: `Bearer ${ctx.token()}` },
        cache: "no-store",
        signal: abort.signal
      });
    } catch {
      return finish({ reason: "network" });
    }
    if (!response.ok || !(response.headers.get("content-type") ?? "").startsWith("text/event-stream") || !response.body) {
      return finish(response.ok ? { reason: "not an event stream" } : await refusal(response, ctx.env.now()));
    }
    if (finished) return;
    alive();
    sink.open();
    const parser = new SseParser(dispatch);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    try {
      for (; ; ) {
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

// src/transports/ws.ts
function openWebSocket(ctx, sink) {
  let socket = null;
  let finished = false;
  let lastError = null;
  let heard = ctx.env.now();
  let pinger;
  const finish = (why) => {
    if (finished) return;
    finished = true;
    ctx.env.clearTimeout(pinger);
    sink.closed(why);
  };
  const send = (frame) => {
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
  const link = {
    channels: new Set(ctx.channels),
    close() {
      finished = true;
      ctx.env.clearTimeout(pinger);
      socket?.close(1e3);
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
    }
  };
  void (async () => {
    let credential;
    try {
      if (ctx.options.auth === "access_token") {
        credential = { access_token: ctx.token() };
      } else {
        const response = await ctx.env.fetch(`${ctx.base}/v1/tickets`, { method: "POST", headers: { Authorization: `Bearer ${ctx.token()}` } });
        if (!response.ok) return finish(await refusal(response, ctx.env.now()));
        credential = { ticket: (await response.json()).ticket };
      }
    } catch {
      return finish({ reason: "network" });
    }
    if (finished) return;
    const url = ctx.base.replace(/^http/, "ws") + "/v1/ws" + query({ ...credential, channels: ctx.channels.join(","), since: ctx.since, client_id: ctx.clientId });
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
      let frame;
      try {
        frame = JSON.parse(String(message.data));
      } catch {
        return;
      }
      if (typeof frame.op !== "string") return sink.event(frame);
      if (frame.op === "reset") sink.reset();
      else if (frame.op === "error") {
        lastError = frame;
        sink.error({
          code: frame.code,
          message: frame.message,
          ...frame.channel ? { channel: frame.channel } : {},
          ...typeof frame.retry_after === "number" ? { retry_after: frame.retry_after } : {}
        });
      }
    };
    socket.onclose = (event) => {
      const refused = event.code === 4001 || event.code === 4400;
      const hint = event.code === 1013 && typeof lastError?.retry_after === "number" && lastError.retry_after >= 0 ? { retryAfterMs: lastError.retry_after * 1e3 } : {};
      finish({ reason: lastError?.code ?? (event.reason || "closed"), code: event.code, refused, ...hint });
    };
  })();
  return link;
}

// src/types.ts
var TRANSPORTS = ["ws", "sse", "poll"];

// src/util.ts
function sameSet(set, list) {
  return set.size === list.length && list.every((x) => set.has(x));
}
function safely(fn, value) {
  try {
    fn(value);
  } catch (error) {
    const report = globalThis.reportError;
    if (typeof report === "function") report(error);
    else setTimeout(() => {
      throw error;
    });
  }
}

// src/client.ts
function connect(options) {
  const client2 = new RealtimeClient(options);
  client2.start();
  return client2;
}
var RealtimeClient = class {
  constructor(options) {
    __publicField(this, "state", "connecting");
    /** The transport in use (or last used). */
    __publicField(this, "transport", null);
    /** The id of the last event delivered: where the next connection resumes. */
    __publicField(this, "cursor", null);
    /** Milliseconds until the pending reconnect attempt (while `waiting`). */
    __publicField(this, "retryDelay", null);
    /** `sub` and `tid` of the current token. */
    __publicField(this, "user", null);
    __publicField(this, "tenant", null);
    __publicField(this, "opts");
    __publicField(this, "env");
    __publicField(this, "base");
    __publicField(this, "backoff");
    __publicField(this, "transports");
    __publicField(this, "handlers", /* @__PURE__ */ new Map());
    __publicField(this, "listeners", /* @__PURE__ */ new Map());
    __publicField(this, "delivered", new DeliveredIds());
    __publicField(this, "blockedUntil", /* @__PURE__ */ new Map());
    __publicField(this, "token", null);
    __publicField(this, "expiresAt", null);
    __publicField(this, "link", null);
    __publicField(this, "generation", 0);
    __publicField(this, "attempt", 0);
    __publicField(this, "everOpened", false);
    __publicField(this, "timers", {});
    __publicField(this, "resyncQueued", false);
    __publicField(this, "stopWatching", () => {
    });
    this.opts = options;
    this.env = { ...defaultEnv(), ...options.env };
    this.base = (options.url ?? globalThis.location?.origin ?? "").replace(/\/+$/, "");
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.transports = checkTransports(options.transports ?? [...TRANSPORTS]);
    for (const channel of options.channels ?? []) this.handlers.set(channel, /* @__PURE__ */ new Set());
  }
  start() {
    this.stopWatching = this.env.watchConnectivity((online) => online ? this.wentOnline() : this.wentOffline());
    void this.dial();
  }
  // --- the app's side ---------------------------------------------------------------------
  /** Receive the events of `channel`; returns the function that stops it. */
  subscribe(channel, handler) {
    let set = this.handlers.get(channel);
    const added = !set;
    if (!set) this.handlers.set(channel, set = /* @__PURE__ */ new Set());
    set.add(handler);
    if (added) this.channelsChanged([channel]);
    return () => this.unsubscribe(channel, handler);
  }
  /** Stop `handler` (or every handler) of `channel`; the channel is left when none remains. */
  unsubscribe(channel, handler) {
    const set = this.handlers.get(channel);
    if (!set) return;
    if (handler) set.delete(handler);
    if (handler && set.size > 0) return;
    this.handlers.delete(channel);
    this.channelsChanged();
  }
  on(name, listener) {
    let set = this.listeners.get(name);
    if (!set) this.listeners.set(name, set = /* @__PURE__ */ new Set());
    set.add(listener);
    return () => set.delete(listener);
  }
  /** Who is viewing `channel` now (`GET /v1/presence/{channel}`). */
  async presence(channel) {
    const answer = await this.request(`/v1/presence/${encodeURIComponent(channel)}`);
    return answer.users;
  }
  /** An authenticated JSON request to the service (used by the notification helpers). */
  async request(path, init = {}) {
    const send = async (token) => this.env.fetch(this.base + path, {
      method: init.method ?? "GET",
      headers: { Authorization: `Bearer ${token}`, ...init.body !== void 0 ? { "Content-Type": "application/json" } : {} },
      body: init.body !== void 0 ? JSON.stringify(init.body) : void 0
    });
    let response = await send(this.token ?? await this.freshToken());
    if (response.status === 401) response = await send(await this.freshToken());
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw Object.assign(new Error(body.message ?? `HTTP ${response.status}`), { code: body.code ?? "http_error", status: response.status });
    }
    const text = response.status === 204 ? "" : await response.text();
    return text ? JSON.parse(text) : void 0;
  }
  /** Use these transports from now on (in this order); the stream resumes from the cursor. */
  setTransports(transports) {
    this.transports = checkTransports(transports);
    this.blockedUntil.clear();
    this.reconnect();
  }
  /** Drop the current connection and connect again at once (cursor kept). */
  reconnect() {
    if (this.state === "closed") return;
    this.attempt = 0;
    void this.dial();
  }
  close() {
    this.generation++;
    this.link?.close();
    this.link = null;
    this.clearTimers();
    this.stopWatching();
    this.setState("closed");
  }
  // --- connecting -------------------------------------------------------------------------
  async dial() {
    const generation = ++this.generation;
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
        this.emit("error", { code: "token_unavailable", message: String(error?.message ?? error) });
        return this.retryLater();
      }
      const failed = [];
      for (const name of order) {
        if (generation !== this.generation) return;
        const { outcome, retryAfterMs } = await this.attemptTransport(name, generation);
        if (generation !== this.generation) return;
        if (outcome === "open") {
          for (const f of failed) this.blockedUntil.set(f, this.env.now() + (this.opts.blockedForMs ?? 3e5));
          return;
        }
        if (outcome === "refused") return this.retryLater(retryAfterMs);
        failed.push(name);
      }
      this.retryLater();
    } finally {
      previous?.close();
    }
  }
  candidates() {
    const now = this.env.now();
    const usable = this.transports.filter((t) => (this.blockedUntil.get(t) ?? 0) <= now);
    return usable.length ? usable : [...this.transports];
  }
  attemptTransport(name, generation) {
    return new Promise((resolve) => {
      let opened = false;
      let settled = false;
      const settle = (outcome, retryAfterMs) => {
        if (settled) return;
        settled = true;
        this.env.clearTimeout(timer);
        resolve(retryAfterMs === void 0 ? { outcome } : { outcome, retryAfterMs });
      };
      const current = () => generation === this.generation && this.link === link;
      const sink = {
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
        }
      };
      const timer = this.env.setTimeout(() => {
        if (opened) return;
        if (current()) {
          link.close();
          this.link = null;
        }
        settle("unavailable");
      }, this.opts.openTimeoutMs ?? 1e4);
      const context = this.linkContext();
      const link = (name === "ws" ? openWebSocket : name === "sse" ? openSse : openPoll)(context, sink);
      this.link = link;
    });
  }
  linkContext() {
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
        pingIntervalMs: this.opts.pingIntervalMs ?? 2e4,
        idleTimeoutMs: this.opts.idleTimeoutMs ?? 45e3
      },
      cursor: () => this.cursor,
      currentChannels: () => this.requestedChannels()
    };
  }
  opened(name, link) {
    const resumedBlind = this.everOpened && this.cursor === null && !this.opts.clientId;
    this.everOpened = true;
    const switched = this.transport !== name;
    this.transport = name;
    this.setState("open");
    this.timers.stable = this.env.setTimeout(() => this.attempt = 0, this.backoff.stableMs);
    this.scheduleRefresh();
    if (switched) this.emit("transport", name);
    this.emit("open", { transport: name });
    if (resumedBlind) this.resetState("no_cursor");
    const joinedMeanwhile = this.requestedChannels().filter((c) => !link.channels.has(c));
    if (joinedMeanwhile.length) void this.fetchSnapshots(joinedMeanwhile);
    this.syncChannels(link);
  }
  dropped(name, why) {
    this.env.clearTimeout(this.timers.stable);
    this.emit("close", { transport: name, reason: why.reason, code: why.code });
    this.retryLater(why.retryAfterMs);
  }
  /** Wait, then dial again: the first attempt spread over `spreadMs`, then full-jitter backoff;
   * never before the server's retry hint (plus jitter). See `reconnectDelay`. */
  retryLater(retryAfterMs) {
    this.clearTimers();
    if (!this.env.online()) return this.setState("offline");
    const delay = reconnectDelay(this.attempt++, this.backoff, this.env.random, retryAfterMs ?? null);
    this.retryDelay = delay;
    this.setState("waiting");
    this.timers.retry = this.env.setTimeout(() => void this.dial(), delay);
  }
  wentOffline() {
    if (this.state === "waiting" || this.state === "connecting") {
      this.generation++;
      this.link?.close();
      this.link = null;
      this.clearTimers();
      this.setState("offline");
    }
  }
  /** Back online: reconnect soon, spread over `spreadMs` like the first attempt after any drop
   * (every browser behind a network that came back hears `online` at the same moment). */
  wentOnline() {
    if (this.state === "offline" || this.state === "waiting") {
      this.attempt = 0;
      this.retryLater();
    }
  }
  // --- tokens -------------------------------------------------------------------------------
  async freshToken() {
    const token = await this.opts.getToken();
    const claims = decodeToken(token);
    this.token = token;
    this.expiresAt = typeof claims.exp === "number" ? claims.exp * 1e3 : null;
    this.user = typeof claims.sub === "string" ? claims.sub : this.user;
    this.tenant = typeof claims.tid === "string" ? claims.tid : this.tenant;
    return token;
  }
  /** Refresh at 80% of the remaining lifetime, at most one minute before `exp`. */
  scheduleRefresh() {
    this.env.clearTimeout(this.timers.refresh);
    if (this.expiresAt === null) return;
    const remaining = this.expiresAt - this.env.now();
    if (remaining <= 0) return;
    const delay = refreshDelay(remaining);
    const generation = this.generation;
    this.timers.refresh = this.env.setTimeout(async () => {
      if (this.link && !this.link.refresh && !this.link.resync) return void this.dial();
      try {
        const token = await this.freshToken();
        if (generation !== this.generation || !this.link) return;
        this.link.refresh?.(token);
        this.scheduleRefresh();
      } catch (error) {
        this.emit("error", { code: "token_unavailable", message: String(error?.message ?? error) });
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
  async bootstrap(generation) {
    try {
      const channels = this.stateful(this.requestedChannels()).map(encodeURIComponent).join(",");
      const response = await this.env.fetch(`${this.base}/v1/poll?timeout=0${channels ? `&channels=${channels}` : ""}`, {
        headers: { Authorization: `Bearer ${this.token}` },
        cache: "no-store"
      });
      if (!response.ok || generation !== this.generation) return;
      const answer = await response.json();
      if (generation !== this.generation || this.cursor !== null) return;
      for (const event of answer.events) this.deliver(event);
      this.cursor = answer.cursor;
    } catch {
    }
  }
  // --- events -------------------------------------------------------------------------------
  deliver(event) {
    if (!this.delivered.admit(event)) return;
    if (!event.snapshot) this.cursor = event.id;
    this.emit("event", event);
    for (const handler of [...this.handlers.get(event.channel) ?? []]) safely(handler, event);
  }
  resetState(reason) {
    this.delivered.clear();
    this.emit("reset", { reason });
  }
  serviceError(error) {
    if (error.code === "bad_cursor") {
      this.cursor = null;
      this.resetState("bad_cursor");
    } else if (error.channel && REFUSED_CHANNEL.has(error.code) && this.handlers.has(error.channel)) {
      this.handlers.delete(error.channel);
      this.link?.channels.delete(error.channel);
    }
    this.emit("error", error);
  }
  // --- channels -----------------------------------------------------------------------------
  /** Channels to ask for: the subscribed ones except the user's and tenant's, joined anyway. */
  requestedChannels() {
    const own = /* @__PURE__ */ new Set([`user:${this.user}`, `tenant:${this.tenant}`]);
    return [...this.handlers.keys()].filter((c) => !own.has(c)).sort();
  }
  channelsChanged(added = []) {
    if (this.state !== "open" || !this.link) return;
    if (added.length) void this.fetchSnapshots(added);
    if (this.link.subscribe) return this.syncChannels(this.link);
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
  syncChannels(link) {
    const wanted = this.requestedChannels();
    if (link.subscribe && link.unsubscribe) {
      for (const channel of wanted) if (!link.channels.has(channel)) link.subscribe(channel);
      for (const channel of [...link.channels]) if (!wanted.includes(channel)) link.unsubscribe(channel);
    } else if (!sameSet(link.channels, wanted)) {
      this.channelsChanged();
    }
  }
  stateful(channels) {
    const namespaces = this.opts.stateNamespaces ?? ["analysis", "job"];
    return channels.filter((c) => namespaces.includes(c.split(":")[0]));
  }
  async fetchSnapshots(channels) {
    const stateful = this.stateful(channels);
    if (!stateful.length) return;
    try {
      const answer = await this.request(`/v1/poll?timeout=0&channels=${stateful.map(encodeURIComponent).join(",")}`);
      for (const event of answer.events) if (event.snapshot && stateful.includes(event.channel)) this.deliver(event);
    } catch {
    }
  }
  // --- plumbing -----------------------------------------------------------------------------
  emit(name, value) {
    for (const listener of [...this.listeners.get(name) ?? []]) safely(listener, value);
  }
  setState(state) {
    if (state !== "waiting") this.retryDelay = null;
    if (this.state === state) return;
    this.state = state;
    this.emit("state", state);
  }
  clearTimers() {
    for (const handle of Object.values(this.timers)) this.env.clearTimeout(handle);
    this.timers = {};
  }
};
var REFUSED_CHANNEL = /* @__PURE__ */ new Set(["forbidden", "bad_channel", "too_many_subscriptions"]);
function checkTransports(list) {
  const known = list.filter((t) => TRANSPORTS.includes(t));
  if (!known.length) throw new Error(`transports must name some of ${TRANSPORTS.join(", ")}`);
  return known;
}

// src/stores/store.ts
function createStore(initial, start2) {
  let state = initial;
  let stop2 = null;
  const listeners = /* @__PURE__ */ new Set();
  const set = (next) => {
    if (next === state) return;
    state = next;
    for (const listener of [...listeners]) listener();
  };
  return {
    get: () => state,
    subscribe(listener) {
      listeners.add(listener);
      if (listeners.size === 1) stop2 = start2(set, () => state);
      return () => {
        listeners.delete(listener);
        if (listeners.size === 0 && stop2) {
          stop2();
          stop2 = null;
        }
      };
    }
  };
}

// src/stores/channel.ts
function analysisStore(client2, analysisId) {
  return createStore(
    { analysisId, progress: null, data: null },
    (set, get) => client2.subscribe(`analysis:${analysisId}`, (event) => {
      if (event.type !== "analysis.progress" || typeof event.data?.progress !== "number") return;
      const current = get().progress;
      if (current !== null && event.data.progress < current) return;
      set({ analysisId, progress: event.data.progress, data: event.data });
    })
  );
}
function channelStore(client2, channel) {
  return createStore(
    {},
    (set, get) => client2.subscribe(channel, (event) => set({ ...get(), [event.type]: event }))
  );
}

// src/stores/notifications.ts
var BULK_MAX = 100;
var NO_COUNTS = { unread: 0, unseen: 0, total: 0 };
function notificationFilter(filter = {}) {
  return { status: filter.status ?? "all", tags: [...filter.tags ?? []], category: filter.category ?? null };
}
function initialNotificationsState(filter = {}, loading = true) {
  return { items: [], unread: 0, counts: NO_COUNTS, filter: notificationFilter(filter), hasMore: false, loading, error: null };
}
function notificationsStore(client2, options = {}) {
  const limit = Math.min(Math.max(1, options.limit ?? 20), 100);
  let filter = notificationFilter(options);
  let refresh = async () => {
  };
  let refetch = () => {
  };
  const remember = async (next) => void (filter = next);
  let setView2 = remember;
  const store = createStore(initialNotificationsState(filter), (set, get) => {
    let buffered = null;
    let stopped = false;
    let generation = 0;
    let inFlight = null;
    let again = false;
    const fetchOnce = async () => {
      const mine = generation;
      const view2 = filter;
      buffered = [];
      set({ ...get(), filter: view2, loading: true });
      try {
        const [page, counts] = await Promise.all([
          client2.request(listPath(view2, limit)),
          client2.request("/v1/notifications/counts")
        ]);
        if (stopped || mine !== generation) return;
        let next = {
          items: page.items,
          unread: counts.unread,
          counts: { ...NO_COUNTS, ...counts },
          filter: view2,
          hasMore: page.next_cursor != null,
          loading: false,
          error: null
        };
        for (const event of buffered ?? []) next = reduce(next, event, limit).state;
        set(next);
      } catch (error) {
        if (!stopped && mine === generation) set({ ...get(), loading: false, error: String(error?.message ?? error) });
      } finally {
        if (mine === generation) buffered = null;
      }
    };
    const run = () => {
      if (inFlight) {
        again = true;
        return inFlight;
      }
      inFlight = (async () => {
        do {
          again = false;
          await fetchOnce();
        } while (again && !stopped);
        inFlight = null;
      })();
      return inFlight;
    };
    refresh = () => run();
    refetch = () => void run();
    setView2 = (next) => {
      filter = next;
      generation++;
      buffered = null;
      set({ ...get(), items: [], hasMore: false, filter: next });
      if (inFlight) {
        again = true;
        return inFlight;
      }
      return run();
    };
    const off = [
      client2.on("event", (event) => {
        if (!event.type.startsWith("notification.") || !event.channel.startsWith("user:")) return;
        if (buffered) buffered.push(event);
        const { state, refetch: again2 } = reduce(get(), event, limit);
        set(state);
        if (again2) refetch();
      }),
      client2.on("reset", () => refetch())
    ];
    void run();
    return () => {
      stopped = true;
      generation++;
      setView2 = remember;
      off.forEach((f) => f());
    };
  });
  const path = (id, tail = "") => `/v1/notifications/${encodeURIComponent(id)}${tail}`;
  const post = (url, body) => client2.request(url, { method: "POST", body });
  const remove = async (id) => void await client2.request(path(id), { method: "DELETE" });
  return {
    ...store,
    refresh: () => refresh(),
    setFilter: (next) => setView2(notificationFilter(next)),
    markRead: (id) => post(path(id, "/read")),
    markUnread: (id) => post(path(id, "/unread")),
    markAllRead: async () => void await post("/v1/notifications/read-all"),
    markAllSeen: async () => void await post("/v1/notifications/seen-all"),
    archive: (id) => post(path(id, "/archive")),
    unarchive: (id) => post(path(id, "/unarchive")),
    archiveAll: (opts = {}) => post("/v1/notifications/archive-all", opts.status ? { status: opts.status } : void 0),
    remove,
    delete: remove,
    bulk: async (ids, action) => {
      const total = { changed: 0 };
      for (let i = 0; i < ids.length; i += BULK_MAX) {
        const answer = await post("/v1/notifications/bulk", { ids: ids.slice(i, i + BULK_MAX), action });
        total.changed += answer.changed;
        if (answer.counts) total.counts = answer.counts;
      }
      return total;
    },
    snooze: (id, until) => post(path(id, "/snooze"), { until: typeof until === "string" ? until : until.toISOString() }),
    unsnooze: (id) => post(path(id, "/unsnooze")),
    act: (id, actionId) => post(path(id, `/actions/${encodeURIComponent(actionId)}`))
  };
}
function listPath(filter, limit) {
  const query2 = new URLSearchParams({ status: filter.status, limit: String(limit) });
  for (const tag of filter.tags) query2.append("tag", tag);
  if (filter.category) query2.set("category", filter.category);
  return `/v1/notifications?${query2}`;
}
function inNotificationView(n, filter) {
  const snoozed = n.snoozed_until != null;
  if (n.deleted_at) return false;
  if (filter.status === "snoozed") {
    if (!snoozed) return false;
  } else if (snoozed) {
    return false;
  } else if (filter.status === "archived") {
    if (!n.archived_at) return false;
  } else if (n.archived_at || filter.status === "unread" && n.read_at || filter.status === "unseen" && n.seen_at) {
    return false;
  }
  if (filter.category && n.category !== filter.category) return false;
  const tags = n.tags ?? [];
  return filter.tags.every((t) => tags.includes(t));
}
function newer(a, b) {
  const ta = Date.parse(a.created_at), tb = Date.parse(b.created_at);
  return ta !== tb ? ta > tb : a.id > b.id;
}
var ENTERS = {
  read: [],
  seen: [],
  unread: ["unread"],
  archived: ["archived"],
  unarchived: ["all", "unread", "unseen"],
  snoozed: ["snoozed"],
  unsnoozed: ["all", "unread", "unseen"],
  acted: []
};
function patch(n, change, at, data) {
  switch (change) {
    case "read":
      return n.read_at ? n : { ...n, read_at: at, seen_at: n.seen_at ?? at };
    case "unread":
      return n.read_at ? { ...n, read_at: null } : n;
    case "seen":
      return n.seen_at ? n : { ...n, seen_at: at };
    case "archived":
      return n.archived_at ? n : { ...n, archived_at: at };
    case "unarchived":
      return n.archived_at ? { ...n, archived_at: null } : n;
    case "snoozed":
      return { ...n, snoozed_until: data.until ?? data.snoozed_until ?? n.snoozed_until ?? at };
    case "acted":
      return typeof data.action_id === "string" ? { ...n, action_taken: data.action_id, acted_at: at, read_at: n.read_at ?? at, seen_at: n.seen_at ?? at } : null;
    default:
      return null;
  }
}
function reduce(state, event, limit) {
  const data = event.data ?? {};
  const filter = state.filter ?? notificationFilter();
  const at = data.at ?? event.ts;
  let items = state.items;
  let hasMore = state.hasMore ?? false;
  let refetch = false;
  const before = items.length;
  const upsert = (n) => {
    const rest = items.filter((x) => x.id !== n.id);
    const had = rest.length !== items.length;
    if (!inNotificationView(n, filter)) {
      items = rest;
      return;
    }
    let index = rest.findIndex((x) => newer(n, x));
    if (index === -1) {
      if (!had && (hasMore || rest.length >= limit)) {
        hasMore = true;
        return;
      }
      index = rest.length;
    }
    items = [...rest.slice(0, index), n, ...rest.slice(index)];
    if (items.length > limit) {
      items = items.slice(0, limit);
      hasMore = true;
    }
  };
  const ids = Array.isArray(data.ids) ? data.ids : data.id != null ? [data.id] : [];
  const change = data.change ?? "";
  if (event.type === "notification.deleted") {
    const gone = new Set(ids);
    items = items.filter((n) => !gone.has(n.id));
  } else if (event.type === "notification.unsnoozed") {
    if (data.notification) upsert({ ...data.notification, snoozed_until: null });
    else refetch = true;
  } else if (data.notification) {
    upsert(data.notification);
  } else if (data.all) {
    if ((change === "read" || change === "seen") && filter.status !== "snoozed") {
      for (const n of items) {
        const next2 = patch(n, change, at, data);
        if (next2 && next2 !== n) upsert(next2);
      }
    } else {
      refetch = true;
    }
  } else if (ids.length) {
    const held = new Map(items.map((n) => [n.id, n]));
    for (const id of ids) {
      const n = held.get(id);
      if (!n) {
        if (!ENTERS[change] || ENTERS[change].includes(filter.status)) refetch = true;
        continue;
      }
      const next2 = patch(n, change, at, data);
      if (next2 === null) refetch = true;
      else if (next2 !== n) upsert(next2);
    }
  }
  if (items.length < before && hasMore && items.length < limit) refetch = true;
  const counts = eventCounts(data, state.counts ?? { ...NO_COUNTS, unread: state.unread });
  const next = { ...state, items, hasMore, counts, unread: counts.unread };
  const same = items === state.items && hasMore === state.hasMore && counts.unread === state.unread && state.counts && counts.unseen === state.counts.unseen && counts.total === state.counts.total;
  return { state: same ? state : next, refetch };
}
function eventCounts(data, current) {
  const c = data.counts;
  if (c && typeof c === "object") {
    return {
      unread: typeof c.unread === "number" ? c.unread : current.unread,
      unseen: typeof c.unseen === "number" ? c.unseen : current.unseen,
      total: typeof c.total === "number" ? c.total : current.total
    };
  }
  return {
    unread: typeof data.unread_count === "number" ? data.unread_count : current.unread,
    unseen: typeof data.unseen_count === "number" ? data.unseen_count : current.unseen,
    total: current.total
  };
}

// src/stores/presence.ts
function presenceStore(client2, channel) {
  return createStore([], (set, get) => {
    let stopped = false;
    const load = () => client2.presence(channel).then(
      (users) => {
        if (stopped) return;
        const me = client2.user;
        set(!me || users.some((u) => u.user_id === me) ? users : [...users, { user_id: me, connections: 1, since: (/* @__PURE__ */ new Date()).toISOString() }]);
      },
      () => {
      }
      // the next open tries again
    );
    const off = [
      client2.subscribe(channel, (event) => {
        const user = event.data?.user_id;
        if (event.type === "presence.join" && !get().some((u) => u.user_id === user)) {
          set([...get(), { user_id: user, connections: 1, since: event.ts }]);
        } else if (event.type === "presence.leave") {
          set(get().filter((u) => u.user_id !== user));
        }
      }),
      client2.on("open", load),
      client2.on("reset", load)
    ];
    if (client2.state === "open") load();
    return () => {
      stopped = true;
      off.forEach((f) => f());
    };
  });
}

// demo/main.ts
var REPOSITORY = "repository:demo";
var CURRENT_RUN = "analysis:demo";
var LOG_LIMIT = 1e3;
var TRANSPORT_NAMES = { ws: "WebSocket", sse: "Server-Sent Events", poll: "long-polling" };
var $ = (id) => document.getElementById(id);
var params = new URLSearchParams(location.search);
var client = null;
var inbox = null;
var stops = [];
var runStops = [];
var currentRun = null;
var view = { status: "all", tag: null };
var selected = /* @__PURE__ */ new Set();
async function demoToken(user) {
  const response = await fetch("/demo/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user, ...params.get("ttl") ? { ttl: Number(params.get("ttl")) } : {} })
  });
  if (response.status === 404 || response.status === 405) throw Object.assign(new Error("development tokens are off"), { off: true });
  if (!response.ok) throw new Error(`/demo/token answered ${response.status}`);
  return (await response.json()).token;
}
async function signIn(user) {
  try {
    await demoToken(user);
  } catch (error) {
    if (error.off) return devTokensOff();
    throw error;
  }
  sessionStorage.setItem("rt.demo.user", user);
  start(user, () => demoToken(user), true);
}
function devTokensOff() {
  $("signin").hidden = true;
  $("paste").hidden = false;
  $("samples").hidden = true;
  meta("Development tokens are off on this server (DEMO_TOKENS): paste a token minted for you.", "reset");
}
function start(label, getToken, samples) {
  stop();
  const rt = connect({ getToken, transports: chosenTransports(), channels: [REPOSITORY, CURRENT_RUN] });
  client = rt;
  inbox = notificationsStore(rt, { status: view.status, tags: view.tag ? [view.tag] : [] });
  window.demo = { client: rt, inbox };
  $("signin").hidden = true;
  $("paste").hidden = true;
  $("whoami").hidden = false;
  $("samples").hidden = !samples;
  $("whoami-name").textContent = label;
  stops.push(
    rt.on("state", () => renderStatus()),
    rt.on("transport", (name) => meta(`transport: ${TRANSPORT_NAMES[name]}`)),
    rt.on("open", ({ transport }) => {
      if (rt.user) $("whoami-name").textContent = `${rt.user} \xB7 tenant ${rt.tenant}`;
      meta(`connected via ${TRANSPORT_NAMES[transport]}${rt.cursor ? ` from ${rt.cursor}` : ""}`);
    }),
    rt.on("close", ({ reason, code }) => meta(`connection lost (${reason}${code ? ` ${code}` : ""}); reconnecting`)),
    rt.on("reset", ({ reason }) => meta(`history may be lost (${reason}): state refetched`, "reset")),
    rt.on("error", (error) => meta(`error ${error.code}: ${error.message}`, "reset")),
    rt.on("event", (event) => {
      logEvent(event);
      if (event.type === "notification.created" && !event.snapshot) {
        toast(event.data.notification.title, event.data.notification.message);
      } else if (event.type === "notification.unsnoozed" && event.data.notification && !event.snapshot) {
        toast(`Back: ${event.data.notification.title}`, "snoozed until now", "back");
      } else if (event.type === "system.alert" && !event.snapshot) {
        toast(`Alert (${event.data.severity})`, event.data.message, "alert");
      }
    }),
    rt.subscribe(CURRENT_RUN, (event) => {
      if (event.type === "demo.run") showRun(String(event.data.analysisId));
    }),
    watch(inbox, (state) => renderNotifications(state)),
    watch(presenceStore(rt, REPOSITORY), (users) => renderViewers(users.map((u) => u.user_id)))
  );
  renderStatus();
}
function stop() {
  runStops.forEach((f) => f());
  stops.forEach((f) => f());
  runStops = [];
  stops = [];
  currentRun = null;
  client?.close();
  client = null;
  inbox = null;
}
function signOut() {
  stop();
  sessionStorage.removeItem("rt.demo.user");
  $("signin").hidden = false;
  $("whoami").hidden = true;
  renderNotifications(null);
  renderViewers([]);
  renderStatus();
}
function watch(store, render) {
  const off = store.subscribe(() => render(store.get()));
  render(store.get());
  return off;
}
function showRun(run) {
  if (!client || run === currentRun) return;
  runStops.forEach((f) => f());
  currentRun = run;
  $("analysis-name").textContent = `Analysis ${run}`;
  runStops = [
    watch(analysisStore(client, run), ({ progress }) => {
      const bar = $("progress");
      bar.style.width = `${progress ?? 0}%`;
      bar.dataset.progress = progress === null ? "" : String(progress);
      $("progress-label").textContent = progress === null ? "\u2013" : `${progress}%`;
    }),
    watch(channelStore(client, `job:${run}`), (latest) => {
      const event = latest["refactoring.status"];
      const status = event?.data.status ?? "";
      const order = ["queued", "running", "completed"];
      $("job-status").dataset.status = status;
      for (const step of $("job-status").querySelectorAll("li")) {
        const index = order.indexOf(step.dataset.step);
        step.className = step.dataset.step === status ? "current" : index < order.indexOf(status) ? "done" : "";
      }
      $("job-detail").textContent = event ? `job:${run} \xB7 ${status}${event.data.changedFiles ? ` \xB7 ${event.data.changedFiles} files changed` : ""}` : "\u2013";
    })
  ];
}
var SHORT_SNOOZE = Math.max(1, Number(params.get("snooze")) || 10);
var SNOOZES = [[`${SHORT_SNOOZE} s`, SHORT_SNOOZE * 1e3], ["1 h", 36e5]];
var EMPTY = {
  all: "Nothing yet.",
  unread: "Nothing unread.",
  unseen: "Nothing new.",
  archived: "The archive is empty.",
  snoozed: "Nothing snoozed."
};
function attempt(what, call) {
  if (!inbox) return;
  call(inbox).catch((error) => meta(`${what} failed: ${error.status ?? ""} ${error.message}`.replace("  ", " "), "reset"));
}
function setView(next) {
  view = { ...view, ...next };
  selected.clear();
  void inbox?.setFilter({ status: view.status, tags: view.tag ? [view.tag] : [] });
  if (!inbox) renderNotifications(null);
}
function button(text, className, onClick, data = {}) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = text;
  Object.assign(b.dataset, data);
  b.addEventListener("click", (e) => {
    e.stopPropagation();
    onClick();
  });
  return b;
}
function renderNotifications(state) {
  const unread = state?.unread ?? 0;
  const items = state?.items ?? [];
  const badge = $("badge");
  badge.textContent = String(unread);
  badge.hidden = unread === 0;
  for (const tab of document.querySelectorAll("#views button")) tab.classList.toggle("on", tab.dataset.status === view.status);
  $("tag-filter").hidden = !view.tag;
  $("tag-filter-name").textContent = view.tag ?? "";
  for (const id of [...selected]) if (!items.some((n) => n.id === id)) selected.delete(id);
  const list = $("notification-list");
  list.replaceChildren(...items.map(renderItem));
  $("notification-empty").hidden = items.length > 0;
  $("notification-empty").textContent = state?.loading && !items.length ? "Loading\u2026" : EMPTY[view.status];
  renderBulk();
}
function renderItem(n) {
  const li = document.createElement("li");
  li.dataset.id = n.id;
  li.className = n.read_at ? "" : "unread";
  if (n.action_taken) li.dataset.actionTaken = n.action_taken;
  const pick = document.createElement("input");
  pick.type = "checkbox";
  pick.className = "pick";
  pick.checked = selected.has(n.id);
  pick.setAttribute("aria-label", `select ${n.title}`);
  pick.addEventListener("click", (e) => e.stopPropagation());
  pick.addEventListener("change", () => {
    if (pick.checked) selected.add(n.id);
    else selected.delete(n.id);
    renderBulk();
  });
  const title = document.createElement("strong");
  title.textContent = n.title;
  const body = document.createElement("small");
  const when = n.snoozed_until ? ` \xB7 snoozed until ${new Date(n.snoozed_until).toLocaleTimeString()}` : "";
  body.textContent = `${n.message} \xB7 ${new Date(n.created_at).toLocaleTimeString()}${when}`;
  const main = document.createElement("div");
  main.className = "main";
  main.append(title, body);
  if (n.tags?.length) {
    const tags = document.createElement("div");
    tags.className = "tags";
    tags.append(...n.tags.map((tag) => button(`#${tag}`, `tag${tag === view.tag ? " on" : ""}`, () => setView({ tag: tag === view.tag ? null : tag }), { tag })));
    main.append(tags);
  }
  if (n.actions?.length) {
    const actions = document.createElement("div");
    actions.className = "actions";
    if (n.action_taken) {
      const taken = n.actions.find((a) => a.id === n.action_taken);
      const done = document.createElement("span");
      done.className = "taken";
      done.dataset.action = n.action_taken;
      done.textContent = `\u2713 ${taken?.label ?? n.action_taken}`;
      actions.append(done);
    } else {
      actions.append(...n.actions.map((a, i) => button(a.label, `action ${i === 0 ? "primary" : "secondary"}`, () => attempt(a.label, async (store) => {
        await store.act(n.id, a.id);
        if (a.url) window.open(a.url, "_blank", "noopener");
      }), { action: a.id })));
    }
    main.append(actions);
  }
  const tools = document.createElement("div");
  tools.className = "tools";
  if (n.snoozed_until) {
    tools.append(button("Wake now", "link", () => attempt("unsnooze", (s) => s.unsnooze(n.id)), { do: "unsnooze" }));
  } else if (!n.archived_at) {
    const label = document.createElement("span");
    label.className = "muted";
    label.textContent = "Snooze";
    tools.append(label, ...SNOOZES.map(([text, ms]) => button(text, "link", () => attempt("snooze", (s) => s.snooze(n.id, new Date(Date.now() + ms))), { do: "snooze", ms: String(ms) })));
  }
  tools.append(
    n.archived_at ? button("Unarchive", "link", () => attempt("unarchive", (s) => s.unarchive(n.id)), { do: "unarchive" }) : button("Archive", "link", () => attempt("archive", (s) => s.archive(n.id)), { do: "archive" }),
    button("Delete", "link danger", () => attempt("delete", (s) => s.remove(n.id)), { do: "delete" })
  );
  main.append(tools);
  li.append(pick, main);
  li.addEventListener("click", () => void (n.read_at || attempt("read", (s) => s.markRead(n.id))));
  return li;
}
function renderBulk() {
  const bar = $("bulk");
  bar.hidden = selected.size === 0;
  $("bulk-count").textContent = `${selected.size} selected`;
  const archived = view.status === "archived";
  for (const b of bar.querySelectorAll("button[data-bulk]")) {
    b.hidden = b.dataset.bulk === "archive" && archived || b.dataset.bulk === "unarchive" && !archived;
  }
}
function bulk(action) {
  const ids = [...selected];
  selected.clear();
  renderBulk();
  attempt(`bulk ${action}`, (s) => s.bulk(ids, action));
}
function renderViewers(users) {
  $("viewers").replaceChildren(
    ...users.map((user) => {
      const li = document.createElement("li");
      li.dataset.user = user;
      const avatar = document.createElement("span");
      avatar.className = "avatar";
      avatar.style.background = `hsl(${[...user].reduce((h, c) => (h * 31 + c.charCodeAt(0)) % 360, 7)} 55% 50%)`;
      avatar.textContent = user.slice(0, 1).toUpperCase();
      li.append(avatar, user);
      return li;
    })
  );
}
function renderStatus() {
  const status = $("status");
  const state = client?.state ?? "idle";
  const transport = client?.transport ?? "";
  status.dataset.state = state;
  status.dataset.transport = state === "open" ? transport : "";
  const retry = client?.retryDelay != null ? ` \xB7 retry in ${(client.retryDelay / 1e3).toFixed(1)} s` : "";
  status.textContent = !client ? "signed out" : state === "open" ? `open \xB7 ${TRANSPORT_NAMES[transport]}` : `${state}${retry}`;
}
function logEvent(event) {
  const li = document.createElement("li");
  li.className = "event";
  li.dataset.id = event.id;
  li.dataset.channel = event.channel;
  li.dataset.type = event.type;
  if (event.snapshot) li.dataset.snapshot = "true";
  const cells = [
    new Date(event.ts).toLocaleTimeString(void 0, { hour12: false }),
    event.channel,
    event.type,
    event.snapshot ? `${event.id} snapshot` : event.id,
    JSON.stringify(event.data)
  ];
  li.append(...cells.map((text, i) => {
    const span = document.createElement("span");
    span.textContent = text;
    if (i === 3 && event.snapshot) span.className = "snap";
    return span;
  }));
  append(li);
}
function meta(text, kind = "") {
  const li = document.createElement("li");
  li.className = `meta ${kind}`.trim();
  li.textContent = `${(/* @__PURE__ */ new Date()).toLocaleTimeString(void 0, { hour12: false })}  ${text}`;
  append(li);
}
function append(li) {
  const log = $("log");
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
  log.append(li);
  while (log.children.length > LOG_LIMIT) log.firstElementChild.remove();
  if (atBottom) log.scrollTop = log.scrollHeight;
}
function toast(title, body, kind = "") {
  const div = document.createElement("div");
  div.className = `toast ${kind}`.trim();
  const strong = document.createElement("strong");
  strong.textContent = title;
  const small = document.createElement("small");
  small.textContent = body;
  div.append(strong, small);
  $("toasts").append(div);
  setTimeout(() => div.remove(), 6e3);
}
function chosenTransports() {
  const value = $("transport-picker").value;
  return value === "auto" ? ["ws", "sse", "poll"] : [value];
}
async function publishSample(kind) {
  if (!client?.user) return;
  const response = await fetch("/demo/publish", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ kind, user: client.user })
  });
  if (!response.ok) meta(`publishing failed: ${response.status} ${await response.text()}`, "reset");
}
function wire() {
  const picker = $("transport-picker");
  picker.value = ["ws", "sse", "poll"].includes(params.get("transport") ?? "") ? params.get("transport") : "auto";
  picker.addEventListener("change", () => {
    const url = new URL(location.href);
    if (picker.value === "auto") url.searchParams.delete("transport");
    else url.searchParams.set("transport", picker.value);
    history.replaceState(null, "", url);
    client?.setTransports(chosenTransports());
  });
  $("signin").addEventListener("submit", (e) => {
    e.preventDefault();
    void signIn($("signin-user").value);
  });
  $("paste").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("paste-token").value.trim();
    if (token) start("pasted token", () => token, false);
  });
  $("signout").addEventListener("click", signOut);
  $("bell").addEventListener("click", () => {
    const panel = $("notifications");
    panel.hidden = !panel.hidden;
    $("bell").setAttribute("aria-expanded", String(!panel.hidden));
  });
  $("read-all").addEventListener("click", () => attempt("read all", (s) => s.markAllRead()));
  $("archive-read").addEventListener("click", () => attempt("archive read", (s) => s.archiveAll({ status: "read" })));
  for (const tab of document.querySelectorAll("#views button")) {
    tab.addEventListener("click", () => setView({ status: tab.dataset.status }));
  }
  $("tag-filter").addEventListener("click", () => setView({ tag: null }));
  for (const b of document.querySelectorAll("#bulk button[data-bulk]")) {
    b.addEventListener("click", () => bulk(b.dataset.bulk));
  }
  $("bulk-none").addEventListener("click", () => {
    selected.clear();
    if (inbox) renderNotifications(inbox.get());
  });
  $("run-sample").addEventListener("click", () => void publishSample("run"));
  $("send-notification").addEventListener("click", () => void publishSample("notification"));
  $("send-alert").addEventListener("click", () => void publishSample("alert"));
  setInterval(() => client?.state === "waiting" && renderStatus(), 500);
  const user = params.get("user") ?? sessionStorage.getItem("rt.demo.user");
  if (user) {
    $("signin-user").value = user;
    void signIn(user);
  }
}
wire();

/** Fakes for the client's surroundings: a clock, WebSockets and the service's HTTP routes. */

import type { Env, RealtimeEvent, WebSocketLike } from "../src/index.js";

/** Let promise chains (fetch, Response.json, stream reads) run to completion. */
export async function flush(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
}

export class FakeClock {
  t = 1_800_000_000_000;
  private timers = new Map<number, { at: number; fn: () => void }>();
  private next = 1;

  setTimeout = (fn: () => void, ms: number): unknown => {
    const id = this.next++;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return id;
  };

  clearTimeout = (id: unknown): void => {
    this.timers.delete(id as number);
  };

  now = (): number => this.t;

  /** Move time forward, firing due timers in order and letting promises settle in between. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      await flush();
      let due: [number, { at: number; fn: () => void }] | undefined;
      for (const entry of this.timers) if (entry[1].at <= end && (!due || entry[1].at < due[1].at)) due = entry;
      if (!due) break;
      this.timers.delete(due[0]);
      this.t = due[1].at;
      due[1].fn();
    }
    this.t = end;
    await flush();
  }
}

export class FakeSocket implements WebSocketLike {
  readyState = 0;
  sent: any[] = [];
  closedByClient: number | null = null;
  /** Answer `{"op":"ping"}` like the server does. */
  autoPong = true;
  onopen: ((ev: any) => void) | null = null;
  onmessage: ((ev: { data: any }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: any) => void) | null = null;

  constructor(public url: string) {}

  get query(): URLSearchParams {
    return new URL(this.url).searchParams;
  }

  send(data: string): void {
    const frame = JSON.parse(data);
    this.sent.push(frame);
    if (frame.op === "ping" && this.autoPong) this.push({ op: "pong" });
  }

  close(code = 1000): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.closedByClient = code;
  }

  // the server's side
  accept(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  /** What a browser reports when the handshake is refused or blocked: close 1006, never open. */
  refuse(): void {
    this.readyState = 3;
    this.onerror?.({});
    this.onclose?.({ code: 1006, reason: "" });
  }

  push(frame: object): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  drop(code = 1006, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

export class SseStream {
  private controller!: ReadableStreamDefaultController<Uint8Array>;
  readonly body: ReadableStream<Uint8Array>;
  closed = false;

  constructor(public url: URL) {
    this.body = new ReadableStream({ start: (c) => void (this.controller = c) });
  }

  send(text: string): void {
    this.controller.enqueue(new TextEncoder().encode(text));
  }

  event(event: RealtimeEvent): void {
    this.send(`id: ${event.id}\r\nevent: ${event.type}\r\ndata: ${JSON.stringify(event)}\r\n\r\n`);
  }

  end(): void {
    if (!this.closed) this.controller.close();
    this.closed = true;
  }

  abort(): void {
    if (!this.closed) this.controller.error(new DOMException("aborted", "AbortError"));
    this.closed = true;
  }
}

interface PendingPoll {
  url: URL;
  answer(body: { events: RealtimeEvent[]; cursor: string; reset?: boolean }): void;
}

export interface Seen {
  method: string;
  url: URL;
  headers: Record<string, string>;
  /** The JSON body sent, parsed (undefined without one). */
  body?: any;
}

type Route = (request: Seen) => Response | Promise<Response | undefined> | undefined;

export function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
}

/** The service's HTTP side. By default: tickets are issued, `timeout=0` polls answer at once with
 * `head`, other polls wait for `answerPoll`, SSE requests open a stream the test writes to. */
export class FakeService {
  requests: Seen[] = [];
  sockets: FakeSocket[] = [];
  streams: SseStream[] = [];
  polls: PendingPoll[] = [];
  head = "100-0";
  down = false;
  routes: Route[] = [];
  private tickets = 0;

  fetch = async (url: string, init: RequestInit = {}): Promise<Response> => {
    const request: Seen = {
      method: init.method ?? "GET", url: new URL(url), headers: { ...(init.headers as Record<string, string>) },
      body: typeof init.body === "string" ? parseOr(init.body) : undefined,
    };
    this.requests.push(request);
    if (this.down) throw new TypeError("Failed to fetch");
    for (const route of this.routes) {
      const answer = await route(request);
      if (answer) return answer;
    }
    const path = `${request.method} ${request.url.pathname}`;
    if (path === "POST /v1/tickets") return json({ ticket: `t${++this.tickets}`, expires_in: 30 });
    if (path === "GET /v1/poll" && request.url.searchParams.get("timeout") === "0") {
      return json({ events: [], cursor: request.url.searchParams.get("since") ?? this.head, reset: false });
    }
    if (path === "GET /v1/poll") {
      return new Promise((resolve, reject) => {
        init.signal?.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError")));
        this.polls.push({ url: request.url, answer: (body) => resolve(json({ reset: false, ...body })) });
      });
    }
    if (path === "GET /v1/sse") {
      const stream = new SseStream(request.url);
      init.signal?.addEventListener("abort", () => stream.abort());
      this.streams.push(stream);
      return new Response(stream.body, { headers: { "content-type": "text/event-stream" } });
    }
    return json({ code: "not_found", message: path }, 404);
  };

  WebSocket = ((service: FakeService) =>
    class extends FakeSocket {
      constructor(url: string) {
        super(url);
        service.sockets.push(this);
      }
    })(this);

  get socket(): FakeSocket {
    return this.sockets[this.sockets.length - 1];
  }

  get stream(): SseStream {
    return this.streams[this.streams.length - 1];
  }

  get poll(): PendingPoll {
    return this.polls[this.polls.length - 1];
  }

  /** Requests to a path (e.g. "GET /v1/sse"). */
  to(path: string): Seen[] {
    return this.requests.filter((r) => `${r.method} ${r.url.pathname}` === path);
  }
}

export function fakeToken(claims: Record<string, unknown>): string {
  const part = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}.signature`;
}

export interface Rig {
  clock: FakeClock;
  service: FakeService;
  env: Env;
  online: boolean;
  goOnline(): void;
  goOffline(): void;
}

export function rig(): Rig {
  const clock = new FakeClock();
  const service = new FakeService();
  let listener: (online: boolean) => void = () => {};
  const r: Rig = {
    clock,
    service,
    online: true,
    env: {
      WebSocket: service.WebSocket,
      fetch: service.fetch,
      setTimeout: clock.setTimeout,
      clearTimeout: clock.clearTimeout,
      now: clock.now,
      random: () => 0.5,
      online: () => r.online,
      watchConnectivity: (fn) => {
        listener = fn;
        return () => (listener = () => {});
      },
    },
    goOnline() {
      r.online = true;
      listener(true);
    },
    goOffline() {
      r.online = false;
      listener(false);
    },
  };
  return r;
}

export function ev(id: string, channel = "repository:r1", extra: Partial<RealtimeEvent> = {}): RealtimeEvent {
  return { id, channel, type: "demo.ping", data: { id }, ts: "2026-11-28T06:00:00.000Z", ...extra };
}

function parseOr(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

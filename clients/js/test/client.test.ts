import assert from "node:assert/strict";
import { test } from "node:test";

import { DEFAULT_BACKOFF } from "../src/backoff.js";
import { backoffDelay, connect, decodeToken, parseRetryAfter, reconnectDelay, type ConnectOptions, type RealtimeEvent, SseParser } from "../src/index.js";
import { ev, fakeToken, flush, json, rig, type Rig } from "./fakes.js";

/** When the first reconnect after a drop fires on the rig (its random() is 0.5). */
const FIRST_RETRY = DEFAULT_BACKOFF.spreadMs * 0.5;

/** A client on the rig; its tokens live `ttl` seconds from when they are asked for. */
function start(r: Rig, options: Partial<ConnectOptions> = {}, ttl = 3600) {
  let tokens = 0;
  const client = connect({
    url: "http://rt.test",
    getToken: () => fakeToken({ sub: "u1", tid: "t1", exp: Math.floor(r.clock.now() / 1000) + ttl, n: ++tokens }),
    env: r.env,
    ...options,
  });
  const log: string[] = [];
  const got: RealtimeEvent[] = [];
  for (const name of ["open", "close", "reset", "error", "transport", "state"] as const) {
    client.on(name, (value: any) => log.push(`${name}:${typeof value === "string" ? value : value.transport ?? value.reason ?? value.code ?? ""}`));
  }
  client.on("event", (event) => got.push(event));
  return { client, log, got, tokens: () => tokens };
}

// --- backoff -------------------------------------------------------------------------------

test("backoff: full jitter below base * 2^attempt, capped", () => {
  const options = { baseMs: 500, maxMs: 30_000 };
  assert.equal(backoffDelay(0, options, () => 0), 0);
  assert.equal(backoffDelay(0, options, () => 0.999), 499);
  assert.equal(backoffDelay(3, options, () => 0.999), 3996);
  assert.equal(backoffDelay(6, options, () => 0.999), 29_970); // 32 s, capped at 30 s
  assert.equal(backoffDelay(500, options, () => 0.999), 29_970);
  for (let attempt = 0; attempt < 12; attempt++) {
    const d = backoffDelay(attempt, options);
    assert.ok(d >= 0 && d < Math.min(30_000, 500 * 2 ** attempt), `attempt ${attempt}: ${d}`);
  }
});

test("reconnectDelay: the first attempt spread over spreadMs, then the backoff; a retry hint is a floor, jittered", () => {
  const options = { baseMs: 500, maxMs: 30_000, spreadMs: 3_000 };
  assert.equal(reconnectDelay(0, options, () => 0), 0);
  assert.equal(reconnectDelay(0, options, () => 0.999), 2997, "not the first 0.5 s of backoff: the whole window");
  assert.equal(reconnectDelay(1, options, () => 0.999), 999, "then 0.5 s doubling, as before");
  assert.equal(reconnectDelay(6, options, () => 0.999), 29_970);
  // Retry-After: 5 → 5 s to 7.5 s, never earlier
  assert.equal(reconnectDelay(0, options, () => 0, 5_000), 5_000);
  assert.equal(reconnectDelay(0, options, () => 0.999, 5_000), 7_497);
  // Retry-After: 1 → 1 s to 2 s (a spread of at least 1 s)
  assert.equal(reconnectDelay(1, options, () => 0, 1_000), 1_000);
  assert.equal(reconnectDelay(1, options, () => 0.999, 1_000), 1_999);
  // a long outage answered with Retry-After: 1 still backs off
  assert.equal(reconnectDelay(8, options, () => 0.999, 1_000), 29_970);
  // an absurd hint is capped at 5 min (+ jitter)
  assert.equal(reconnectDelay(0, options, () => 0, 86_400_000), 300_000);
  assert.equal(reconnectDelay(0, options, () => 0, -5), 0);
  for (let i = 0; i < 200; i++) {
    const d = reconnectDelay(0, options, Math.random, 5_000);
    assert.ok(d >= 5_000 && d < 7_500, `${d}`);
  }
});

test("parseRetryAfter: delta-seconds or an HTTP-date, in ms; null when absent or unreadable", () => {
  const now = Date.parse("Wed, 21 Oct 2026 07:28:00 GMT");
  assert.equal(parseRetryAfter("5", now), 5_000);
  assert.equal(parseRetryAfter(" 1.5 ", now), 1_500);
  assert.equal(parseRetryAfter("0", now), 0);
  assert.equal(parseRetryAfter("Wed, 21 Oct 2026 07:28:08 GMT", now), 8_000);
  assert.equal(parseRetryAfter("Wed, 21 Oct 2026 07:27:00 GMT", now), 0, "a date already past: now");
  assert.equal(parseRetryAfter("999999", now), 300_000, "capped");
  for (const junk of [null, undefined, "", "soon", "soon 12", "-3", "5 s"]) assert.equal(parseRetryAfter(junk, now), null, String(junk));
});

test("decodeToken reads the claims of a JWT and tolerates garbage", () => {
  assert.deepEqual(decodeToken(fakeToken({ sub: "ü", exp: 5 })), { sub: "ü", exp: 5 });
  assert.deepEqual(decodeToken("nope"), {});
});

// --- transport choice ---------------------------------------------------------------------

test("WebSocket first, with a one-time ticket, from the head learned first", async () => {
  const r = rig();
  const { client, log } = start(r, { channels: ["repository:r1"] });
  await r.clock.advance(0);
  const [head, ticket] = [r.service.to("GET /v1/poll")[0], r.service.to("POST /v1/tickets")[0]];
  assert.equal(head.url.searchParams.get("timeout"), "0");
  assert.equal(head.url.searchParams.get("channels"), null, "no channel keeps state here; a presence channel is never asked");
  assert.match(ticket.headers.Authorization, /^Bearer /);
  const ws = r.service.socket;
  assert.equal(ws.url.split("?")[0], "ws://rt.test/v1/ws");
  assert.equal(ws.query.get("ticket"), "t1");
  assert.equal(ws.query.get("access_token"), null);
  assert.equal(ws.query.get("channels"), "repository:r1");
  assert.equal(ws.query.get("since"), "100-0", "nothing published after the head can be missed, nor lost on a reconnect");
  ws.accept();
  await flush();
  assert.equal(client.state, "open");
  assert.equal(client.transport, "ws");
  assert.equal(client.cursor, "100-0");
  assert.deepEqual(log, ["state:open", "transport:ws", "open:ws"]);
});

test("without a cursor, the snapshots of channels that keep state come first, with the head", async () => {
  const r = rig();
  r.service.routes.push((req) =>
    req.url.pathname === "/v1/poll" && req.url.searchParams.get("timeout") === "0"
      ? json({ events: [ev("90-0", "analysis:a1", { snapshot: true, type: "analysis.progress" })], cursor: "120-0", reset: false })
      : undefined,
  );
  const { client, got } = start(r, { transports: ["sse"], channels: ["analysis:a1", "repository:r1", "job:j1"] });
  await r.clock.advance(0);
  assert.equal(r.service.to("GET /v1/poll")[0].url.searchParams.get("channels"), "analysis:a1,job:j1");
  assert.deepEqual(got.map((e) => e.id), ["90-0"]);
  assert.equal(r.service.stream.url.searchParams.get("since"), "120-0");
  assert.equal(r.service.stream.url.searchParams.get("channels"), "analysis:a1,job:j1,repository:r1");
  assert.equal(client.cursor, "120-0");
});

test("with a clientId the server keeps the position: no head is asked for, no since is sent", async () => {
  const r = rig();
  start(r, { transports: ["ws"], clientId: "tab-7" });
  await r.clock.advance(0);
  assert.equal(r.service.to("GET /v1/poll").length, 0);
  assert.equal(r.service.socket.query.get("client_id"), "tab-7");
  assert.equal(r.service.socket.query.get("since"), null);
});

test("auth: access_token puts the token in the WebSocket URL instead of a ticket", async () => {
  const r = rig();
  start(r, { auth: "access_token" });
  await r.clock.advance(0);
  assert.equal(r.service.to("POST /v1/tickets").length, 0);
  assert.equal(decodeToken(r.service.socket.query.get("access_token")!).sub, "u1");
});

test("falls back to SSE when the WebSocket cannot open, and skips it on the next reconnect", async () => {
  const r = rig();
  const { client, log } = start(r);
  await r.clock.advance(0);
  r.service.socket.refuse();
  await flush();
  assert.equal(r.service.streams.length, 1);
  const sse = r.service.to("GET /v1/sse")[0];
  assert.match(sse.headers.Authorization, /^Bearer /, "SSE is read with fetch, so it sends the header");
  assert.equal(client.transport, "sse");
  assert.deepEqual(log.filter((l) => !l.startsWith("state")), ["transport:sse", "open:sse"]);

  r.service.stream.end(); // the stream drops
  await r.clock.advance(5_000);
  assert.equal(r.service.sockets.length, 1, "the blocked WebSocket is not tried again");
  assert.equal(r.service.streams.length, 2);
  assert.equal(client.state, "open");
});

test("falls back to long-polling when SSE is blocked too (a proxy's 502 page)", async () => {
  const r = rig();
  r.service.routes.push((req) => (req.url.pathname === "/v1/sse" ? new Response("<h1>Bad Gateway</h1>", { status: 502 }) : undefined));
  const { client } = start(r);
  await r.clock.advance(0);
  r.service.socket.refuse();
  await flush();
  const poll = r.service.to("GET /v1/poll").at(-2)!;
  assert.equal(poll.url.searchParams.get("timeout"), "0", "the first poll answers at once");
  assert.equal(client.transport, "poll");
  assert.equal(client.state, "open");
  assert.equal(r.service.poll.url.searchParams.get("timeout"), "25", "then it waits for events");
});

test("a WebSocket that neither opens nor fails counts as unavailable after openTimeoutMs", async () => {
  const r = rig();
  const { client } = start(r, { openTimeoutMs: 5_000 });
  await r.clock.advance(4_999);
  assert.equal(r.service.streams.length, 0);
  await r.clock.advance(1);
  assert.equal(r.service.socket.closedByClient, 1000);
  assert.equal(r.service.streams.length, 1);
  assert.equal(client.transport, "sse");
});

test("a forced transport is the only one tried", async () => {
  const r = rig();
  const { client } = start(r, { transports: ["poll"] });
  await r.clock.advance(0);
  assert.equal(r.service.sockets.length, 0);
  assert.equal(r.service.streams.length, 0);
  assert.equal(client.transport, "poll");
  assert.throws(() => client.setTransports(["carrier-pigeon" as any]), /transports must name/);
});

test("401 is no reason to fall back: reconnect on the same transport with a new token", async () => {
  const r = rig();
  let refuse = true;
  r.service.routes.push((req) => (req.url.pathname === "/v1/sse" && refuse ? json({ code: "token_expired", message: "expired" }, 401) : undefined));
  const { client, log, tokens } = start(r, { transports: ["sse", "poll"] });
  await r.clock.advance(0);
  assert.equal(client.state, "waiting");
  assert.ok(log.includes("error:token_expired"));
  assert.equal(r.service.polls.length, 0, "polling was not tried");
  refuse = false;
  await r.clock.advance(FIRST_RETRY);
  assert.equal(client.transport, "sse");
  assert.equal(tokens(), 2, "getToken is asked again on the reconnect");
});

// --- backoff state machine ----------------------------------------------------------------

test("nothing opens: exponential backoff with jitter, capped; reset after a stable connection", async () => {
  const r = rig();
  r.env.random = () => 0.999;
  r.service.down = true;
  const { client } = start(r, { transports: ["poll"] });
  const delays: number[] = [];
  for (let i = 0; i < 9; i++) {
    await r.clock.advance(0);
    assert.equal(client.state, "waiting");
    delays.push(client.retryDelay!);
    await r.clock.advance(client.retryDelay!);
  }
  // the first spread over spreadMs (3 s), then 0.5 s doubling, capped at 30 s
  assert.deepEqual(delays, [2997, 999, 1998, 3996, 7992, 15984, 29970, 29970, 29970]);

  r.service.down = false;
  await r.clock.advance(client.retryDelay!);
  assert.equal(client.state, "open");
  r.service.down = true;
  r.service.poll.answer({ events: [], cursor: "100-0" }); // one more answer, then the network fails
  await flush();
  assert.equal(client.state, "waiting");
  assert.equal(client.retryDelay, 29970, "dropped before the stable period: still backing off");

  r.service.down = false;
  await r.clock.advance(29970);
  assert.equal(client.state, "open");
  await r.clock.advance(10_000); // stableMs
  r.service.down = true;
  r.service.poll.answer({ events: [], cursor: "100-0" });
  await flush();
  assert.equal(client.retryDelay, 2997, "a stable connection resets the attempt count: the next drop is a first one");
});

test("pauses while offline and reconnects on `online`, within the spread window", async () => {
  const r = rig();
  const { client } = start(r, { transports: ["ws"] });
  await r.clock.advance(0);
  r.service.socket.accept();
  await flush();
  r.goOffline();
  assert.equal(client.state, "open", "an open connection is left to find out for itself");
  r.service.socket.drop();
  await flush();
  assert.equal(client.state, "offline");
  await r.clock.advance(10 * 60_000);
  assert.equal(r.service.sockets.length, 1, "nothing is tried while offline");
  r.goOnline();
  await flush();
  assert.equal(client.state, "waiting", "every browser behind a network that came back hears `online` at once");
  assert.equal(client.retryDelay, FIRST_RETRY);
  await r.clock.advance(FIRST_RETRY);
  assert.equal(r.service.sockets.length, 2);
  assert.equal(client.state, "connecting");
});

test("going offline while waiting cancels the pending attempt", async () => {
  const r = rig();
  r.service.down = true;
  const { client } = start(r, { transports: ["sse"] });
  await r.clock.advance(0);
  assert.equal(client.state, "waiting");
  r.goOffline();
  assert.equal(client.state, "offline");
  const before = r.service.requests.length;
  await r.clock.advance(120_000);
  assert.equal(r.service.requests.length, before);
});

// --- overload: 503 + Retry-After, 1013, too_many_subscriptions, storms --------------------

/** `GET /v1/sse` (and `GET /v1/poll` when `poll` is set) answered 503 while `busy()`. */
function overloaded(r: Rig, busy: () => boolean, headers: Record<string, string> = { "retry-after": "5" }, poll = false) {
  r.service.routes.push((req) =>
    busy() && (req.url.pathname === "/v1/sse" || (poll && req.url.pathname === "/v1/poll" && req.url.searchParams.get("timeout") !== "0"))
      ? new Response(JSON.stringify({ code: "too_many_connections", message: "full; retry shortly", retry_after: 5 }), {
          status: 503,
          headers: { "content-type": "application/json", ...headers },
        })
      : undefined,
  );
}

test("SSE 503 with Retry-After: the same transport again after that long plus jitter, no fallback, nothing blocked", async () => {
  const r = rig();
  let busy = true;
  overloaded(r, () => busy);
  const { client, log } = start(r, { transports: ["sse", "poll"] });
  await r.clock.advance(0);
  assert.equal(client.state, "waiting");
  assert.equal(client.retryDelay, 6_250, "Retry-After: 5, plus up to 50% (the rig's random() is 0.5)");
  assert.ok(log.includes("error:too_many_connections"), "the app is told why");
  assert.equal(r.service.to("GET /v1/poll").length, 1, "only the head was asked: long-polling was not tried");
  await r.clock.advance(6_249);
  assert.equal(r.service.to("GET /v1/sse").length, 1, "not before the server said");
  busy = false;
  await r.clock.advance(1);
  assert.equal(r.service.to("GET /v1/sse").length, 2);
  assert.equal(client.state, "open");
  assert.equal(client.transport, "sse");
  r.service.stream.end(); // a later drop: SSE was not blocked for blockedForMs
  await r.clock.advance(FIRST_RETRY);
  assert.equal(r.service.to("GET /v1/sse").length, 3);
  assert.equal(r.service.to("GET /v1/poll").length, 1);
});

test("Retry-After as an HTTP-date; the body's exact retry_after where the header is missing; a 429 alike", async () => {
  const r = rig();
  let busy = true;
  overloaded(r, () => busy, { "retry-after": new Date(r.clock.now() + 8_000).toUTCString() });
  const { client } = start(r, { transports: ["sse"] });
  await r.clock.advance(0);
  assert.equal(client.retryDelay, 10_000, "8 s, plus half of 4 s");

  const p = rig();
  overloaded(p, () => busy, {});
  const other = start(p, { transports: ["sse"] });
  await p.clock.advance(0);
  assert.equal(other.client.retryDelay, 6_250, "retry_after: 5 from the JSON body");
  busy = false;

  const q = rig();
  q.service.routes.push((req) => {
    const answer = req.url.pathname === "/v1/sse" ? json({ code: "rate_limited", message: "slow down" }, 429) : undefined;
    answer?.headers.set("retry-after", "3");
    return answer;
  });
  const limited = start(q, { transports: ["sse", "poll"] });
  await q.clock.advance(0);
  assert.equal(limited.client.retryDelay, 3_750, "a 429 is read the same way: 3 s, plus up to half of it");
  assert.equal(q.service.to("GET /v1/poll").length, 1, "no fallback");
});

test("503 without Retry-After (a proxy's page): the normal backoff on the same transport, not a fallback", async () => {
  const r = rig();
  let busy = true;
  r.service.routes.push((req) => (busy && req.url.pathname === "/v1/sse" ? new Response("<h1>503 Service Unavailable</h1>", { status: 503 }) : undefined));
  const { client } = start(r, { transports: ["sse", "poll"] });
  await r.clock.advance(0);
  assert.equal(client.state, "waiting");
  assert.equal(client.retryDelay, FIRST_RETRY);
  assert.equal(r.service.to("GET /v1/poll").length, 1, "long-polling was not tried");
  busy = false;
  await r.clock.advance(FIRST_RETRY);
  assert.equal(client.transport, "sse");
  assert.equal(client.state, "open");
});

test("long-polling answered 503 mid-session waits for Retry-After, then polls on", async () => {
  const r = rig();
  let busy = false;
  overloaded(r, () => busy, { "retry-after": "2" }, true);
  const { client } = start(r, { transports: ["poll"] });
  await r.clock.advance(0);
  assert.equal(client.state, "open");
  busy = true;
  r.service.poll.answer({ events: [ev("101-0")], cursor: "101-0" }); // the next request meets the 503
  await flush();
  assert.equal(client.state, "waiting");
  assert.equal(client.retryDelay, 2_500, "2 s plus half of the 1 s minimum spread");
  busy = false;
  const before = r.service.to("GET /v1/poll").length;
  await r.clock.advance(2_499);
  assert.equal(r.service.to("GET /v1/poll").length, before);
  await r.clock.advance(1);
  assert.equal(client.state, "open");
  assert.equal(r.service.to("GET /v1/poll").at(-1)!.url.searchParams.get("since"), "101-0");
});

test("WebSocket ticket answered 503: the WebSocket again after Retry-After, not SSE", async () => {
  const r = rig();
  let busy = true;
  r.service.routes.push((req) =>
    busy && req.url.pathname === "/v1/tickets"
      ? json({ code: "unavailable", message: "the event log engine is unreachable; retry shortly" }, 503)
      : undefined,
  );
  const { client } = start(r);
  await r.clock.advance(0);
  assert.equal(client.state, "waiting");
  assert.equal(r.service.streams.length, 0, "SSE was not tried");
  busy = false;
  await r.clock.advance(client.retryDelay!);
  assert.equal(r.service.sockets.length, 1);
  r.service.socket.accept();
  await flush();
  assert.equal(client.transport, "ws");
});

test("WebSocket closed 1013 after too_many_connections: the WebSocket again after its retry_after plus jitter", async () => {
  const r = rig();
  const { client, log } = start(r);
  const errors: any[] = [];
  client.on("error", (e) => errors.push(e));
  await r.clock.advance(0);
  const ws = r.service.socket;
  ws.accept(); // the server accepts the handshake, then says it is full
  ws.push({ op: "error", code: "too_many_connections", message: "full; retry shortly", retry_after: 5 });
  ws.drop(1013, "too_many_connections");
  await flush();
  assert.deepEqual(errors, [{ code: "too_many_connections", message: "full; retry shortly", retry_after: 5 }]);
  assert.ok(log.includes("close:ws"));
  assert.equal(client.state, "waiting");
  assert.equal(client.retryDelay, 6_250);
  await r.clock.advance(6_249);
  assert.equal(r.service.sockets.length, 1, "not before the server said");
  await r.clock.advance(1);
  assert.equal(r.service.sockets.length, 2);
  assert.equal(r.service.streams.length, 0, "no fallback to SSE");
  r.service.socket.accept();
  await flush();
  assert.equal(client.transport, "ws");

  r.service.socket.drop(1013, ""); // no hint: the backoff, still the WebSocket
  await flush();
  assert.equal(client.state, "waiting");
  assert.equal(client.retryDelay, 500, "second attempt: uniform below 1 s");
  await r.clock.advance(500);
  assert.equal(r.service.sockets.length, 3);
  assert.equal(r.service.streams.length, 0);
});

test("a storm: clients dropped together (1012, a killed server) spread their first reconnect over spreadMs", async () => {
  const n = 40;
  const delays: number[] = [];
  for (let i = 0; i < n; i++) {
    const r = rig();
    r.env.random = () => (i + 0.5) / n;
    const { client } = start(r, { transports: ["ws"] });
    await r.clock.advance(0);
    r.service.socket.accept();
    await r.clock.advance(60_000); // long connected: the next drop is a first one
    r.service.socket.drop(i % 2 ? 1012 : 1006, i % 2 ? "service restart" : "");
    await flush();
    assert.equal(client.state, "waiting");
    delays.push(client.retryDelay!);
    await r.clock.advance(client.retryDelay!);
    assert.equal(r.service.sockets.length, 2, "the same transport, promptly");
  }
  const sorted = [...delays].sort((a, b) => a - b);
  assert.ok(sorted[0] < 100 && sorted[n - 1] >= 2_900 && sorted[n - 1] < 3_000, `${sorted[0]}..${sorted[n - 1]}`);
  for (let k = 0; k < 4; k++) {
    const inQuarter = delays.filter((d) => d >= k * 750 && d < (k + 1) * 750).length;
    assert.equal(inQuarter, n / 4, `quarter ${k} of the window`);
  }
});

test("too_many_subscriptions on SSE (422) is a refused channel: dropped, reported, the stream goes on without it", async () => {
  const r = rig();
  r.service.routes.push((req) =>
    (req.url.pathname === "/v1/sse" || req.url.pathname === "/v1/poll") && req.url.searchParams.get("channels")?.includes("repository:r9")
      ? json({ code: "too_many_subscriptions", message: "a connection holds at most 3 channels", channel: "repository:r9" }, 422)
      : undefined,
  );
  const errors: any[] = [];
  const { client } = start(r, { transports: ["sse", "poll"], channels: ["repository:r1", "repository:r9"] });
  client.on("error", (e) => errors.push(e));
  await r.clock.advance(0);
  assert.deepEqual(errors.map((e) => [e.code, e.channel, e.status]), [["too_many_subscriptions", "repository:r9", 422]]);
  assert.equal(r.service.to("GET /v1/poll").length, 1, "no fallback: long-polling would be refused the same");
  await r.clock.advance(FIRST_RETRY);
  assert.equal(client.state, "open");
  assert.equal(client.transport, "sse");
  assert.equal(r.service.stream.url.searchParams.get("channels"), "repository:r1");
});

test("too_many_subscriptions on the WebSocket: the channel is dropped like a forbidden one, not asked for again", async () => {
  const r = rig();
  const { client, log } = start(r, { transports: ["ws"] });
  await r.clock.advance(0);
  r.service.socket.accept();
  await flush();
  const got: RealtimeEvent[] = [];
  client.subscribe("repository:r1", () => {});
  client.subscribe("repository:r9", (e) => got.push(e));
  r.service.socket.push({ op: "error", code: "too_many_subscriptions", message: "at most 3", channel: "repository:r9" });
  assert.ok(log.includes("error:too_many_subscriptions"));
  assert.equal(client.state, "open", "the connection stays");
  r.service.socket.drop();
  await r.clock.advance(FIRST_RETRY);
  assert.equal(r.service.socket.query.get("channels"), "repository:r1");
});

// --- resume -------------------------------------------------------------------------------

test("resumes from the last id on every transport, across switches; drops duplicates; snapshots keep the cursor", async () => {
  const r = rig();
  const { client, got } = start(r, { channels: ["analysis:a1", "repository:r1"] });
  const perChannel: string[] = [];
  client.subscribe("analysis:a1", (e) => perChannel.push(e.id));
  await r.clock.advance(0);
  const ws = r.service.socket;
  ws.accept();
  ws.push({ op: "subscribed", channel: "analysis:a1" });
  ws.push(ev("90-0", "analysis:a1", { snapshot: true, type: "analysis.progress" }));
  assert.equal(client.cursor, "100-0", "a snapshot never moves the cursor");
  ws.push(ev("101-0"));
  ws.push(ev("102-0", "analysis:a1"));
  ws.push(ev("102-0", "analysis:a1"));
  assert.equal(client.cursor, "102-0");

  client.setTransports(["sse"]);
  await r.clock.advance(0);
  assert.equal(ws.closedByClient, 1000);
  assert.equal(r.service.stream.url.searchParams.get("since"), "102-0");
  assert.equal(r.service.stream.url.searchParams.get("channels"), "analysis:a1,repository:r1");
  r.service.stream.event(ev("102-0", "analysis:a1")); // at-least-once: sent again
  r.service.stream.event(ev("103-0"));
  await flush();
  assert.equal(client.cursor, "103-0");

  client.setTransports(["poll"]);
  await r.clock.advance(0);
  assert.equal(r.service.to("GET /v1/poll").at(-1)!.url.searchParams.get("since"), "103-0");
  r.service.poll.answer({ events: [ev("103-0"), ev("104-0")], cursor: "104-0" });
  await flush();
  assert.equal(r.service.poll.url.searchParams.get("since"), "104-0");

  client.setTransports(["ws"]);
  await r.clock.advance(0);
  assert.equal(r.service.socket.query.get("since"), "104-0");
  assert.deepEqual(got.map((e) => e.id), ["90-0", "101-0", "102-0", "103-0", "104-0"]);
  assert.deepEqual(perChannel, ["90-0", "102-0"]);
});

test("a snapshot whose id was delivered is dropped; one that was not is delivered without marking it seen", async () => {
  const r = rig();
  const { got } = start(r, { transports: ["ws"] });
  await r.clock.advance(0);
  const ws = r.service.socket;
  ws.accept();
  ws.push(ev("101-0", "job:j1"));
  ws.push(ev("101-0", "job:j1", { snapshot: true }));
  ws.push(ev("95-0", "analysis:a1", { snapshot: true }));
  ws.push(ev("95-0", "analysis:a1", { snapshot: true })); // the server's and the client's fetch: once
  ws.push(ev("95-0", "analysis:a1")); // the same event, now in order: delivered (the app sees the latest state)
  assert.deepEqual(got.map((e) => `${e.id}${e.snapshot ? "s" : ""}`), ["101-0", "95-0s", "95-0"]);
});

test("a reset is handed to the app; the server's bad_cursor drops the cursor and starts fresh", async () => {
  const r = rig();
  const { client, log, got } = start(r, { transports: ["ws"] });
  await r.clock.advance(0);
  let ws = r.service.socket;
  ws.accept();
  ws.push(ev("101-0"));
  ws.push({ op: "reset" });
  ws.push(ev("101-0")); // after a reset the duplicate memory is gone: the app refetched anyway
  assert.ok(log.includes("reset:gap"));
  assert.equal(got.length, 2);

  ws.push({ op: "error", code: "bad_cursor", message: "since is not a cursor" });
  ws.drop(4400, "bad_cursor");
  assert.ok(log.includes("reset:bad_cursor"));
  assert.equal(client.cursor, null);
  await r.clock.advance(FIRST_RETRY);
  ws = r.service.socket;
  assert.equal(r.service.to("GET /v1/poll").length, 2, "the head is learned again");
  assert.equal(ws.query.get("since"), "100-0", "and the stream starts from it");
});

test("a reset on SSE and on long-polling", async () => {
  const r = rig();
  const { log } = start(r, { transports: ["sse"] });
  await r.clock.advance(0);
  r.service.stream.send("event: reset\ndata: {}\n\n");
  await flush();
  assert.ok(log.includes("reset:gap"));

  const p = rig();
  const polled = start(p, { transports: ["poll"] });
  await p.clock.advance(0);
  p.service.poll.answer({ events: [ev("500-0", "analysis:a1", { snapshot: true })], cursor: "600-0", reset: true });
  await flush();
  assert.ok(polled.log.includes("reset:gap"));
  assert.equal(polled.client.cursor, "600-0");
  assert.equal(p.service.poll.url.searchParams.get("since"), "600-0");
});

test("reconnecting without knowing where the last connection was is reported as a reset", async () => {
  const r = rig();
  r.service.routes.push((req) => (req.url.pathname === "/v1/poll" ? new Response("no", { status: 502 }) : undefined));
  const { client, log } = start(r, { transports: ["ws"] });
  await r.clock.advance(0);
  r.service.socket.accept();
  await flush();
  assert.equal(client.cursor, null);
  assert.ok(!log.some((l) => l.startsWith("reset")), "the first connection has nothing to miss");
  r.service.socket.drop();
  await r.clock.advance(FIRST_RETRY);
  r.service.socket.accept();
  await flush();
  assert.ok(log.includes("reset:no_cursor"));
});

// --- tokens -------------------------------------------------------------------------------

test("asks getToken on every reconnect and refreshes a WebSocket before exp", async () => {
  const r = rig();
  const { client, tokens } = start(r, { transports: ["ws"] }, 120);
  await r.clock.advance(0);
  r.service.socket.accept();
  await flush();
  assert.equal(tokens(), 1);
  await r.clock.advance(95_000);
  assert.equal(r.service.socket.sent.filter((f) => f.op === "refresh").length, 0);
  await r.clock.advance(1_000); // 120 s lifetime: refreshed at 96 s (80%)
  const refresh = r.service.socket.sent.find((f) => f.op === "refresh");
  assert.equal(decodeToken(refresh.token).n, 2);
  assert.equal(tokens(), 2);

  r.service.socket.drop(4001, "token_expired");
  await r.clock.advance(FIRST_RETRY);
  assert.equal(tokens(), 3);
  assert.equal(client.state, "connecting");
});

test("an SSE stream is resumed with a fresh token before exp; polling just sends the new one", async () => {
  const r = rig();
  const { client } = start(r, { transports: ["sse"], idleTimeoutMs: 3_600_000, pollTimeout: 600 }, 600);
  await r.clock.advance(0);
  r.service.stream.event(ev("101-0"));
  await r.clock.advance(540_000); // at exp - 60 s
  assert.equal(r.service.streams.length, 2);
  assert.equal(r.service.streams[0].closed, true);
  assert.equal(r.service.stream.url.searchParams.get("since"), "101-0");
  assert.equal(decodeToken(r.service.to("GET /v1/sse")[1].headers.Authorization.slice(7)).n, 2);

  client.setTransports(["poll"]);
  await r.clock.advance(0);
  await r.clock.advance(540_000);
  r.service.poll.answer({ events: [], cursor: "101-0" });
  await flush();
  const last = r.service.to("GET /v1/poll").at(-1)!;
  assert.equal(decodeToken(last.headers.Authorization.slice(7)).n, 4);
});

// --- channels -----------------------------------------------------------------------------

test("WebSocket: subscribe and unsubscribe in place; the user's own channels are never named", async () => {
  const r = rig();
  const { client } = start(r, { transports: ["ws"] });
  const off = client.subscribe("user:u1", () => {});
  await r.clock.advance(0);
  const ws = r.service.socket;
  assert.equal(ws.query.get("channels"), null);
  ws.accept();
  await flush();
  const a = client.subscribe("repository:r9", () => {});
  const b = client.subscribe("repository:r9", () => {});
  a();
  assert.deepEqual(ws.sent.filter((f) => f.op !== "ping"), [{ op: "subscribe", channel: "repository:r9" }]);
  b();
  off();
  assert.deepEqual(ws.sent.filter((f) => f.op !== "ping").at(-1), { op: "unsubscribe", channel: "repository:r9" });
  assert.equal(ws.sent.filter((f) => f.op === "unsubscribe").length, 1);
});

test("SSE: a new channel resumes the stream from the cursor with it, and fetches its snapshot", async () => {
  const r = rig();
  r.service.routes.push((req) =>
    req.url.pathname === "/v1/poll" && req.url.searchParams.get("channels") === "analysis:a7"
      ? json({ events: [ev("50-0", "analysis:a7", { snapshot: true, type: "analysis.progress", data: { progress: 40 } })], cursor: "120-0", reset: false })
      : undefined,
  );
  const { client } = start(r, { transports: ["sse"] });
  const seen: RealtimeEvent[] = [];
  await r.clock.advance(0);
  r.service.stream.event(ev("110-0"));
  await flush();
  client.subscribe("analysis:a7", (e) => seen.push(e));
  await r.clock.advance(0);
  assert.equal(r.service.streams.length, 2);
  assert.equal(r.service.stream.url.searchParams.get("channels"), "analysis:a7");
  assert.equal(r.service.stream.url.searchParams.get("since"), "110-0");
  assert.deepEqual(seen.map((e) => e.id), ["50-0"]);
  assert.equal(client.cursor, "110-0", "the snapshot's poll cursor is not ours");
});

test("make before break: a replaced SSE stream stays open until its successor opens; its events meanwhile are replayed", async () => {
  const r = rig();
  let release: () => void = () => {};
  let hold = false;
  r.service.routes.push((req) =>
    req.url.pathname === "/v1/sse" && hold ? new Promise<undefined>((resolve) => (release = () => resolve(undefined))) : undefined,
  );
  const { client, got } = start(r, { transports: ["sse"] });
  await r.clock.advance(0);
  const first = r.service.stream;
  first.event(ev("101-0"));
  await flush();
  hold = true;
  client.subscribe("repository:r2", () => {});
  await r.clock.advance(0);
  assert.equal(first.closed, false, "the user stays connected (and present) meanwhile");
  first.event(ev("102-0")); // ignored: the successor resumes from 101-0 and brings it
  await flush();
  assert.equal(client.cursor, "101-0");
  release();
  await flush();
  assert.equal(first.closed, true);
  const second = r.service.stream;
  assert.equal(second.url.searchParams.get("since"), "101-0");
  second.event(ev("102-0"));
  second.event(ev("103-0"));
  await flush();
  assert.deepEqual(got.map((e) => e.id), ["101-0", "102-0", "103-0"]);
});

test("polling: a new channel is picked up by re-issuing the pending request", async () => {
  const r = rig();
  const { client } = start(r, { transports: ["poll"], clientId: "tab-1" });
  await r.clock.advance(0);
  assert.equal(r.service.poll.url.searchParams.get("client_id"), "tab-1");
  client.subscribe("repository:r2", () => {});
  await flush();
  assert.equal(r.service.poll.url.searchParams.get("channels"), "repository:r2");
  assert.equal(r.service.poll.url.searchParams.get("since"), "100-0");
  assert.equal(client.state, "open");
});

test("a forbidden channel is dropped and reported, so the stream can go on", async () => {
  const r = rig();
  r.service.routes.push((req) =>
    req.url.pathname === "/v1/sse" && req.url.searchParams.get("channels")?.includes("repository:secret")
      ? json({ code: "forbidden", message: "no", channel: "repository:secret" }, 403)
      : undefined,
  );
  const { client, log } = start(r, { transports: ["sse"], channels: ["repository:secret", "repository:r1"] });
  await r.clock.advance(0);
  assert.ok(log.includes("error:forbidden"));
  await r.clock.advance(FIRST_RETRY);
  assert.equal(client.state, "open");
  assert.equal(r.service.stream.url.searchParams.get("channels"), "repository:r1");
});

test("a handler that throws does not stop delivery to the others", async () => {
  const r = rig();
  const reported: unknown[] = [];
  (globalThis as any).reportError = (e: unknown) => reported.push(e);
  try {
    const { client } = start(r, { transports: ["ws"] });
    const got: string[] = [];
    client.subscribe("repository:r1", () => {
      throw new Error("app bug");
    });
    client.subscribe("repository:r1", (e) => got.push(e.id));
    await r.clock.advance(0);
    r.service.socket.accept();
    r.service.socket.push(ev("101-0"));
    assert.deepEqual(got, ["101-0"]);
    assert.equal(reported.length, 1);
  } finally {
    delete (globalThis as any).reportError;
  }
});

test("a silent WebSocket is dropped after two ping intervals; close() stops everything", async () => {
  const r = rig();
  const { client, log } = start(r, { transports: ["ws"], pingIntervalMs: 1_000 });
  await r.clock.advance(0);
  r.service.socket.autoPong = false;
  r.service.socket.accept();
  await r.clock.advance(1_000);
  assert.deepEqual(r.service.socket.sent, [{ op: "ping" }]);
  await r.clock.advance(2_000);
  assert.ok(log.includes("close:ws"));
  client.close();
  const count = r.service.requests.length;
  await r.clock.advance(120_000);
  assert.equal(r.service.requests.length, count);
  assert.equal(client.state, "closed");
});

// --- SSE parsing --------------------------------------------------------------------------

test("SseParser: any chunking, CRLF split across chunks, comments, multi-line data", () => {
  const text = ": keep-alive\r\n\r\nid: 1-0\r\nevent: a.b\r\ndata: {\"x\":\r\ndata: 1}\r\n\r\nevent: reset\ndata: {}\n\nevent: error\rdata: {\"code\":\"token_expired\"}\r\r: next chunk\n";
  const expected = [["a.b", '{"x":\n1}'], ["reset", "{}"], ["error", '{"code":"token_expired"}']];
  for (let size = 1; size <= text.length; size++) {
    const out: string[][] = [];
    const parser = new SseParser((type, data) => out.push([type, data]));
    for (let i = 0; i < text.length; i += size) parser.push(text.slice(i, i + size));
    assert.deepEqual(out, expected, `chunks of ${size}`);
  }
});

import assert from "node:assert/strict";
import { test } from "node:test";

import { createElement } from "react";
import { renderToString } from "react-dom/server";

import { analysisStore, applyNotificationEvent, connect, notificationsStore, presenceStore, type Notification, type NotificationsState } from "../src/index.js";
import { useAnalysisProgress, useChannel, useNotifications } from "../src/react.js";
import { ev, fakeToken, flush, json, rig } from "./fakes.js";

function note(id: string, extra: Partial<Notification> = {}): Notification {
  return {
    id, type: "mention", category: "general", title: id, message: "", action_url: null, data: {},
    created_at: "2026-11-28T06:00:00.000Z", seen_at: null, read_at: null, archived_at: null, ...extra,
  };
}

function client(r: ReturnType<typeof rig>) {
  return connect({ url: "http://rt.test", getToken: () => fakeToken({ sub: "u1", tid: "t1", exp: 1_800_003_600 }), env: r.env, transports: ["ws"] });
}

test("applyNotificationEvent: created, read one, archived, read all, seen all", () => {
  let state: NotificationsState = { items: [note("a")], unread: 1, loading: false, error: null };
  state = applyNotificationEvent(state, ev("1-0", "user:u1", { type: "notification.created", data: { notification: note("b"), unread_count: 2 } }));
  assert.deepEqual(state.items.map((n) => n.id), ["b", "a"]);
  assert.equal(state.unread, 2);
  state = applyNotificationEvent(state, ev("2-0", "user:u1", { type: "notification.created", data: { notification: note("b"), unread_count: 2 } }));
  assert.equal(state.items.length, 2, "created twice (a refetch raced the event) is listed once");
  state = applyNotificationEvent(state, ev("3-0", "user:u1", {
    type: "notification.read", data: { change: "read", ids: ["b"], notification: note("b", { read_at: "x" }), unread_count: 1 } }));
  assert.equal(state.items[0].read_at, "x");
  assert.equal(state.unread, 1);
  state = applyNotificationEvent(state, ev("4-0", "user:u1", { type: "notification.read", data: { change: "read", all: true, at: "y", unread_count: 0 } }));
  assert.deepEqual(state.items.map((n) => n.read_at), ["x", "y"]);
  assert.equal(state.items[1].seen_at, "y");
  state = applyNotificationEvent(state, ev("5-0", "user:u1", {
    type: "notification.updated", data: { change: "archived", notification: note("a", { archived_at: "z" }), unread_count: 0 } }));
  assert.deepEqual(state.items.map((n) => n.id), ["b"]);
  const many = Array.from({ length: 3 }, (_, i) => note(`n${i}`));
  const capped = applyNotificationEvent({ items: many, unread: 0, loading: false, error: null },
    ev("6-0", "user:u1", { type: "notification.created", data: { notification: note("new") } }), 3);
  assert.deepEqual(capped.items.map((n) => n.id), ["new", "n0", "n1"]);
});

test("notificationsStore: fetched on start, events during the fetch applied on top, refetched after a reset", async () => {
  const r = rig();
  let release: () => void = () => {};
  let fetches = 0;
  r.service.routes.push((req) => {
    if (req.url.pathname === "/v1/notifications/unread-count") return json({ count: fetches === 1 ? 1 : 5 });
    if (req.url.pathname === "/v1/notifications") {
      fetches++;
      assert.match(req.headers.Authorization, /^Bearer /);
      const page = json({ items: fetches === 1 ? [note("a")] : [note("z")], next_cursor: null });
      return fetches === 1 ? new Promise((resolve) => (release = () => resolve(page))) : page;
    }
    return undefined;
  });
  const rt = client(r);
  await r.clock.advance(0);
  r.service.socket.accept();
  const store = notificationsStore(rt);
  const states: number[] = [];
  const off = store.subscribe(() => states.push(store.get().unread));
  await flush();
  assert.equal(store.get().loading, true);
  r.service.socket.push(ev("101-0", "user:u1", { type: "notification.created", data: { notification: note("b"), unread_count: 2 } }));
  release();
  await flush();
  assert.deepEqual(store.get().items.map((n) => n.id), ["b", "a"]);
  assert.equal(store.get().unread, 2, "the event is newer than the fetched count");
  assert.equal(store.get().loading, false);

  r.service.socket.push({ op: "reset" });
  await flush();
  assert.deepEqual(store.get().items.map((n) => n.id), ["z"]);
  assert.equal(store.get().unread, 5);
  off();
  r.service.socket.push(ev("102-0", "user:u1", { type: "notification.created", data: { notification: note("c"), unread_count: 6 } }));
  assert.equal(store.get().unread, 5, "a stopped store listens no more");
  assert.ok(states.length >= 3);
});

test("notificationsStore.markRead and markAllRead call the contract's routes", async () => {
  const r = rig();
  r.service.routes.push((req) => (req.method === "POST" ? json({ ok: true }) : req.url.pathname.startsWith("/v1/notifications") ? json({ items: [], count: 0 }) : undefined));
  const rt = client(r);
  const store = notificationsStore(rt);
  await store.markRead("n/1");
  await store.markAllRead();
  assert.deepEqual(r.service.requests.filter((q) => q.method === "POST" && q.url.pathname !== "/v1/tickets").map((q) => q.url.pathname),
    ["/v1/notifications/n%2F1/read", "/v1/notifications/read-all"]);
});

test("analysisStore follows analysis.progress and ignores a replay older than its snapshot", async () => {
  const r = rig();
  const rt = client(r);
  const store = analysisStore(rt, "a1");
  const off = store.subscribe(() => {});
  await r.clock.advance(0);
  const ws = r.service.socket;
  ws.accept();
  await flush();
  assert.deepEqual(ws.query.get("channels"), "analysis:a1");
  ws.push(ev("90-0", "analysis:a1", { type: "analysis.progress", snapshot: true, data: { progress: 50 } }));
  ws.push(ev("85-0", "analysis:a1", { type: "analysis.progress", data: { progress: 40 } }));
  assert.equal(store.get().progress, 50);
  ws.push(ev("101-0", "analysis:a1", { type: "analysis.progress", data: { progress: 70 } }));
  assert.equal(store.get().progress, 70);
  off();
  assert.deepEqual(ws.sent.filter((f) => f.op === "unsubscribe"), [{ op: "unsubscribe", channel: "analysis:a1" }]);
});

test("presenceStore loads on open and follows joins and leaves", async () => {
  const r = rig();
  r.service.routes.push((req) =>
    req.url.pathname === "/v1/presence/repository%3Ar1"
      ? json({ channel: "repository:r1", users: [{ user_id: "ada", connections: 1, since: "t" }] })
      : undefined,
  );
  const rt = client(r);
  const store = presenceStore(rt, "repository:r1");
  store.subscribe(() => {});
  await r.clock.advance(0);
  r.service.socket.accept();
  await flush();
  assert.deepEqual(store.get().map((u) => u.user_id), ["ada", "u1"], "the user, subscribed, is viewing too");
  r.service.socket.push(ev("101-0", "repository:r1", { type: "presence.join", data: { user_id: "grace" } }));
  r.service.socket.push(ev("102-0", "repository:r1", { type: "presence.join", data: { user_id: "grace" } }));
  assert.deepEqual(store.get().map((u) => u.user_id), ["ada", "u1", "grace"]);
  r.service.socket.push(ev("103-0", "repository:r1", { type: "presence.leave", data: { user_id: "ada" } }));
  assert.deepEqual(store.get().map((u) => u.user_id), ["u1", "grace"]);
});

test("the React hooks render (server side: their initial state) with and without a client", () => {
  const r = rig();
  const rt = client(r);
  function View({ withClient }: { withClient: boolean }) {
    const c = withClient ? rt : null;
    const inbox = useNotifications(c);
    const analysis = useAnalysisProgress(c, "a1");
    const last = useChannel(c, "repository:r1");
    return createElement("p", null, `${inbox.unread}/${inbox.loading}/${analysis.progress}/${last?.id ?? "none"}`);
  }
  assert.equal(renderToString(createElement(View, { withClient: false })), "<p>0/false/null/none</p>");
  assert.equal(renderToString(createElement(View, { withClient: true })), "<p>0/true/null/none</p>");
  rt.close();
});

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  applyNotificationEvent,
  connect,
  notificationEventNeedsRefetch,
  notificationFilter,
  notificationsStore,
  type Notification,
  type NotificationFilter,
  type NotificationsState,
  type RealtimeEvent,
} from "../src/index.js";
import { ev, fakeToken, flush, json, rig, type Rig, type Seen } from "./fakes.js";

function note(id: string, extra: Partial<Notification> = {}): Notification {
  return {
    id, type: "mention", category: "general", title: id, message: "", action_url: null, data: {},
    created_at: "2026-11-28T06:00:00.000Z", seen_at: null, read_at: null, archived_at: null,
    actions: [], tags: [], action_taken: null, acted_at: null, snoozed_until: null, ...extra,
  };
}

/** Created a minute apart: n1 the oldest. */
function at(minute: number): string {
  return new Date(Date.UTC(2026, 10, 28, 6, minute)).toISOString();
}

function state(items: Notification[], filter: NotificationFilter = {}, extra: Partial<NotificationsState> = {}): NotificationsState {
  return {
    items, unread: 0, counts: { unread: 0, unseen: 0, total: 0 }, filter: notificationFilter(filter), hasMore: false,
    loading: false, error: null, ...extra,
  };
}

const counts = (unread: number, unseen = unread, total = unread) => ({ counts: { unread, unseen, total }, unread_count: unread, unseen_count: unseen });
let seq = 100;
const event = (type: string, data: Record<string, unknown>): RealtimeEvent =>
  ev(`${++seq}-0`, "user:u1", { type, data: { at: "2026-11-28T07:00:00.000Z", ...data } });
const ids = (s: NotificationsState) => s.items.map((n) => n.id);

function client(r: Rig) {
  return connect({ url: "http://rt.test", getToken: () => fakeToken({ sub: "u1", tid: "t1", exp: 1_800_003_600 }), env: r.env, transports: ["ws"] });
}

// --- applying events (pure) ----------------------------------------------------------------

test("applyNotificationEvent: created, read one, archived, read all, seen all (a state without a view: the inbox)", () => {
  let s = applyNotificationEvent({ items: [note("a")], unread: 1, loading: false, error: null },
    event("notification.created", { notification: note("b"), unread_count: 2 }));
  assert.deepEqual(ids(s), ["b", "a"]);
  assert.equal(s.unread, 2);
  s = applyNotificationEvent(s, event("notification.created", { notification: note("b"), unread_count: 2 }));
  assert.equal(s.items.length, 2, "created twice (a refetch raced the event) is listed once");
  s = applyNotificationEvent(s, event("notification.read", { change: "read", ids: ["b"], notification: note("b", { read_at: "x" }), unread_count: 1 }));
  assert.equal(s.items[0].read_at, "x");
  assert.equal(s.unread, 1);
  s = applyNotificationEvent(s, event("notification.read", { change: "read", all: true, at: "y", unread_count: 0 }));
  assert.deepEqual(s.items.map((n) => n.read_at), ["x", "y"]);
  assert.equal(s.items[1].seen_at, "y");
  s = applyNotificationEvent(s, event("notification.updated", { change: "archived", notification: note("a", { archived_at: "z" }), unread_count: 0 }));
  assert.deepEqual(ids(s), ["b"]);
  s = applyNotificationEvent(s, event("notification.updated", { change: "seen", all: true, at: "w", unread_count: 0 }));
  assert.deepEqual(s.items.map((n) => n.seen_at), ["w"], "read (by id) but not seen: seen now");
  const many = Array.from({ length: 3 }, (_, i) => note(`n${i}`));
  const capped = applyNotificationEvent({ items: many, unread: 0, loading: false, error: null },
    event("notification.created", { notification: note("new") }), 3);
  assert.deepEqual(ids(capped), ["new", "n0", "n1"]);
  assert.equal(capped.hasMore, true, "one fell off the page");
});

test("the counts an event carries are taken as they are, `counts` first, also when the page is unchanged", () => {
  let s = state([note("a")], {}, { unread: 7, counts: { unread: 7, unseen: 5, total: 9 } });
  s = applyNotificationEvent(s, event("notification.updated", { change: "read", ids: ["zz"], counts: { unread: 3, unseen: 2, total: 4 }, unread_count: 99 }));
  assert.deepEqual(s.counts, { unread: 3, unseen: 2, total: 4 });
  assert.equal(s.unread, 3, "never unread_count when counts is there, never arithmetic");
  s = applyNotificationEvent(s, event("notification.read", { change: "read", ids: ["a"], unread_count: 2, unseen_count: 1 }));
  assert.deepEqual(s.counts, { unread: 2, unseen: 1, total: 4 }, "an older server's fields; total kept");
  const before = s;
  s = applyNotificationEvent(s, event("notification.created", {}));
  assert.deepEqual(s.counts, before.counts, "no counts: kept");
});

test("created: only into a view it matches (status, tags, category), in order, never past a full page", () => {
  const tagged = note("t", { created_at: at(5), tags: ["deploy", "prod"] });
  assert.deepEqual(ids(applyNotificationEvent(state([], { tags: ["deploy"] }), event("notification.created", { notification: tagged }))), ["t"]);
  assert.deepEqual(ids(applyNotificationEvent(state([], { tags: ["deploy", "staging"] }), event("notification.created", { notification: tagged }))), [],
    "every tag must match");
  assert.deepEqual(ids(applyNotificationEvent(state([], { category: "billing" }), event("notification.created", { notification: tagged }))), []);
  assert.deepEqual(ids(applyNotificationEvent(state([], { status: "archived" }), event("notification.created", { notification: tagged }))), []);
  assert.deepEqual(ids(applyNotificationEvent(state([], { status: "snoozed" }), event("notification.created", { notification: tagged }))), []);
  assert.deepEqual(ids(applyNotificationEvent(state([], { status: "unread" }), event("notification.created", { notification: tagged }))), ["t"]);
  // an older one (a late event) goes in its place, not on top
  const page = [note("n3", { created_at: at(3) }), note("n1", { created_at: at(1) })];
  assert.deepEqual(ids(applyNotificationEvent(state(page), event("notification.created", { notification: note("n2", { created_at: at(2) }) }))), ["n3", "n2", "n1"]);
  // older than the last of a page that has more after it: not ours to show
  const older = event("notification.created", { notification: note("n0", { created_at: at(0) }) });
  assert.deepEqual(ids(applyNotificationEvent(state(page, {}, { hasMore: true }), older)), ["n3", "n1"]);
  assert.deepEqual(ids(applyNotificationEvent(state(page), older)), ["n3", "n1", "n0"], "the whole view is on the page: appended");
});

test("read, unread and acted (one notification): replaced, and out of views it no longer matches", () => {
  const a = note("a", { actions: [{ id: "approve", label: "Approve" }, { id: "reject", label: "Reject" }] });
  const acted = { ...a, action_taken: "approve", acted_at: "x", read_at: "x", seen_at: "x" };
  const actedEvent = event("notification.updated", { change: "acted", ids: ["a"], notification: acted, ...counts(0) });
  let s = applyNotificationEvent(state([a], {}, { unread: 1 }), actedEvent);
  assert.equal(s.items[0].action_taken, "approve");
  assert.equal(s.unread, 0);
  assert.deepEqual(ids(applyNotificationEvent(state([a], { status: "unread" }), actedEvent)), [], "read now: out of the unread view");
  s = applyNotificationEvent(state([], { status: "unread" }),
    event("notification.updated", { change: "unread", ids: ["a"], notification: note("a"), ...counts(1) }));
  assert.deepEqual(ids(s), ["a"], "unread again: into the unread view");
});

test("archived and unarchived: between the inbox and the archive, each in its place", () => {
  const page = [note("n3", { created_at: at(3) }), note("n1", { created_at: at(1) })];
  const n2 = note("n2", { created_at: at(2) });
  let s = applyNotificationEvent(state(page), event("notification.updated", { change: "unarchived", ids: ["n2"], notification: n2, ...counts(3) }));
  assert.deepEqual(ids(s), ["n3", "n2", "n1"]);
  assert.equal(s.unread, 3);
  s = applyNotificationEvent(s, event("notification.updated", { change: "archived", ids: ["n2"], notification: { ...n2, archived_at: "x" }, ...counts(2) }));
  assert.deepEqual(ids(s), ["n3", "n1"]);
  const archive = applyNotificationEvent(state([]), event("notification.updated", { change: "archived", ids: ["n2"], notification: { ...n2, archived_at: "x" } }));
  assert.deepEqual(ids(applyNotificationEvent(state([], { status: "archived" }),
    event("notification.updated", { change: "archived", ids: ["n2"], notification: { ...n2, archived_at: "x" } }))), ["n2"]);
  assert.deepEqual(ids(archive), []);
  assert.deepEqual(ids(applyNotificationEvent(state([{ ...n2, archived_at: "x" }], { status: "archived" }),
    event("notification.updated", { change: "unarchived", ids: ["n2"], notification: n2 }))), [], "out of the archive");
});

test("snoozed and unsnoozed: out of every list but the snoozed one, and back as unread", () => {
  const a = note("a", { read_at: "r", seen_at: "r" });
  const snoozed = { ...a, snoozed_until: "2026-11-28T08:00:00.000Z" };
  const snooze = event("notification.updated", { change: "snoozed", ids: ["a"], notification: snoozed, ...counts(0, 0, 0) });
  let inbox = applyNotificationEvent(state([a], {}, { counts: { unread: 0, unseen: 0, total: 1 } }), snooze);
  assert.deepEqual(ids(inbox), []);
  assert.deepEqual(inbox.counts, { unread: 0, unseen: 0, total: 0 }, "in no count");
  let sleeping = applyNotificationEvent(state([], { status: "snoozed" }), snooze);
  assert.deepEqual(ids(sleeping), ["a"]);
  const back = { ...a, read_at: null, snoozed_until: null };
  const due = event("notification.unsnoozed", { notification: back, ids: ["a"], ...counts(1, 1, 1) });
  inbox = applyNotificationEvent(inbox, due);
  assert.deepEqual(ids(inbox), ["a"]);
  assert.equal(inbox.items[0].read_at, null);
  assert.equal(inbox.unread, 1);
  sleeping = applyNotificationEvent(sleeping, due);
  assert.deepEqual(ids(sleeping), []);
  assert.equal(notificationEventNeedsRefetch(state([]), due), false);
  assert.equal(notificationEventNeedsRefetch(state([]), event("notification.unsnoozed", { ids: ["a"] })), true, "without the notification: fetch it");
  // an unsnoozed event whose notification still names the time it was due is back all the same
  assert.deepEqual(ids(applyNotificationEvent(state([]), event("notification.unsnoozed", { notification: snoozed, ids: ["a"] }))), ["a"]);
});

test("deleted: gone from the page, by id or ids; the page refills when the server has more", () => {
  const page = [note("c"), note("b"), note("a")];
  let s = applyNotificationEvent(state(page), event("notification.deleted", { id: "b", ids: ["b"], ...counts(2) }));
  assert.deepEqual(ids(s), ["c", "a"]);
  assert.equal(s.unread, 2);
  s = applyNotificationEvent(s, event("notification.deleted", { id: "c", ...counts(1) }));
  assert.deepEqual(ids(s), ["a"], "id alone");
  assert.equal(notificationEventNeedsRefetch(state(page), event("notification.deleted", { id: "zz" })), false);
  assert.equal(notificationEventNeedsRefetch(state(page, {}, { hasMore: true }), event("notification.deleted", { id: "a" })), true,
    "one less on a page with more after it: fetch it again");
});

test("bulk changes (ids, no notification): applied to what the page holds; refetched where one it lacks may enter", () => {
  const page = [note("c"), note("b", { read_at: "r", seen_at: "r" }), note("a")];
  let s = applyNotificationEvent(state(page), event("notification.read", { change: "read", ids: ["c", "a", "zz"], at: "t", ...counts(0) }));
  assert.deepEqual(s.items.map((n) => n.read_at), ["t", "r", "t"]);
  assert.equal(notificationEventNeedsRefetch(state(page), event("notification.read", { change: "read", ids: ["zz"] })), false,
    "an id it lacks that was read stays out of the inbox's page");
  s = applyNotificationEvent(s, event("notification.updated", { change: "unread", ids: ["b"], ...counts(1) }));
  assert.equal(s.items[1].read_at, null);
  s = applyNotificationEvent(s, event("notification.updated", { change: "archived", ids: ["a", "b"], ...counts(0) }));
  assert.deepEqual(ids(s), ["c"]);
  s = applyNotificationEvent(state([page[0], page[2]], { status: "unread" }), event("notification.read", { change: "read", ids: ["c"] }));
  assert.deepEqual(ids(s), ["a"], "out of the unread view");
  const needs = (filter: NotificationFilter, change: string) =>
    notificationEventNeedsRefetch(state(page, filter), event("notification.updated", { change, ids: ["zz"] }));
  assert.equal(needs({}, "unarchived"), true);
  assert.equal(needs({}, "archived"), false);
  assert.equal(needs({ status: "archived" }, "archived"), true);
  assert.equal(needs({ status: "unread" }, "unread"), true);
  assert.equal(needs({ status: "snoozed" }, "snoozed"), true);
  assert.equal(needs({}, "something-new"), true, "a change it does not know: refetch");
  const acted = applyNotificationEvent(state(page), event("notification.updated", { change: "acted", ids: ["c"], action_id: "ok", at: "t" }));
  assert.deepEqual([acted.items[0].action_taken, acted.items[0].acted_at, acted.items[0].read_at], ["ok", "t", "t"]);
  assert.equal(notificationEventNeedsRefetch(state(page), event("notification.updated", { change: "acted", ids: ["c"] })), true,
    "which action, not said: fetch it");
  assert.deepEqual(ids(applyNotificationEvent(state([]), event("notification.updated", { change: "unarchived", ids: ["zz"] }))), [],
    "nothing invented");
});

test("all: read-all and seen-all applied exactly; archive-all refetched", () => {
  const page = [note("b"), note("a", { read_at: "r", seen_at: "r" })];
  const readAll = event("notification.read", { change: "read", all: true, at: "t", ...counts(0) });
  assert.deepEqual(applyNotificationEvent(state(page), readAll).items.map((n) => n.read_at), ["t", "r"]);
  assert.equal(notificationEventNeedsRefetch(state(page), readAll), false);
  assert.deepEqual(ids(applyNotificationEvent(state([page[0]], { status: "unread" }), readAll)), [], "the unread view empties");
  const seenAll = event("notification.updated", { change: "seen", all: true, at: "t", ...counts(1, 0) });
  assert.deepEqual(ids(applyNotificationEvent(state([page[0]], { status: "unseen" }), seenAll)), []);
  const archiveAll = event("notification.updated", { change: "archived", all: true, ...counts(0, 0, 0) });
  assert.equal(notificationEventNeedsRefetch(state(page), archiveAll), true);
  assert.equal(applyNotificationEvent(state(page), archiveAll).unread, 0, "its counts at once, the page after the fetch");
});

// --- the store and the service -------------------------------------------------------------

/** A fake inbox: `items` answer the list (any query), `counts` the counts; every request seen. */
function inboxService(r: Rig, items: () => Notification[] = () => [], inboxCounts = () => ({ unread: 0, unseen: 0, total: 0 })) {
  const lists: Seen[] = [];
  r.service.routes.push((req) => {
    if (req.method === "GET" && req.url.pathname === "/v1/notifications") {
      lists.push(req);
      const limit = Number(req.url.searchParams.get("limit") ?? 20);
      const all = items();
      return json({ items: all.slice(0, limit), next_cursor: all.length > limit ? "more" : null });
    }
    if (req.method === "GET" && req.url.pathname === "/v1/notifications/counts") return json(inboxCounts());
    return undefined;
  });
  return lists;
}

async function live(r: Rig, options: Parameters<typeof notificationsStore>[1] = {}) {
  const rt = client(r);
  await r.clock.advance(0);
  r.service.socket.accept();
  const store = notificationsStore(rt, options);
  const off = store.subscribe(() => {});
  await flush();
  return { rt, store, off, push: (e: RealtimeEvent) => r.service.socket.push(e) };
}

test("notificationsStore: fetched on start (the page and the counts), events during the fetch applied on top, refetched after a reset", async () => {
  const r = rig();
  let release: () => void = () => {};
  let fetches = 0;
  r.service.routes.push((req) => {
    if (req.url.pathname === "/v1/notifications/counts") return json(fetches === 1 ? { unread: 1, unseen: 1, total: 1 } : { unread: 5, unseen: 5, total: 6 });
    if (req.url.pathname === "/v1/notifications") {
      fetches++;
      assert.match(req.headers.Authorization, /^Bearer /);
      assert.equal(req.url.search, "?status=all&limit=20");
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
  r.service.socket.push(ev("101-0", "user:u1", { type: "notification.created", data: { notification: note("b"), ...counts(2, 2, 2) } }));
  release();
  await flush();
  assert.deepEqual(ids(store.get()), ["b", "a"]);
  assert.deepEqual(store.get().counts, { unread: 2, unseen: 2, total: 2 }, "the event is newer than the fetched counts");
  assert.equal(store.get().loading, false);

  r.service.socket.push({ op: "reset" });
  await flush();
  assert.deepEqual(ids(store.get()), ["z"]);
  assert.deepEqual(store.get().counts, { unread: 5, unseen: 5, total: 6 });
  off();
  r.service.socket.push(ev("102-0", "user:u1", { type: "notification.created", data: { notification: note("c"), ...counts(6) } }));
  assert.equal(store.get().unread, 5, "a stopped store listens no more");
  assert.ok(states.length >= 3);
});

test("every method calls its route of the contract, with its body", async () => {
  const r = rig();
  r.service.routes.push((req) => {
    if (req.method === "DELETE") return new Response(null, { status: 204 });
    if (req.method !== "POST" || req.url.pathname === "/v1/tickets") return undefined;
    if (req.url.pathname === "/v1/notifications/bulk" || req.url.pathname === "/v1/notifications/archive-all") {
      return json({ changed: req.body?.ids?.length ?? 4, counts: { unread: req.body?.ids?.length ?? 0, unseen: 0, total: 9 } });
    }
    return json(note("n/1"));
  });
  inboxService(r);
  const rt = client(r);
  const store = notificationsStore(rt);
  assert.equal((await store.markRead("n/1")).id, "n/1", "the notification as the server answers it");
  await store.markUnread("n/1");
  await store.markAllRead();
  await store.markAllSeen();
  await store.archive("n/1");
  await store.unarchive("n/1");
  assert.deepEqual(await store.archiveAll(), { changed: 4, counts: { unread: 0, unseen: 0, total: 9 } });
  await store.archiveAll({ status: "read" });
  assert.equal(await store.remove("n/1"), undefined, "204: no body to parse");
  await store.delete("n/2");
  const many = Array.from({ length: 150 }, (_, i) => `id${i}`);
  assert.deepEqual(await store.bulk(many, "archive"), { changed: 150, counts: { unread: 50, unseen: 0, total: 9 } },
    "in requests of at most 100 ids, summed; the counts after the last");
  assert.deepEqual(await store.bulk([], "read"), { changed: 0 });
  await store.snooze("n/1", new Date(Date.UTC(2026, 11, 3, 12, 0, 10)));
  await store.snooze("n/1", "2026-12-03T13:00:00+01:00");
  await store.unsnooze("n/1");
  await store.act("n/1", "ap prove");
  const sent = r.service.requests.filter((q) => q.method !== "GET" && q.url.pathname !== "/v1/tickets")
    .map((q) => [q.method, q.url.pathname, q.body]);
  assert.deepEqual(sent, [
    ["POST", "/v1/notifications/n%2F1/read", undefined],
    ["POST", "/v1/notifications/n%2F1/unread", undefined],
    ["POST", "/v1/notifications/read-all", undefined],
    ["POST", "/v1/notifications/seen-all", undefined],
    ["POST", "/v1/notifications/n%2F1/archive", undefined],
    ["POST", "/v1/notifications/n%2F1/unarchive", undefined],
    ["POST", "/v1/notifications/archive-all", undefined],
    ["POST", "/v1/notifications/archive-all", { status: "read" }],
    ["DELETE", "/v1/notifications/n%2F1", undefined],
    ["DELETE", "/v1/notifications/n%2F2", undefined],
    ["POST", "/v1/notifications/bulk", { ids: many.slice(0, 100), action: "archive" }],
    ["POST", "/v1/notifications/bulk", { ids: many.slice(100), action: "archive" }],
    ["POST", "/v1/notifications/n%2F1/snooze", { until: "2026-12-03T12:00:10.000Z" }],
    ["POST", "/v1/notifications/n%2F1/snooze", { until: "2026-12-03T13:00:00+01:00" }],
    ["POST", "/v1/notifications/n%2F1/unsnooze", undefined],
    ["POST", "/v1/notifications/n%2F1/actions/ap%20prove", undefined],
  ]);
  const json_ = r.service.requests.find((q) => q.url.pathname === "/v1/notifications/bulk")!;
  assert.equal(json_.headers["Content-Type"], "application/json");
  rt.close();
});

test("the service's refusals reach the caller: a second action is a 409, an unknown one a 404", async () => {
  const r = rig();
  r.service.routes.push((req) => {
    if (req.url.pathname === "/v1/notifications/a/actions/approve") return json({ code: "conflict", message: "an action was already taken" }, 409);
    if (req.url.pathname === "/v1/notifications/a/actions/nope") return json({ code: "not_found", message: "no such action" }, 404);
    if (req.url.pathname === "/v1/notifications/a/snooze") return json({ detail: [{ msg: "in the past" }] }, 422);
    return undefined;
  });
  const store = notificationsStore(client(r));
  await assert.rejects(store.act("a", "approve"), { status: 409, code: "conflict", message: "an action was already taken" });
  await assert.rejects(store.act("a", "nope"), { status: 404, code: "not_found" });
  await assert.rejects(store.snooze("a", "2000-01-01T00:00:00Z"), { status: 422 });
});

test("a view: status snoozed and tags (repeated) in the list's query; setFilter fetches the other view", async () => {
  const r = rig();
  const lists = inboxService(r, () => [note("t", { tags: ["a", "b"], snoozed_until: "x" })]);
  const { store, push } = await live(r, { status: "snoozed", tags: ["a", "b c"], limit: 5 });
  assert.equal(lists.at(-1)!.url.search, "?status=snoozed&limit=5&tag=a&tag=b+c");
  assert.deepEqual(store.get().filter, { status: "snoozed", tags: ["a", "b c"], category: null });
  await store.setFilter({ tags: ["deploy"] });
  assert.equal(lists.at(-1)!.url.search, "?status=all&limit=5&tag=deploy");
  assert.deepEqual(store.get().filter, { status: "all", tags: ["deploy"], category: null });
  push(event("notification.created", { notification: note("other", { created_at: at(9) }), ...counts(2) }));
  assert.deepEqual(ids(store.get()), ["t"], "not tagged deploy: not in this view; the badge still follows");
  assert.equal(store.get().unread, 2);
  await store.setFilter({ category: "billing" });
  assert.equal(lists.at(-1)!.url.search, "?status=all&limit=5&category=billing");
});

test("a view changed while a fetch is in flight: the older answer is dropped", async () => {
  const r = rig();
  const waiting: (() => void)[] = [];
  r.service.routes.push((req) => {
    if (req.url.pathname === "/v1/notifications/counts") return json({ unread: 0, unseen: 0, total: 0 });
    if (req.url.pathname !== "/v1/notifications") return undefined;
    const tag = req.url.searchParams.get("tag");
    const page = json({ items: [note(tag ?? "untagged", { tags: tag ? [tag] : [] })], next_cursor: null });
    return new Promise((resolve) => waiting.push(() => resolve(page)));
  });
  const { store } = await live(r);
  const changed = store.setFilter({ tags: ["x"] });
  waiting.shift()!(); // the first view's answer
  await flush();
  assert.deepEqual(ids(store.get()), [], "the untagged page never shows in the tagged view");
  waiting.shift()!();
  await changed;
  assert.deepEqual(ids(store.get()), ["x"]);
  assert.equal(store.get().loading, false);
});

test("events that cannot be applied exactly refetch, one fetch at a time however many arrive", async () => {
  const r = rig();
  let inbox = [note("b"), note("a")];
  const lists = inboxService(r, () => inbox, () => ({ unread: inbox.length, unseen: inbox.length, total: inbox.length }));
  const { store, push } = await live(r);
  assert.equal(lists.length, 1);
  inbox = [];
  push(event("notification.updated", { change: "archived", all: true, ...counts(0, 0, 0) }));
  assert.equal(store.get().unread, 0, "the counts at once");
  await flush();
  assert.equal(lists.length, 2);
  assert.deepEqual(ids(store.get()), []);
  // a bulk unarchive of 50 (ids it does not hold): the page is fetched twice at most
  inbox = Array.from({ length: 50 }, (_, i) => note(`u${String(i).padStart(2, "0")}`));
  for (let i = 0; i < 50; i++) push(event("notification.updated", { change: "unarchived", ids: [`u${i}`], ...counts(i + 1) }));
  await flush();
  assert.ok(lists.length <= 4, `${lists.length - 2} fetches for 50 events`);
  assert.equal(store.get().items.length, 20);
  assert.equal(store.get().unread, 50);
});

test("two tabs of one user apply the same events to the same list and badge", async () => {
  const tabs = await Promise.all([rig(), rig()].map(async (r) => {
    inboxService(r, () => [note("a", { created_at: at(1) })], () => ({ unread: 1, unseen: 1, total: 1 }));
    return live(r);
  }));
  const a = note("a", { created_at: at(1), actions: [{ id: "ok", label: "OK" }], tags: ["x"] });
  const events = [
    event("notification.created", { notification: note("b", { created_at: at(2), tags: ["x"] }), ...counts(2, 2, 2) }),
    event("notification.updated", { change: "acted", ids: ["a"], notification: { ...a, action_taken: "ok", read_at: "t" }, ...counts(1, 1, 2) }),
    event("notification.updated", { change: "snoozed", ids: ["b"], notification: note("b", { created_at: at(2), snoozed_until: "s" }), ...counts(0, 0, 1) }),
    event("notification.unsnoozed", { ids: ["b"], notification: note("b", { created_at: at(2) }), ...counts(1, 1, 2) }),
    event("notification.deleted", { id: "a", ids: ["a"], ...counts(1, 1, 1) }),
  ];
  for (const e of events) for (const tab of tabs) tab.push(e);
  const [one, two] = tabs.map((t) => t.store.get());
  assert.deepEqual(one.items, two.items);
  assert.deepEqual(ids(one), ["b"]);
  assert.deepEqual(one.counts, { unread: 1, unseen: 1, total: 1 });
  for (const t of tabs) t.rt.close();
});

test("events of other channels, and other event types, leave the store alone", async () => {
  const r = rig();
  inboxService(r, () => [note("a")]);
  const { store, push } = await live(r);
  const before = store.get();
  push(ev("900-0", "repository:r1", { type: "notification.deleted", data: { id: "a" } }));
  push(ev("901-0", "user:u1", { type: "presence.join", data: { id: "a" } }));
  assert.equal(store.get(), before);
});

/**
 * The notification inbox: one page of the user's notifications (a view: a status, tags, a
 * category) and the badge's counts, the same in every tab. The only store that fetches and then
 * merges events into what it fetched, hence its own module.
 *
 * Every change, made in this tab or another, arrives as a `notification.*` event on `user:<sub>`
 * carrying the user's exact counts; the store applies it to its page and takes the counts as they
 * are (no local arithmetic where the event has them). Where an event cannot be applied exactly
 * (an `all: true` archive, an id it does not hold entering the view, the page running short while
 * the server has more) the page is fetched again, at most one fetch at a time.
 */

import type { RealtimeClient } from "../client.js";
import type { RealtimeEvent } from "../types.js";
import { createStore, type Store } from "./store.js";

/** One of a notification's buttons (contract section 10): at most 2, the first is the primary. */
export interface NotificationAction {
  id: string;
  label: string;
  url?: string | null;
}

/** A stored notification (contract sections 7 and 10). */
export interface Notification {
  id: string;
  type: string;
  category: string;
  title: string;
  message: string;
  action_url: string | null;
  data: Record<string, unknown>;
  created_at: string;
  seen_at: string | null;
  read_at: string | null;
  archived_at: string | null;
  actions: NotificationAction[];
  tags: string[];
  /** The id of the action taken (at most one per notification), and when. */
  action_taken: string | null;
  acted_at: string | null;
  /** Set while snoozed: listed only under `status: "snoozed"`, counted nowhere. */
  snoozed_until: string | null;
  [field: string]: unknown;
}

/** `GET /v1/notifications/counts`, and what every `notification.*` event carries. */
export interface NotificationCounts {
  unread: number;
  unseen: number;
  /** Every notification in the inbox (neither archived, snoozed nor deleted). */
  total: number;
}

/** `all`: the inbox (neither archived nor snoozed); `unread`, `unseen`: of the inbox. */
export type NotificationStatus = "all" | "unread" | "unseen" | "archived" | "snoozed";

/** Which notifications a store shows: `tags` must all match. */
export interface NotificationFilter {
  status?: NotificationStatus;
  tags?: string[];
  category?: string | null;
}

export type BulkAction = "read" | "unread" | "archive" | "unarchive" | "delete";

/** What `archiveAll` and `bulk` answer: how many changed, and the counts after. */
export interface Changed {
  changed: number;
  counts?: NotificationCounts;
}

export interface NotificationsState {
  /** The view's first page, newest first (at most `limit`). */
  items: Notification[];
  /** The unread badge (`counts.unread`). */
  unread: number;
  counts: NotificationCounts;
  filter: Required<NotificationFilter>;
  /** The server has more of this view than `items`. */
  hasMore: boolean;
  loading: boolean;
  error: string | null;
}

export interface NotificationsStore extends Store<NotificationsState> {
  /** Fetch the page and the counts again. */
  refresh(): Promise<void>;
  /** Show another view (a status, tags, a category): fetched at once; omitted fields are reset. */
  setFilter(filter: NotificationFilter): Promise<void>;
  markRead(id: string): Promise<Notification>;
  markUnread(id: string): Promise<Notification>;
  markAllRead(): Promise<void>;
  markAllSeen(): Promise<void>;
  archive(id: string): Promise<Notification>;
  unarchive(id: string): Promise<Notification>;
  /** Archive the whole inbox, or with `{ status: "read" }` only what was read. */
  archiveAll(options?: { status?: "read" }): Promise<Changed>;
  /** Delete for good (`DELETE /v1/notifications/{id}`); `delete` is the same. */
  remove(id: string): Promise<void>;
  delete(id: string): Promise<void>;
  /** One action on many notifications; more than 100 ids go in several requests. */
  bulk(ids: string[], action: BulkAction): Promise<Changed>;
  /** Out of every list and count until `until` (a Date or an ISO 8601 time, judged by the
   * server's clock: in the past or more than 90 days ahead is a 422), then back as unread. */
  snooze(id: string, until: Date | string): Promise<Notification>;
  unsnooze(id: string): Promise<Notification>;
  /** Take one of the notification's actions (recorded, marks it read; a second one is a 409). */
  act(id: string, actionId: string): Promise<Notification>;
}

export interface NotificationsOptions extends NotificationFilter {
  /** The page's size (default 20, at most 100). */
  limit?: number;
}

const BULK_MAX = 100;
const NO_COUNTS: NotificationCounts = { unread: 0, unseen: 0, total: 0 };

/** The filter with every field present. */
export function notificationFilter(filter: NotificationFilter = {}): Required<NotificationFilter> {
  return { status: filter.status ?? "all", tags: [...(filter.tags ?? [])], category: filter.category ?? null };
}

/** The state of a store before its first fetch. */
export function initialNotificationsState(filter: NotificationFilter = {}, loading = true): NotificationsState {
  return { items: [], unread: 0, counts: NO_COUNTS, filter: notificationFilter(filter), hasMore: false, loading, error: null };
}

/**
 * The user's notifications of one view and the counts, kept current by the `notification.*`
 * events on `user:<sub>`, so every tab shows the same list and badge. Fetched when it starts, on
 * `setFilter`, after a `reset` and where an event says "refetch"; events that arrive during a
 * fetch are applied on top of it.
 */
export function notificationsStore(client: RealtimeClient, options: NotificationsOptions = {}): NotificationsStore {
  const limit = Math.min(Math.max(1, options.limit ?? 20), 100);
  let filter = notificationFilter(options);
  let refresh: () => Promise<void> = async () => {};
  let refetch: () => void = () => {};
  // Before the store has started (no listener yet) a new filter is only remembered.
  const remember = async (next: Required<NotificationFilter>) => void (filter = next);
  let setView: (next: Required<NotificationFilter>) => Promise<void> = remember;
  const store = createStore<NotificationsState>(initialNotificationsState(filter), (set, get) => {
    let buffered: RealtimeEvent[] | null = null; // events seen while a fetch is in flight
    let stopped = false;
    let generation = 0; // a new filter makes the fetch in flight worthless
    let inFlight: Promise<void> | null = null;
    let again = false; // asked for another fetch while one is in flight

    const fetchOnce = async (): Promise<void> => {
      const mine = generation;
      const view = filter;
      buffered = [];
      set({ ...get(), filter: view, loading: true });
      try {
        const [page, counts] = await Promise.all([
          client.request<{ items: Notification[]; next_cursor: string | null }>(listPath(view, limit)),
          client.request<NotificationCounts>("/v1/notifications/counts"),
        ]);
        if (stopped || mine !== generation) return;
        let next: NotificationsState = {
          items: page.items, unread: counts.unread, counts: { ...NO_COUNTS, ...counts }, filter: view,
          hasMore: page.next_cursor != null, loading: false, error: null,
        };
        for (const event of buffered ?? []) next = reduce(next, event, limit).state;
        set(next);
      } catch (error) {
        if (!stopped && mine === generation) set({ ...get(), loading: false, error: String((error as Error)?.message ?? error) });
      } finally {
        if (mine === generation) buffered = null;
      }
    };
    const run = (): Promise<void> => {
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
    setView = (next) => {
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
      client.on("event", (event) => {
        if (!event.type.startsWith("notification.") || !event.channel.startsWith("user:")) return;
        if (buffered) buffered.push(event);
        const { state, refetch: again } = reduce(get(), event, limit);
        set(state);
        if (again) refetch();
      }),
      client.on("reset", () => refetch()),
    ];
    void run();
    return () => {
      stopped = true;
      generation++;
      setView = remember;
      off.forEach((f) => f());
    };
  });
  const path = (id: string, tail = "") => `/v1/notifications/${encodeURIComponent(id)}${tail}`;
  const post = <T>(url: string, body?: unknown) => client.request<T>(url, { method: "POST", body });
  const remove = async (id: string) => void (await client.request(path(id), { method: "DELETE" }));
  // Nothing is guessed locally: the event each call causes updates this tab and every other.
  return {
    ...store,
    refresh: () => refresh(),
    setFilter: (next) => setView(notificationFilter(next)),
    markRead: (id) => post(path(id, "/read")),
    markUnread: (id) => post(path(id, "/unread")),
    markAllRead: async () => void (await post("/v1/notifications/read-all")),
    markAllSeen: async () => void (await post("/v1/notifications/seen-all")),
    archive: (id) => post(path(id, "/archive")),
    unarchive: (id) => post(path(id, "/unarchive")),
    archiveAll: (opts = {}) => post("/v1/notifications/archive-all", opts.status ? { status: opts.status } : undefined),
    remove,
    delete: remove,
    bulk: async (ids, action) => {
      const total: Changed = { changed: 0 };
      for (let i = 0; i < ids.length; i += BULK_MAX) {
        const answer = await post<Changed>("/v1/notifications/bulk", { ids: ids.slice(i, i + BULK_MAX), action });
        total.changed += answer.changed;
        if (answer.counts) total.counts = answer.counts; // the last request's: the counts after all of them
      }
      return total;
    },
    snooze: (id, until) => post(path(id, "/snooze"), { until: typeof until === "string" ? until : until.toISOString() }),
    unsnooze: (id) => post(path(id, "/unsnooze")),
    act: (id, actionId) => post(path(id, `/actions/${encodeURIComponent(actionId)}`)),
  };
}

function listPath(filter: Required<NotificationFilter>, limit: number): string {
  const query = new URLSearchParams({ status: filter.status, limit: String(limit) });
  for (const tag of filter.tags) query.append("tag", tag);
  if (filter.category) query.set("category", filter.category);
  return `/v1/notifications?${query}`;
}

/** Whether `n` belongs to the view `filter` (what the server's list would answer). */
export function inNotificationView(n: Notification, filter: Required<NotificationFilter>): boolean {
  const snoozed = n.snoozed_until != null;
  if (n.deleted_at) return false;
  if (filter.status === "snoozed") {
    if (!snoozed) return false;
  } else if (snoozed) {
    return false;
  } else if (filter.status === "archived") {
    if (!n.archived_at) return false;
  } else if (n.archived_at || (filter.status === "unread" && n.read_at) || (filter.status === "unseen" && n.seen_at)) {
    return false;
  }
  if (filter.category && n.category !== filter.category) return false;
  const tags = n.tags ?? [];
  return filter.tags.every((t) => tags.includes(t));
}

/** Newest first, as the server pages: by `created_at`, then by id. */
function newer(a: Notification, b: Notification): boolean {
  const ta = Date.parse(a.created_at), tb = Date.parse(b.created_at);
  return ta !== tb ? ta > tb : a.id > b.id;
}

/** Which views a change can bring a notification into (one the page does not hold: refetch). */
const ENTERS: Record<string, NotificationStatus[]> = {
  read: [],
  seen: [],
  unread: ["unread"],
  archived: ["archived"],
  unarchived: ["all", "unread", "unseen"],
  snoozed: ["snoozed"],
  unsnoozed: ["all", "unread", "unseen"],
  acted: [],
};

/** What an ids-only event (a bulk change) does to a notification the page holds; null: unknown. */
function patch(n: Notification, change: string, at: string, data: Record<string, any>): Notification | null {
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
      return typeof data.action_id === "string"
        ? { ...n, action_taken: data.action_id, acted_at: at, read_at: n.read_at ?? at, seen_at: n.seen_at ?? at }
        : null;
    default:
      return null; // a change this client does not know
  }
}

interface Reduced {
  state: NotificationsState;
  /** The event could not be applied exactly: fetch the page again. */
  refetch: boolean;
}

/** One `notification.*` event applied to a view's state (pure; `refetch` when it cannot be exact). */
function reduce(state: NotificationsState, event: RealtimeEvent, limit: number): Reduced {
  const data: Record<string, any> = event.data ?? {};
  const filter = state.filter ?? notificationFilter();
  const at: string = data.at ?? event.ts;
  let items = state.items;
  let hasMore = state.hasMore ?? false;
  let refetch = false;
  const before = items.length;

  /** Put `n` where the view wants it: replaced, moved in, or out. */
  const upsert = (n: Notification) => {
    const rest = items.filter((x) => x.id !== n.id);
    const had = rest.length !== items.length;
    if (!inNotificationView(n, filter)) {
      items = rest;
      return;
    }
    let index = rest.findIndex((x) => newer(n, x));
    if (index === -1) {
      if (!had && (hasMore || rest.length >= limit)) {
        hasMore = true; // beyond the page
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

  const ids: string[] = Array.isArray(data.ids) ? data.ids : data.id != null ? [data.id] : [];
  const change: string = data.change ?? "";
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
      // every unread (unseen) notification of the inbox: exact for the page, nothing enters
      for (const n of items) {
        const next = patch(n, change, at, data);
        if (next && next !== n) upsert(next);
      }
    } else {
      refetch = true; // archive-all (maybe only the read ones), or something new
    }
  } else if (ids.length) {
    const held = new Map(items.map((n) => [n.id, n]));
    for (const id of ids) {
      const n = held.get(id);
      if (!n) {
        if (!ENTERS[change] || ENTERS[change].includes(filter.status)) refetch = true;
        continue;
      }
      const next = patch(n, change, at, data);
      if (next === null) refetch = true;
      else if (next !== n) upsert(next);
    }
  }
  // The page ran short (something left it) while the server has more: fill it up.
  if (items.length < before && hasMore && items.length < limit) refetch = true;

  const counts = eventCounts(data, state.counts ?? { ...NO_COUNTS, unread: state.unread });
  const next: NotificationsState = { ...state, items, hasMore, counts, unread: counts.unread };
  const same = items === state.items && hasMore === state.hasMore && counts.unread === state.unread
    && state.counts && counts.unseen === state.counts.unseen && counts.total === state.counts.total;
  return { state: same ? state : next, refetch };
}

/** The counts an event carries (`counts`, else the older `unread_count` / `unseen_count`). */
function eventCounts(data: Record<string, any>, current: NotificationCounts): NotificationCounts {
  const c = data.counts;
  if (c && typeof c === "object") {
    return {
      unread: typeof c.unread === "number" ? c.unread : current.unread,
      unseen: typeof c.unseen === "number" ? c.unseen : current.unseen,
      total: typeof c.total === "number" ? c.total : current.total,
    };
  }
  return {
    unread: typeof data.unread_count === "number" ? data.unread_count : current.unread,
    unseen: typeof data.unseen_count === "number" ? data.unseen_count : current.unseen,
    total: current.total,
  };
}

/**
 * One `notification.*` event applied to an inbox state: `created`, `read` / `updated` (one
 * notification, ids of a bulk change, or `all`), `deleted`, `unsnoozed`. Pure; where the event
 * cannot be applied exactly (see `notificationEventNeedsRefetch`) the page is left as it was.
 */
export function applyNotificationEvent(state: NotificationsStateLike, event: RealtimeEvent, limit = 20): NotificationsState {
  return reduce(withDefaults(state), event, limit).state;
}

/** Whether `event` leaves `state`'s page inexact, so that it must be fetched again. */
export function notificationEventNeedsRefetch(state: NotificationsStateLike, event: RealtimeEvent, limit = 20): boolean {
  return reduce(withDefaults(state), event, limit).refetch;
}

/** A state as `applyNotificationEvent` takes it: without a view, the inbox (`status: "all"`). */
export type NotificationsStateLike = Omit<NotificationsState, "counts" | "filter" | "hasMore">
  & Partial<Pick<NotificationsState, "counts" | "filter" | "hasMore">>;

function withDefaults(state: NotificationsStateLike): NotificationsState {
  return {
    ...state,
    filter: state.filter ?? notificationFilter(),
    counts: state.counts ?? { ...NO_COUNTS, unread: state.unread },
    hasMore: state.hasMore ?? false,
  };
}

/**
 * Small observable stores over a client: the notification inbox, an analysis's progress, the
 * latest event of a channel, and who is viewing a channel. The React hooks (./react.ts) are thin
 * wrappers around them; a page without React uses them directly. A store starts when its first
 * listener subscribes and stops with its last one (`subscribe`/`get` suit useSyncExternalStore).
 */

import type { PresentUser, RealtimeClient, RealtimeEvent } from "./index.js";

export interface Store<S> {
  get(): S;
  subscribe(listener: () => void): () => void;
}

function createStore<S>(initial: S, start: (set: (next: S) => void, get: () => S) => () => void): Store<S> {
  let state = initial;
  let stop: (() => void) | null = null;
  const listeners = new Set<() => void>();
  const set = (next: S) => {
    if (next === state) return;
    state = next;
    for (const listener of [...listeners]) listener();
  };
  return {
    get: () => state,
    subscribe(listener) {
      listeners.add(listener);
      if (listeners.size === 1) stop = start(set, () => state);
      return () => {
        listeners.delete(listener);
        if (listeners.size === 0 && stop) {
          stop();
          stop = null;
        }
      };
    },
  };
}

// --- notifications --------------------------------------------------------------------------

/** A stored notification (contract section 7). */
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
  [field: string]: unknown;
}

export interface NotificationsState {
  items: Notification[];
  unread: number;
  loading: boolean;
  error: string | null;
}

export interface NotificationsStore extends Store<NotificationsState> {
  markRead(id: string): Promise<void>;
  markAllRead(): Promise<void>;
  refresh(): Promise<void>;
}

/**
 * The user's newest notifications and unread count, kept current by the `notification.*` events
 * on `user:<sub>` (which carry exact counts), so every tab shows the same badge. Fetched when it
 * starts and again after a `reset`; events that arrive during a fetch are applied on top of it.
 */
export function notificationsStore(client: RealtimeClient, options: { limit?: number } = {}): NotificationsStore {
  const limit = options.limit ?? 20;
  let refresh: () => Promise<void> = async () => {};
  const store = createStore<NotificationsState>({ items: [], unread: 0, loading: true, error: null }, (set, get) => {
    let buffered: RealtimeEvent[] | null = null; // events seen while a fetch is in flight
    let stopped = false;
    refresh = async () => {
      buffered = [];
      set({ ...get(), loading: true });
      try {
        const [page, count] = await Promise.all([
          client.request<{ items: Notification[] }>(`/v1/notifications?status=all&limit=${limit}`),
          client.request<{ count: number }>("/v1/notifications/unread-count"),
        ]);
        if (stopped) return;
        let next: NotificationsState = { items: page.items, unread: count.count, loading: false, error: null };
        for (const event of buffered ?? []) next = applyNotificationEvent(next, event, limit);
        set(next);
      } catch (error) {
        if (!stopped) set({ ...get(), loading: false, error: String((error as Error)?.message ?? error) });
      } finally {
        buffered = null;
      }
    };
    const off = [
      client.on("event", (event) => {
        if (!event.type.startsWith("notification.") || !event.channel.startsWith("user:")) return;
        if (buffered) buffered.push(event);
        set(applyNotificationEvent(get(), event, limit));
      }),
      client.on("reset", () => void refresh()),
    ];
    void refresh();
    return () => {
      stopped = true;
      off.forEach((f) => f());
    };
  });
  return {
    ...store,
    refresh: () => refresh(),
    // The answer and the event it causes both update every open tab; no optimistic guess needed.
    markRead: async (id) => void (await client.request(`/v1/notifications/${encodeURIComponent(id)}/read`, { method: "POST" })),
    markAllRead: async () => void (await client.request("/v1/notifications/read-all", { method: "POST" })),
  };
}

/** One `notification.created` / `.read` / `.updated` event applied to the inbox state. */
export function applyNotificationEvent(state: NotificationsState, event: RealtimeEvent, limit = 20): NotificationsState {
  const data = event.data ?? {};
  let items = state.items;
  const changed: Notification | undefined = data.notification;
  if (event.type === "notification.created" && changed) {
    items = [changed, ...items.filter((n) => n.id !== changed.id)].slice(0, limit);
  } else if (changed) {
    items = changed.archived_at
      ? items.filter((n) => n.id !== changed.id)
      : items.map((n) => (n.id === changed.id ? changed : n));
  } else if (data.all && data.change === "read") {
    items = items.map((n) => (n.read_at ? n : { ...n, read_at: data.at ?? event.ts, seen_at: n.seen_at ?? data.at ?? event.ts }));
  } else if (data.all && data.change === "seen") {
    items = items.map((n) => (n.seen_at ? n : { ...n, seen_at: data.at ?? event.ts }));
  }
  const unread = typeof data.unread_count === "number" ? data.unread_count : state.unread;
  return { ...state, items, unread };
}

// --- analysis progress, job status, a channel's latest event ---------------------------------

export interface AnalysisProgress {
  analysisId: string;
  /** 0-100, or null before the first event (or snapshot). */
  progress: number | null;
  data: Record<string, unknown> | null;
}

/** `analysis.progress` on `analysis:<id>`: never moves backwards (nor does the server). */
export function analysisStore(client: RealtimeClient, analysisId: string): Store<AnalysisProgress> {
  return createStore<AnalysisProgress>({ analysisId, progress: null, data: null }, (set, get) =>
    client.subscribe(`analysis:${analysisId}`, (event) => {
      if (event.type !== "analysis.progress" || typeof event.data?.progress !== "number") return;
      const current = get().progress;
      if (current !== null && event.data.progress < current) return; // a replay older than a snapshot
      set({ analysisId, progress: event.data.progress, data: event.data });
    }),
  );
}

/** The latest event of each type on a channel (e.g. `refactoring.status` on `job:<id>`). */
export function channelStore(client: RealtimeClient, channel: string): Store<Record<string, RealtimeEvent>> {
  return createStore<Record<string, RealtimeEvent>>({}, (set, get) =>
    client.subscribe(channel, (event) => set({ ...get(), [event.type]: event })),
  );
}

/** Who is viewing `channel` (a presence-tracked namespace such as `repository`): fetched on
 * every (re)connect, then kept by the `presence.join` / `presence.leave` events. The user is
 * listed as soon as the list is fetched: subscribed, they are viewing, even when the fetch
 * overtook the server's registration of their connection. */
export function presenceStore(client: RealtimeClient, channel: string): Store<PresentUser[]> {
  return createStore<PresentUser[]>([], (set, get) => {
    let stopped = false;
    const load = () =>
      client.presence(channel).then(
        (users) => {
          if (stopped) return;
          const me = client.user;
          set(!me || users.some((u) => u.user_id === me) ? users : [...users, { user_id: me, connections: 1, since: new Date().toISOString() }]);
        },
        () => {}, // the next open tries again
      );
    const off = [
      client.subscribe(channel, (event) => {
        const user = event.data?.user_id;
        if (event.type === "presence.join" && !get().some((u) => u.user_id === user)) {
          set([...get(), { user_id: user, connections: 1, since: event.ts }]);
        } else if (event.type === "presence.leave") {
          set(get().filter((u) => u.user_id !== user));
        }
      }),
      client.on("open", load),
      client.on("reset", load),
    ];
    if (client.state === "open") load();
    return () => {
      stopped = true;
      off.forEach((f) => f());
    };
  });
}

/**
 * The notification inbox: the newest notifications and the unread badge, the same in every tab.
 * The only store that fetches and then merges events into what it fetched, hence its own module.
 */

import type { RealtimeClient } from "../client.js";
import type { RealtimeEvent } from "../types.js";
import { createStore, type Store } from "./store.js";


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

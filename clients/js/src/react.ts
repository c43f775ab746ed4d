/**
 * React hooks over the client (React is a peer dependency; import from "@forge-factory/realtime/react").
 *
 *     const rt = useMemo(() => connect({ getToken }), []);
 *     const { items, unread, markRead } = useNotifications(rt);
 *     const { progress } = useAnalysisProgress(rt, "a1");
 *     const last = useChannel(rt, "repository:r1", (event) => console.log(event));
 */

import { useEffect, useMemo, useRef, useState, useSyncExternalStore } from "react";

import type { RealtimeClient, RealtimeEvent } from "./index.js";
import {
  analysisStore,
  initialNotificationsState,
  notificationsStore,
  type AnalysisProgress,
  type NotificationsOptions,
  type NotificationsState,
  type NotificationsStore,
  type Store,
} from "./stores.js";

function useStore<S>(store: Store<S>): S {
  return useSyncExternalStore(store.subscribe, store.get, store.get);
}

/** Subscribes while mounted; calls `handler` (the latest one passed) for each event and returns
 * the last event received. */
export function useChannel<T = any>(
  client: RealtimeClient | null,
  channel: string | null,
  handler?: (event: RealtimeEvent<T>) => void,
): RealtimeEvent<T> | null {
  const [last, setLast] = useState<RealtimeEvent<T> | null>(null);
  const latest = useRef(handler);
  latest.current = handler;
  useEffect(() => {
    setLast(null);
    if (!client || !channel) return;
    return client.subscribe(channel, (event) => {
      latest.current?.(event);
      setLast(event);
    });
  }, [client, channel]);
  return last;
}

const idle = <S,>(state: S): Store<S> => ({ get: () => state, subscribe: () => () => {} });
const NO_INBOX = idle<NotificationsState>(initialNotificationsState({}, false));

/** What `useNotifications` returns: the state and the store's actions. */
export type UseNotifications = NotificationsState & Omit<NotificationsStore, "get" | "subscribe">;

/** The user's notifications (one view: `status`, `tags`, `category`) and badge, in sync across tabs. */
export function useNotifications(client: RealtimeClient | null, options: NotificationsOptions = {}): UseNotifications {
  const tags = (options.tags ?? []).join("\n");
  const store = useMemo(
    () => (client ? notificationsStore(client, { limit: options.limit, status: options.status, category: options.category, tags: tags ? tags.split("\n") : [] }) : null),
    [client, options.limit, options.status, options.category, tags],
  );
  const state = useStore<NotificationsState>(store ?? NO_INBOX);
  return { ...state, ...(store ? actions(store) : NO_ACTIONS) };
}

function actions(store: NotificationsStore): Omit<NotificationsStore, "get" | "subscribe"> {
  const { get: _get, subscribe: _subscribe, ...rest } = store;
  return rest;
}

const offline = async (): Promise<never> => {
  throw new Error("no client");
};
const NO_ACTIONS: Omit<NotificationsStore, "get" | "subscribe"> = {
  refresh: async () => {}, setFilter: async () => {}, markRead: offline, markUnread: offline, markAllRead: async () => {},
  markAllSeen: async () => {}, archive: offline, unarchive: offline, archiveAll: offline, remove: offline, delete: offline,
  bulk: offline, snooze: offline, unsnooze: offline, act: offline,
};

/** `analysis.progress` of one analysis (its live-state snapshot first, then each update). */
export function useAnalysisProgress(client: RealtimeClient | null, analysisId: string | null): AnalysisProgress {
  const store = useMemo(
    () => (client && analysisId ? analysisStore(client, analysisId) : idle<AnalysisProgress>({ analysisId: analysisId ?? "", progress: null, data: null })),
    [client, analysisId],
  );
  return useStore(store);
}

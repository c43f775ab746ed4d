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
  notificationsStore,
  type AnalysisProgress,
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
const NO_INBOX = idle<NotificationsState>({ items: [], unread: 0, loading: false, error: null });

/** The user's notifications and unread badge, in sync across tabs. */
export function useNotifications(
  client: RealtimeClient | null,
  options: { limit?: number } = {},
): NotificationsState & Pick<NotificationsStore, "markRead" | "markAllRead" | "refresh"> {
  const store = useMemo(() => (client ? notificationsStore(client, { limit: options.limit }) : null), [client, options.limit]);
  const state = useStore<NotificationsState>(store ?? NO_INBOX);
  const none = async () => {};
  return {
    ...state,
    markRead: store ? store.markRead : none,
    markAllRead: store ? store.markAllRead : none,
    refresh: store ? store.refresh : none,
  };
}

/** `analysis.progress` of one analysis (its live-state snapshot first, then each update). */
export function useAnalysisProgress(client: RealtimeClient | null, analysisId: string | null): AnalysisProgress {
  const store = useMemo(
    () => (client && analysisId ? analysisStore(client, analysisId) : idle<AnalysisProgress>({ analysisId: analysisId ?? "", progress: null, data: null })),
    [client, analysisId],
  );
  return useStore(store);
}

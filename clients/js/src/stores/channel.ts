/**
 * Stores over one channel's events: an analysis's progress, and the latest event of each type
 * on any channel (a job's status, for example). Nothing fetched: the live-state snapshot the
 * server sends on subscribing gives the starting value.
 */

import type { RealtimeClient } from "../client.js";
import type { RealtimeEvent } from "../types.js";
import { createStore, type Store } from "./store.js";

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

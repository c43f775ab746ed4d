/**
 * The browser's side of `Env`: the real WebSocket, fetch, timers, clock and online/offline
 * events. Kept apart so that the client only ever sees `Env`, which tests replace with fakes.
 */

import type { Env } from "./types.js";

export function defaultEnv(): Env {
  const g = globalThis as any;
  return {
    WebSocket: g.WebSocket,
    fetch: (url, init) => g.fetch(url, init),
    setTimeout: (fn, ms) => g.setTimeout(fn, ms),
    clearTimeout: (handle) => g.clearTimeout(handle),
    now: () => Date.now(),
    random: Math.random,
    online: () => g.navigator?.onLine !== false,
    watchConnectivity(listener) {
      if (typeof g.addEventListener !== "function") return () => {};
      const online = () => listener(true);
      const offline = () => listener(false);
      g.addEventListener("online", online);
      g.addEventListener("offline", offline);
      return () => {
        g.removeEventListener("online", online);
        g.removeEventListener("offline", offline);
      };
    },
  };
}

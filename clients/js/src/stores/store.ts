/**
 * The one store shape every helper shares: `get` and `subscribe` (as useSyncExternalStore wants
 * them), started by the first listener and stopped with the last, so an unused store holds no
 * subscription on the client.
 */

export interface Store<S> {
  get(): S;
  subscribe(listener: () => void): () => void;
}

export function createStore<S>(initial: S, start: (set: (next: S) => void, get: () => S) => () => void): Store<S> {
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

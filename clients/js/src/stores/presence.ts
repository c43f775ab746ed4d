/**
 * Who is viewing a channel: a list fetched from the presence API on every (re)connect and kept
 * current by the `presence.join` / `presence.leave` events in between.
 */

import type { RealtimeClient } from "../client.js";
import type { PresentUser } from "../types.js";
import { createStore, type Store } from "./store.js";

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

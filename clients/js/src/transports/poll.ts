/**
 * The long-polling transport, the last resort where proxies let neither a WebSocket nor a stream
 * through: one request at a time from the cursor the server returns, each carrying the current
 * token and channels, so it needs neither a refresh nor a reconnect to change them.
 */

import type { RealtimeEvent } from "../types.js";
import { type Closed, type Link, type LinkContext, type Sink, query, refusal } from "./link.js";

export function openPoll(ctx: LinkContext, sink: Sink): Link {
  let finished = false;
  let request: AbortController | null = null;
  let resyncing = false;
  const link: Link = {
    channels: new Set(ctx.channels),
    close() {
      finished = true;
      request?.abort();
    },
    resync() {
      resyncing = true;
      request?.abort();
    },
  };
  const finish = (why: Closed) => {
    if (finished) return;
    finished = true;
    sink.closed(why);
  };
  void (async () => {
    let opened = false;
    while (!finished) {
      const channels = ctx.currentChannels();
      link.channels = new Set(channels);
      request = new AbortController();
      // the first request answers at once (it opens the link); then wait for events
      const wait = opened ? ctx.options.pollTimeout : 0;
      const guard = ctx.env.setTimeout(() => request?.abort(), (wait + 15) * 1000);
      let body: { events: RealtimeEvent[]; cursor: string; reset: boolean };
      try {
        const url = `${ctx.base}/v1/poll` + query({ channels: channels.join(","), since: ctx.cursor(), timeout: wait, client_id: ctx.clientId });
        const response = await ctx.env.fetch(url, {
          headers: { Authorization: `Bearer ${ctx.token()}` },
          cache: "no-store",
          signal: request.signal,
        });
        if (!response.ok) return finish(await refusal(response, ctx.env.now()));
        body = await response.json();
      } catch {
        if (resyncing && !finished) {
          resyncing = false;
          continue;
        }
        return finish({ reason: "network" });
      } finally {
        ctx.env.clearTimeout(guard);
      }
      if (finished) return;
      if (!opened) {
        opened = true;
        sink.open();
      }
      if (body.reset) sink.reset();
      for (const event of body.events) sink.event(event);
      if (body.cursor) sink.cursor(body.cursor);
    }
  })();
  return link;
}

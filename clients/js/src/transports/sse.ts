/**
 * The SSE transport, read with `fetch` (an `EventSource` cannot send headers, only dispatches
 * event names known in advance, and hides the HTTP status). A stream silent for longer than the
 * server's keep-alives is dropped; new channels or a new token mean a new stream from the cursor.
 */

import { SseParser } from "../sse-parser.js";
import { type Closed, type Link, type LinkContext, type Sink, query, refusal } from "./link.js";

export function openSse(ctx: LinkContext, sink: Sink): Link {
  const abort = new AbortController();
  let finished = false;
  let watchdog: unknown;
  const finish = (why: Closed) => {
    ctx.env.clearTimeout(watchdog);
    if (finished) return;
    finished = true;
    sink.closed(why);
  };
  const link: Link = {
    channels: new Set(ctx.channels),
    close() {
      finished = true;
      ctx.env.clearTimeout(watchdog);
      abort.abort();
    },
  };
  const alive = () => {
    ctx.env.clearTimeout(watchdog);
    watchdog = ctx.env.setTimeout(() => {
      abort.abort();
      finish({ reason: "stream went silent" });
    }, ctx.options.idleTimeoutMs);
  };
  const dispatch = (type: string, data: string) => {
    if (type === "reset") return sink.reset();
    let payload: any;
    try {
      payload = JSON.parse(data);
    } catch {
      return;
    }
    if (type === "error") sink.error({ code: payload.code, message: payload.message });
    else sink.event(payload);
  };
  void (async () => {
    let response: Response;
    try {
      const url = `${ctx.base}/v1/sse` + query({ channels: ctx.channels.join(","), since: ctx.since, client_id: ctx.clientId });
      response = await ctx.env.fetch(url, {
        headers: { Accept: "text/event-stream", Authorization: `Bearer ${ctx.token()}` },
        cache: "no-store",
        signal: abort.signal,
      });
    } catch {
      return finish({ reason: "network" });
    }
    if (!response.ok || !(response.headers.get("content-type") ?? "").startsWith("text/event-stream") || !response.body) {
      return finish(response.ok ? { reason: "not an event stream" } : await refusal(response, ctx.env.now()));
    }
    if (finished) return;
    alive();
    sink.open();
    const parser = new SseParser(dispatch);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || finished) break;
        alive();
        parser.push(decoder.decode(value, { stream: true }));
      }
      finish({ reason: "stream ended" });
    } catch {
      finish({ reason: "network" });
    }
  })();
  return link;
}

/**
 * The WebSocket transport: the first choice, and the only one that joins and leaves channels and
 * takes a fresh token in place. A WebSocket cannot send headers, so it authenticates with a
 * one-time ticket (`POST /v1/tickets`) or the token in the query; it pings to notice a dead socket.
 */

import type { ServiceError, WebSocketLike } from "../types.js";
import { type Closed, type Link, type LinkContext, type Sink, query, refusal } from "./link.js";

export function openWebSocket(ctx: LinkContext, sink: Sink): Link {
  let socket: WebSocketLike | null = null;
  let finished = false;
  let lastError: ServiceError | null = null;
  let heard = ctx.env.now();
  let pinger: unknown;
  const finish = (why: Closed) => {
    if (finished) return;
    finished = true;
    ctx.env.clearTimeout(pinger);
    sink.closed(why);
  };
  const send = (frame: object) => {
    if (socket?.readyState === 1) socket.send(JSON.stringify(frame));
  };
  const ping = () => {
    if (ctx.env.now() - heard > 2 * ctx.options.pingIntervalMs) {
      socket?.close();
      return finish({ reason: "no answer to ping" });
    }
    send({ op: "ping" });
    pinger = ctx.env.setTimeout(ping, ctx.options.pingIntervalMs);
  };
  const link: Link = {
    channels: new Set(ctx.channels),
    close() {
      finished = true;
      ctx.env.clearTimeout(pinger);
      socket?.close(1000);
    },
    subscribe(channel) {
      link.channels.add(channel);
      send({ op: "subscribe", channel });
    },
    unsubscribe(channel) {
      link.channels.delete(channel);
      send({ op: "unsubscribe", channel });
    },
    refresh(token) {
      send({ op: "refresh", token });
    },
  };
  void (async () => {
    let credential: Record<string, string>;
    try {
      if (ctx.options.auth === "access_token") {
        credential = { access_token: ctx.token() };
      } else {
        const response = await ctx.env.fetch(`${ctx.base}/v1/tickets`, { method: "POST", headers: { Authorization: `Bearer ${ctx.token()}` } });
        if (!response.ok) return finish(await refusal(response, ctx.env.now()));
        credential = { ticket: (await response.json()).ticket };
      }
    } catch {
      return finish({ reason: "network" });
    }
    if (finished) return;
    const url = ctx.base.replace(/^http/, "ws") + "/v1/ws" +
      query({ ...credential, channels: ctx.channels.join(","), since: ctx.since, client_id: ctx.clientId });
    try {
      socket = new ctx.env.WebSocket(url);
    } catch {
      return finish({ reason: "refused" });
    }
    socket.onopen = () => {
      if (finished) return;
      heard = ctx.env.now();
      pinger = ctx.env.setTimeout(ping, ctx.options.pingIntervalMs);
      sink.open();
    };
    socket.onmessage = (message) => {
      if (finished) return;
      heard = ctx.env.now();
      let frame: any;
      try {
        frame = JSON.parse(String(message.data));
      } catch {
        return;
      }
      if (typeof frame.op !== "string") return sink.event(frame);
      if (frame.op === "reset") sink.reset();
      else if (frame.op === "error") {
        lastError = frame;
        sink.error({
          code: frame.code,
          message: frame.message,
          ...(frame.channel ? { channel: frame.channel } : {}),
          ...(typeof frame.retry_after === "number" ? { retry_after: frame.retry_after } : {}),
        });
      }
      // subscribed / unsubscribed / pong / refreshed / presence need nothing here
    };
    socket.onclose = (event) => {
      // 4001: the token (the next connection asks getToken again); 4400: the request (a bad cursor
      // was reported by the error frame before); 4008: we fell behind; 1013: the server is full or
      // its engine busy (the error frame before, `too_many_connections`, `busy` or `unavailable`,
      // says when to come back in `retry_after`; the close reason carries only the code): the same
      // transport again, after at least that; anything else: the network.
      const refused = event.code === 4001 || event.code === 4400;
      const hint = event.code === 1013 && typeof lastError?.retry_after === "number" && lastError.retry_after >= 0
        ? { retryAfterMs: lastError.retry_after * 1000 }
        : {};
      finish({ reason: lastError?.code ?? (event.reason || "closed"), code: event.code, refused, ...hint });
    };
  })();
  return link;
}

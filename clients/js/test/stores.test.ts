import assert from "node:assert/strict";
import { test } from "node:test";

import { createElement } from "react";
import { renderToString } from "react-dom/server";

import { analysisStore, connect, presenceStore } from "../src/index.js";
import { useAnalysisProgress, useChannel, useNotifications } from "../src/react.js";
import { ev, fakeToken, flush, json, rig } from "./fakes.js";

function client(r: ReturnType<typeof rig>) {
  return connect({ url: "http://rt.test", getToken: () => fakeToken({ sub: "u1", tid: "t1", exp: 1_800_003_600 }), env: r.env, transports: ["ws"] });
}

test("analysisStore follows analysis.progress and ignores a replay older than its snapshot", async () => {
  const r = rig();
  const rt = client(r);
  const store = analysisStore(rt, "a1");
  const off = store.subscribe(() => {});
  await r.clock.advance(0);
  const ws = r.service.socket;
  ws.accept();
  await flush();
  assert.deepEqual(ws.query.get("channels"), "analysis:a1");
  ws.push(ev("90-0", "analysis:a1", { type: "analysis.progress", snapshot: true, data: { progress: 50 } }));
  ws.push(ev("85-0", "analysis:a1", { type: "analysis.progress", data: { progress: 40 } }));
  assert.equal(store.get().progress, 50);
  ws.push(ev("101-0", "analysis:a1", { type: "analysis.progress", data: { progress: 70 } }));
  assert.equal(store.get().progress, 70);
  off();
  assert.deepEqual(ws.sent.filter((f) => f.op === "unsubscribe"), [{ op: "unsubscribe", channel: "analysis:a1" }]);
});

test("presenceStore loads on open and follows joins and leaves", async () => {
  const r = rig();
  r.service.routes.push((req) =>
    req.url.pathname === "/v1/presence/repository%3Ar1"
      ? json({ channel: "repository:r1", users: [{ user_id: "ada", connections: 1, since: "t" }] })
      : undefined,
  );
  const rt = client(r);
  const store = presenceStore(rt, "repository:r1");
  store.subscribe(() => {});
  await r.clock.advance(0);
  r.service.socket.accept();
  await flush();
  assert.deepEqual(store.get().map((u) => u.user_id), ["ada", "u1"], "the user, subscribed, is viewing too");
  r.service.socket.push(ev("101-0", "repository:r1", { type: "presence.join", data: { user_id: "grace" } }));
  r.service.socket.push(ev("102-0", "repository:r1", { type: "presence.join", data: { user_id: "grace" } }));
  assert.deepEqual(store.get().map((u) => u.user_id), ["ada", "u1", "grace"]);
  r.service.socket.push(ev("103-0", "repository:r1", { type: "presence.leave", data: { user_id: "ada" } }));
  assert.deepEqual(store.get().map((u) => u.user_id), ["u1", "grace"]);
});

test("the React hooks render (server side: their initial state) with and without a client", () => {
  const r = rig();
  const rt = client(r);
  function View({ withClient }: { withClient: boolean }) {
    const c = withClient ? rt : null;
    const inbox = useNotifications(c);
    const analysis = useAnalysisProgress(c, "a1");
    const last = useChannel(c, "repository:r1");
    return createElement("p", null, `${inbox.unread}/${inbox.loading}/${analysis.progress}/${last?.id ?? "none"}`);
  }
  assert.equal(renderToString(createElement(View, { withClient: false })), "<p>0/false/null/none</p>");
  assert.equal(renderToString(createElement(View, { withClient: true })), "<p>0/true/null/none</p>");
  rt.close();
});

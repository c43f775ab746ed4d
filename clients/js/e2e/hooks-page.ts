/**
 * A React page using the hooks of ../src/react.ts, for tests/test_browser_e2e.py: the driver
 * bundles it (with React from node_modules) and serves it on the live server's origin, where
 * /demo/token signs in. Plain createElement, so no JSX settings are needed.
 */

import { createElement as h, useMemo } from "react";
import { createRoot } from "react-dom/client";

import { connect } from "../src/index.js";
import { useAnalysisProgress, useChannel, useNotifications } from "../src/react.js";

const params = new URLSearchParams(location.search);
const user = params.get("user") ?? "ada";

async function getToken(): Promise<string> {
  const response = await fetch("/demo/token", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ user }) });
  return (await response.json()).token;
}

function App() {
  const client = useMemo(() => connect({ getToken, transports: params.get("transport") ? [params.get("transport") as "ws"] : undefined }), []);
  const inbox = useNotifications(client);
  const analysis = useAnalysisProgress(client, params.get("analysis") ?? "hooks");
  const last = useChannel(client, "repository:demo");
  return h(
    "main",
    null,
    h("p", { id: "unread" }, inbox.loading ? "loading" : String(inbox.unread)),
    h("ul", { id: "items" }, inbox.items.map((n) =>
      h("li", { key: n.id, "data-id": n.id, "data-read": String(Boolean(n.read_at)), onClick: () => void inbox.markRead(n.id) }, n.title))),
    h("p", { id: "progress" }, analysis.progress === null ? "none" : String(analysis.progress)),
    h("p", { id: "last" }, last ? `${last.type} ${JSON.stringify(last.data)}` : "none"),
  );
}

createRoot(document.getElementById("root")!).render(h(App));

/**
 * The demo page served at /demo (bundled by `make client` into app/static/demo/demo.js).
 * Everything live on it goes through the client in ../src: the connection and its transport,
 * the notification bell, toasts, the analysis and job cards, who is viewing, the event log.
 */

import {
  analysisStore,
  channelStore,
  connect,
  notificationsStore,
  presenceStore,
  type Notification,
  type RealtimeClient,
  type RealtimeEvent,
  type Store,
  type TransportName,
} from "../src/index.js";

const REPOSITORY = "repository:demo"; // presence: who is viewing
const CURRENT_RUN = "analysis:demo"; // live state: its latest `demo.run` names the run to show
const LOG_LIMIT = 1000;
const TRANSPORT_NAMES: Record<string, string> = { ws: "WebSocket", sse: "Server-Sent Events", poll: "long-polling" };

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;
const params = new URLSearchParams(location.search);

let client: RealtimeClient | null = null;
let inbox: ReturnType<typeof notificationsStore> | null = null;
let stops: (() => void)[] = [];
let runStops: (() => void)[] = [];
let currentRun: string | null = null;

// --- signing in ----------------------------------------------------------------------------

async function demoToken(user: string): Promise<string> {
  const response = await fetch("/demo/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user, ...(params.get("ttl") ? { ttl: Number(params.get("ttl")) } : {}) }),
  });
  if (response.status === 404 || response.status === 405) throw Object.assign(new Error("development tokens are off"), { off: true });
  if (!response.ok) throw new Error(`/demo/token answered ${response.status}`);
  return (await response.json()).token;
}

async function signIn(user: string): Promise<void> {
  try {
    await demoToken(user); // fails fast, with a clear message, where the helpers are off
  } catch (error) {
    if ((error as { off?: boolean }).off) return devTokensOff();
    throw error;
  }
  sessionStorage.setItem("rt.demo.user", user);
  start(user, () => demoToken(user), true);
}

function devTokensOff(): void {
  $("signin").hidden = true;
  $("paste").hidden = false;
  $("samples").hidden = true;
  meta("Development tokens are off on this server (DEMO_TOKENS): paste a token minted for you.", "reset");
}

function start(label: string, getToken: () => Promise<string> | string, samples: boolean): void {
  stop();
  // No clientId: the client learns the head first and resumes from it, so a fresh tab misses
  // nothing published after it opened (a clientId would hand the position to the server).
  const rt = connect({ getToken, transports: chosenTransports(), channels: [REPOSITORY, CURRENT_RUN] });
  client = rt;
  inbox = notificationsStore(rt);
  (window as any).demo = { client: rt };
  $("signin").hidden = true;
  $("paste").hidden = true;
  $("whoami").hidden = false;
  $("samples").hidden = !samples;
  $("whoami-name").textContent = label;

  stops.push(
    rt.on("state", () => renderStatus()),
    rt.on("transport", (name) => meta(`transport: ${TRANSPORT_NAMES[name]}`)),
    rt.on("open", ({ transport }) => {
      if (rt.user) $("whoami-name").textContent = `${rt.user} · tenant ${rt.tenant}`;
      meta(`connected via ${TRANSPORT_NAMES[transport]}${rt.cursor ? ` from ${rt.cursor}` : ""}`);
    }),
    rt.on("close", ({ reason, code }) => meta(`connection lost (${reason}${code ? ` ${code}` : ""}); reconnecting`)),
    rt.on("reset", ({ reason }) => meta(`history may be lost (${reason}): state refetched`, "reset")),
    rt.on("error", (error) => meta(`error ${error.code}: ${error.message}`, "reset")),
    rt.on("event", (event) => {
      logEvent(event);
      if (event.type === "notification.created" && !event.snapshot) {
        toast(event.data.notification.title, event.data.notification.message);
      } else if (event.type === "system.alert" && !event.snapshot) {
        toast(`Alert (${event.data.severity})`, event.data.message, "alert");
      }
    }),
    rt.subscribe(CURRENT_RUN, (event) => {
      if (event.type === "demo.run") showRun(String(event.data.analysisId));
    }),
    watch(inbox, (state) => renderNotifications(state.items, state.unread)),
    watch(presenceStore(rt, REPOSITORY), (users) => renderViewers(users.map((u) => u.user_id))),
  );
  renderStatus();
}

function stop(): void {
  runStops.forEach((f) => f());
  stops.forEach((f) => f());
  runStops = [];
  stops = [];
  currentRun = null;
  client?.close();
  client = null;
  inbox = null;
}

function signOut(): void {
  stop();
  sessionStorage.removeItem("rt.demo.user");
  $("signin").hidden = false;
  $("whoami").hidden = true;
  renderNotifications([], 0);
  renderViewers([]);
  renderStatus();
}

/** Render a store now and on every change; returns the stop function. */
function watch<S>(store: Store<S>, render: (state: S) => void): () => void {
  const off = store.subscribe(() => render(store.get()));
  render(store.get());
  return off;
}

// --- the cards -----------------------------------------------------------------------------

function showRun(run: string): void {
  if (!client || run === currentRun) return;
  runStops.forEach((f) => f());
  currentRun = run;
  $("analysis-name").textContent = `Analysis ${run}`;
  runStops = [
    watch(analysisStore(client, run), ({ progress }) => {
      const bar = $("progress");
      bar.style.width = `${progress ?? 0}%`;
      bar.dataset.progress = progress === null ? "" : String(progress);
      $("progress-label").textContent = progress === null ? "–" : `${progress}%`;
    }),
    watch(channelStore(client, `job:${run}`), (latest) => {
      const event = latest["refactoring.status"];
      const status = event?.data.status ?? "";
      const order = ["queued", "running", "completed"];
      $("job-status").dataset.status = status;
      for (const step of $("job-status").querySelectorAll<HTMLElement>("li")) {
        const index = order.indexOf(step.dataset.step!);
        step.className = step.dataset.step === status ? "current" : index < order.indexOf(status) ? "done" : "";
      }
      $("job-detail").textContent = event
        ? `job:${run} · ${status}${event.data.changedFiles ? ` · ${event.data.changedFiles} files changed` : ""}`
        : "–";
    }),
  ];
}

function renderNotifications(items: Notification[], unread: number): void {
  const badge = $("badge");
  badge.textContent = String(unread);
  badge.hidden = unread === 0;
  const list = $("notification-list");
  list.replaceChildren(
    ...items.map((n) => {
      const li = document.createElement("li");
      li.dataset.id = n.id;
      li.className = n.read_at ? "" : "unread";
      const title = document.createElement("strong");
      title.textContent = n.title;
      const body = document.createElement("small");
      body.textContent = `${n.message} · ${new Date(n.created_at).toLocaleTimeString()}`;
      li.append(title, body);
      li.addEventListener("click", () => void inbox?.markRead(n.id));
      return li;
    }),
  );
  $("notification-empty").hidden = items.length > 0;
}

function renderViewers(users: string[]): void {
  $("viewers").replaceChildren(
    ...users.map((user) => {
      const li = document.createElement("li");
      li.dataset.user = user;
      const avatar = document.createElement("span");
      avatar.className = "avatar";
      avatar.style.background = `hsl(${[...user].reduce((h, c) => (h * 31 + c.charCodeAt(0)) % 360, 7)} 55% 50%)`;
      avatar.textContent = user.slice(0, 1).toUpperCase();
      li.append(avatar, user);
      return li;
    }),
  );
}

function renderStatus(): void {
  const status = $("status");
  const state = client?.state ?? "idle";
  const transport = client?.transport ?? "";
  status.dataset.state = state;
  status.dataset.transport = state === "open" ? transport : "";
  const retry = client?.retryDelay != null ? ` · retry in ${(client.retryDelay / 1000).toFixed(1)} s` : "";
  status.textContent = !client ? "signed out" : state === "open" ? `open · ${TRANSPORT_NAMES[transport]}` : `${state}${retry}`;
}

// --- the event log and toasts ---------------------------------------------------------------

function logEvent(event: RealtimeEvent): void {
  const li = document.createElement("li");
  li.className = "event";
  li.dataset.id = event.id;
  li.dataset.channel = event.channel;
  li.dataset.type = event.type;
  if (event.snapshot) li.dataset.snapshot = "true";
  const cells = [
    new Date(event.ts).toLocaleTimeString(undefined, { hour12: false }),
    event.channel,
    event.type,
    event.snapshot ? `${event.id} snapshot` : event.id,
    JSON.stringify(event.data),
  ];
  li.append(...cells.map((text, i) => {
    const span = document.createElement("span");
    span.textContent = text;
    if (i === 3 && event.snapshot) span.className = "snap";
    return span;
  }));
  append(li);
}

function meta(text: string, kind = ""): void {
  const li = document.createElement("li");
  li.className = `meta ${kind}`.trim();
  li.textContent = `${new Date().toLocaleTimeString(undefined, { hour12: false })}  ${text}`;
  append(li);
}

function append(li: HTMLElement): void {
  const log = $("log");
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
  log.append(li);
  while (log.children.length > LOG_LIMIT) log.firstElementChild!.remove();
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function toast(title: string, body: string, kind = ""): void {
  const div = document.createElement("div");
  div.className = `toast ${kind}`.trim();
  const strong = document.createElement("strong");
  strong.textContent = title;
  const small = document.createElement("small");
  small.textContent = body;
  div.append(strong, small);
  $("toasts").append(div);
  setTimeout(() => div.remove(), 6000);
}

// --- controls ------------------------------------------------------------------------------

function chosenTransports(): TransportName[] {
  const value = ($("transport-picker") as HTMLSelectElement).value;
  return value === "auto" ? ["ws", "sse", "poll"] : [value as TransportName];
}

async function publishSample(kind: "run" | "notification" | "alert"): Promise<void> {
  if (!client?.user) return;
  const response = await fetch("/demo/publish", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ kind, user: client.user }),
  });
  if (!response.ok) meta(`publishing failed: ${response.status} ${await response.text()}`, "reset");
}

function wire(): void {
  const picker = $("transport-picker") as HTMLSelectElement;
  picker.value = ["ws", "sse", "poll"].includes(params.get("transport") ?? "") ? params.get("transport")! : "auto";
  picker.addEventListener("change", () => {
    const url = new URL(location.href);
    if (picker.value === "auto") url.searchParams.delete("transport");
    else url.searchParams.set("transport", picker.value);
    history.replaceState(null, "", url);
    client?.setTransports(chosenTransports());
  });
  $("signin").addEventListener("submit", (e) => {
    e.preventDefault();
    void signIn(($("signin-user") as HTMLSelectElement).value);
  });
  $("paste").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = ($("paste-token") as HTMLInputElement).value.trim();
    if (token) start("pasted token", () => token, false);
  });
  $("signout").addEventListener("click", signOut);
  $("bell").addEventListener("click", () => {
    const panel = $("notifications");
    panel.hidden = !panel.hidden;
    $("bell").setAttribute("aria-expanded", String(!panel.hidden));
  });
  $("read-all").addEventListener("click", () => void inbox?.markAllRead());
  $("run-sample").addEventListener("click", () => void publishSample("run"));
  $("send-notification").addEventListener("click", () => void publishSample("notification"));
  $("send-alert").addEventListener("click", () => void publishSample("alert"));
  setInterval(() => client?.state === "waiting" && renderStatus(), 500);

  const user = params.get("user") ?? sessionStorage.getItem("rt.demo.user");
  if (user) {
    ($("signin-user") as HTMLSelectElement).value = user;
    void signIn(user);
  }
}

wire();

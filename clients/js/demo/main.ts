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
  type BulkAction,
  type Notification,
  type NotificationStatus,
  type NotificationsState,
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
// the bell's view and selection (kept across sign-ins and renders)
let view: { status: NotificationStatus; tag: string | null } = { status: "all", tag: null };
const selected = new Set<string>();

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
  inbox = notificationsStore(rt, { status: view.status, tags: view.tag ? [view.tag] : [] });
  (window as any).demo = { client: rt, inbox };
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
      } else if (event.type === "notification.unsnoozed" && event.data.notification && !event.snapshot) {
        toast(`Back: ${event.data.notification.title}`, "snoozed until now", "back");
      } else if (event.type === "system.alert" && !event.snapshot) {
        toast(`Alert (${event.data.severity})`, event.data.message, "alert");
      }
    }),
    rt.subscribe(CURRENT_RUN, (event) => {
      if (event.type === "demo.run") showRun(String(event.data.analysisId));
    }),
    watch(inbox, (state) => renderNotifications(state)),
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
  renderNotifications(null);
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

// --- the bell -------------------------------------------------------------------------------

// `?snooze=2`: the short snooze lasts 2 s (default 10 s), to watch one come back
const SHORT_SNOOZE = Math.max(1, Number(params.get("snooze")) || 10);
const SNOOZES: [string, number][] = [[`${SHORT_SNOOZE} s`, SHORT_SNOOZE * 1000], ["1 h", 3_600_000]];
const EMPTY: Record<NotificationStatus, string> = {
  all: "Nothing yet.", unread: "Nothing unread.", unseen: "Nothing new.", archived: "The archive is empty.", snoozed: "Nothing snoozed.",
};

/** Run one of the inbox's calls; a refusal is shown in the log (the events update the list). */
function attempt(what: string, call: (store: NonNullable<typeof inbox>) => Promise<unknown>): void {
  if (!inbox) return;
  call(inbox).catch((error) => meta(`${what} failed: ${error.status ?? ""} ${error.message}`.replace("  ", " "), "reset"));
}

function setView(next: Partial<typeof view>): void {
  view = { ...view, ...next };
  selected.clear();
  void inbox?.setFilter({ status: view.status, tags: view.tag ? [view.tag] : [] });
  if (!inbox) renderNotifications(null);
}

function button(text: string, className: string, onClick: () => void, data: Record<string, string> = {}): HTMLButtonElement {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = text;
  Object.assign(b.dataset, data);
  b.addEventListener("click", (e) => {
    e.stopPropagation(); // not a click on the notification (which marks it read)
    onClick();
  });
  return b;
}

function renderNotifications(state: NotificationsState | null): void {
  const unread = state?.unread ?? 0;
  const items = state?.items ?? [];
  const badge = $("badge");
  badge.textContent = String(unread);
  badge.hidden = unread === 0;
  for (const tab of document.querySelectorAll<HTMLElement>("#views button")) tab.classList.toggle("on", tab.dataset.status === view.status);
  $("tag-filter").hidden = !view.tag;
  $("tag-filter-name").textContent = view.tag ?? "";
  for (const id of [...selected]) if (!items.some((n) => n.id === id)) selected.delete(id);
  const list = $("notification-list");
  list.replaceChildren(...items.map(renderItem));
  $("notification-empty").hidden = items.length > 0;
  $("notification-empty").textContent = state?.loading && !items.length ? "Loading…" : EMPTY[view.status];
  renderBulk();
}

function renderItem(n: Notification): HTMLLIElement {
  const li = document.createElement("li");
  li.dataset.id = n.id;
  li.className = n.read_at ? "" : "unread";
  if (n.action_taken) li.dataset.actionTaken = n.action_taken;
  const pick = document.createElement("input");
  pick.type = "checkbox";
  pick.className = "pick";
  pick.checked = selected.has(n.id);
  pick.setAttribute("aria-label", `select ${n.title}`);
  pick.addEventListener("click", (e) => e.stopPropagation());
  pick.addEventListener("change", () => {
    if (pick.checked) selected.add(n.id);
    else selected.delete(n.id);
    renderBulk();
  });
  const title = document.createElement("strong");
  title.textContent = n.title;
  const body = document.createElement("small");
  const when = n.snoozed_until ? ` · snoozed until ${new Date(n.snoozed_until).toLocaleTimeString()}` : "";
  body.textContent = `${n.message} · ${new Date(n.created_at).toLocaleTimeString()}${when}`;
  const main = document.createElement("div");
  main.className = "main";
  main.append(title, body);
  if (n.tags?.length) {
    const tags = document.createElement("div");
    tags.className = "tags";
    tags.append(...n.tags.map((tag) => button(`#${tag}`, `tag${tag === view.tag ? " on" : ""}`, () => setView({ tag: tag === view.tag ? null : tag }), { tag })));
    main.append(tags);
  }
  if (n.actions?.length) {
    const actions = document.createElement("div");
    actions.className = "actions";
    if (n.action_taken) {
      const taken = n.actions.find((a) => a.id === n.action_taken);
      const done = document.createElement("span");
      done.className = "taken";
      done.dataset.action = n.action_taken;
      done.textContent = `✓ ${taken?.label ?? n.action_taken}`;
      actions.append(done);
    } else {
      actions.append(...n.actions.map((a, i) => button(a.label, `action ${i === 0 ? "primary" : "secondary"}`, () =>
        attempt(a.label, async (store) => {
          await store.act(n.id, a.id);
          if (a.url) window.open(a.url, "_blank", "noopener");
        }), { action: a.id })));
    }
    main.append(actions);
  }
  const tools = document.createElement("div");
  tools.className = "tools";
  if (n.snoozed_until) {
    tools.append(button("Wake now", "link", () => attempt("unsnooze", (s) => s.unsnooze(n.id)), { do: "unsnooze" }));
  } else if (!n.archived_at) {
    const label = document.createElement("span");
    label.className = "muted";
    label.textContent = "Snooze";
    tools.append(label, ...SNOOZES.map(([text, ms]) =>
      button(text, "link", () => attempt("snooze", (s) => s.snooze(n.id, new Date(Date.now() + ms))), { do: "snooze", ms: String(ms) })));
  }
  tools.append(
    n.archived_at
      ? button("Unarchive", "link", () => attempt("unarchive", (s) => s.unarchive(n.id)), { do: "unarchive" })
      : button("Archive", "link", () => attempt("archive", (s) => s.archive(n.id)), { do: "archive" }),
    button("Delete", "link danger", () => attempt("delete", (s) => s.remove(n.id)), { do: "delete" }),
  );
  main.append(tools);
  li.append(pick, main);
  li.addEventListener("click", () => void (n.read_at || attempt("read", (s) => s.markRead(n.id))));
  return li;
}

/** The selection's bar: how many, and what to do with them. */
function renderBulk(): void {
  const bar = $("bulk");
  bar.hidden = selected.size === 0;
  $("bulk-count").textContent = `${selected.size} selected`;
  const archived = view.status === "archived";
  for (const b of bar.querySelectorAll<HTMLElement>("button[data-bulk]")) {
    b.hidden = (b.dataset.bulk === "archive" && archived) || (b.dataset.bulk === "unarchive" && !archived);
  }
}

function bulk(action: BulkAction): void {
  const ids = [...selected];
  selected.clear();
  renderBulk();
  attempt(`bulk ${action}`, (s) => s.bulk(ids, action));
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
  $("read-all").addEventListener("click", () => attempt("read all", (s) => s.markAllRead()));
  $("archive-read").addEventListener("click", () => attempt("archive read", (s) => s.archiveAll({ status: "read" })));
  for (const tab of document.querySelectorAll<HTMLElement>("#views button")) {
    tab.addEventListener("click", () => setView({ status: tab.dataset.status as NotificationStatus }));
  }
  $("tag-filter").addEventListener("click", () => setView({ tag: null }));
  for (const b of document.querySelectorAll<HTMLElement>("#bulk button[data-bulk]")) {
    b.addEventListener("click", () => bulk(b.dataset.bulk as BulkAction));
  }
  $("bulk-none").addEventListener("click", () => {
    selected.clear();
    if (inbox) renderNotifications(inbox.get());
  });
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

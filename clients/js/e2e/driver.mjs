// Drives Debian's Chromium with playwright-core for tests/test_browser_e2e.py: one JSON command per
// line on stdin, one JSON answer per line on stdout ({"id", "ok", "result"} or {"id", "ok": false,
// "error"}). The Python test decides what happens; this only does it, so a scenario can stop and
// start servers between two steps.
//
//   node e2e/driver.mjs   (CHROMIUM=/usr/bin/chromium by default)

import { createInterface } from "node:readline";

import { chromium } from "playwright-core";

// launch() starts Chromium on a fresh, empty temporary profile (its --user-data-dir) and removes
// it on close. Each test gets browser contexts of its own; pages of one context are tabs of one
// browser profile (they share sessionStorage only if opened from one another, which we never do).
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});

const contexts = new Map(); // name -> BrowserContext
const pages = new Map(); // name -> { page, console: string[] }

function page(name) {
  const entry = pages.get(name);
  if (!entry) throw new Error(`no page ${name}`);
  return entry.page;
}

const commands = {
  async context({ name }) {
    contexts.set(name, await browser.newContext({ viewport: { width: 1280, height: 820 } }));
  },

  /** Make the WebSocket fail the way a proxy that refuses the upgrade does: close 1006, never open. */
  async blockWebSocket({ context }) {
    await contexts.get(context).routeWebSocket(/\/v1\/ws/, (ws) => ws.close({ code: 1006, reason: "blocked" }));
  },

  /** Answer SSE requests the way a buffering or hostile proxy might: a 502 page. */
  async blockSse({ context }) {
    await contexts.get(context).route(/\/v1\/sse/, (route) =>
      route.fulfill({ status: 502, contentType: "text/html", body: "<h1>502 Bad Gateway</h1>" }));
  },

  /** Serve a page bundled from `entry` (with its npm imports) at `url` of the server's origin. */
  async serveBundle({ context, url, entry }) {
    const { build } = await import("esbuild");
    const bundle = await build({
      entryPoints: [entry], bundle: true, format: "esm", target: "es2020", write: false,
      define: { "process.env.NODE_ENV": '"production"' },
    });
    const script = bundle.outputFiles[0].text.replace(/<\/script/gi, "<\\/script");
    const html = `<!doctype html><meta charset="utf-8"><title>${entry}</title><div id="root"></div><script type="module">${script}</script>`;
    await contexts.get(context).route(`${url}*`, (route) => route.fulfill({ contentType: "text/html", body: html }));
  },

  async open({ name, context, url }) {
    const p = await contexts.get(context).newPage();
    const log = [];
    p.on("console", (m) => log.push(`${m.type()}: ${m.text()}`));
    p.on("pageerror", (e) => log.push(`pageerror: ${e.message}`));
    pages.set(name, { page: p, console: log });
    await p.goto(url);
  },

  async eval({ page: name, expr }) {
    return await page(name).evaluate(expr);
  },

  async waitFor({ page: name, expr, timeout = 15000 }) {
    await page(name).waitForFunction(expr, null, { timeout, polling: 50 });
  },

  async click({ page: name, selector }) {
    await page(name).click(selector);
  },

  async select({ page: name, selector, value }) {
    await page(name).selectOption(selector, value);
  },

  async screenshot({ page: name, path }) {
    await page(name).screenshot({ path, animations: "disabled" });
  },

  async console({ page: name }) {
    return pages.get(name)?.console ?? [];
  },

  async closeContext({ name }) {
    await contexts.get(name)?.close();
    contexts.delete(name);
    for (const [key, entry] of pages) if (entry.page.context() && entry.page.isClosed()) pages.delete(key);
  },
};

const out = (message) => process.stdout.write(JSON.stringify(message) + "\n");
out({ ready: true, version: browser.version() });

for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const { id, cmd, ...args } = JSON.parse(line);
  try {
    if (!commands[cmd]) throw new Error(`unknown command ${cmd}`);
    out({ id, ok: true, result: (await commands[cmd](args)) ?? null });
  } catch (error) {
    out({ id, ok: false, error: String(error?.stack ?? error) });
  }
}

await browser.close();

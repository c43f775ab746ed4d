"""The demo page and its client in headless Chromium, against live servers.

Chromium is Debian's (`/usr/bin/chromium`, or CHROMIUM), driven by playwright-core through
clients/js/e2e/driver.mjs: this test sends it one JSON command at a time, so a scenario can stop
and start servers between two steps. `.ci/run` installs Chromium and the client's npm packages;
elsewhere the tests skip, saying what is missing (under CI=true they fail instead).

Each scenario reads what the page shows: the transport in its status pill, the event log (one
`li.event` per event delivered, in delivery order), the unread badge, the bell's list (one
`#notification-list li[data-id]` per notification, with its action buttons, tags and tools).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as sync_redis
from forge_publisher import Publisher

from app import db
from app.settings import Settings
from tests.conftest import REDIS_URL, ROOT, LiveServer, auth, skip_unless_ci, token

CLIENT = ROOT / "clients" / "js"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = ROOT / "docs" / "demo.png"
TENANT = "demo"
REPOSITORY = "repository:demo"
WAIT_MS = 20_000


def _missing(what: str, how: str) -> None:
    skip_unless_ci(f"{what} is missing; {how}")


class Browser:
    """The driver process: `call(cmd, **args)` sends one command and returns its result."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            ["node", "e2e/driver.mjs"], cwd=CLIENT, env={**os.environ, "CHROMIUM": CHROMIUM},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._answers: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._next = 0
        ready = self._answers.get(timeout=60)
        if not ready.get("ready"):
            raise RuntimeError(f"driver did not start: {ready}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._answers.put(json.loads(line))
        self._answers.put({"ok": False, "error": f"driver exited: {self.process.stderr.read() if self.process.stderr else ''}"})

    def call(self, cmd: str, **args: Any) -> Any:
        self._next += 1
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"id": self._next, "cmd": cmd, **args}) + "\n")
        self.process.stdin.flush()
        answer = self._answers.get(timeout=60 + args.get("timeout", 0) / 1000)
        if not answer.get("ok"):
            raise BrowserError(answer.get("error", answer))
        return answer["result"]

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


class BrowserError(AssertionError):
    pass


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not shutil.which("node"):
        _missing("node", "install Node.js 20 (Debian: apt-get install nodejs npm)")
    if not Path(CHROMIUM).exists():
        _missing(f"Chromium at {CHROMIUM}", "apt-get install chromium, or set CHROMIUM")
    if not (CLIENT / "node_modules" / "playwright-core").exists():
        _missing("clients/js/node_modules", "run: npm ci --prefix clients/js")
    b = Browser()
    yield b
    b.close()


class Page:
    """One tab showing the demo page."""

    def __init__(self, browser: Browser, name: str) -> None:
        self.browser, self.name = browser, name

    def eval(self, expr: str) -> Any:
        return self.browser.call("eval", page=self.name, expr=expr)

    def wait(self, expr: str, what: str, timeout_ms: int = WAIT_MS) -> None:
        try:
            self.browser.call("waitFor", page=self.name, expr=expr, timeout=timeout_ms)
        except BrowserError as exc:
            raise AssertionError(f"{self.name}: {what} did not happen\n{self.diagnostics()}") from exc

    def click(self, selector: str) -> None:
        self.browser.call("click", page=self.name, selector=selector)

    def select(self, selector: str, value: str) -> None:
        self.browser.call("select", page=self.name, selector=selector, value=value)

    def status(self) -> dict[str, str]:
        return self.eval("({...document.querySelector('#status').dataset})")

    def wait_open(self, transport: str | None = None) -> None:
        condition = "s.state === 'open'" + (f" && s.transport === '{transport}'" if transport else "")
        self.wait(f"(() => {{ const s = document.querySelector('#status').dataset; return {condition}; }})()",
                  f"open{' on ' + transport if transport else ''}")

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        """The event log's events (oldest first), with their data."""
        rows = self.eval("[...document.querySelectorAll('#log li.event')]"
                         ".map(li => ({...li.dataset, data: li.lastChild.textContent}))")
        return [{**row, "data": json.loads(row["data"])} for row in rows if type_ is None or row["type"] == type_]

    def wait_events(self, type_: str, count: int, timeout_ms: int = WAIT_MS) -> list[dict[str, Any]]:
        self.wait(f"document.querySelectorAll('#log li.event[data-type=\"{type_}\"]').length >= {count}",
                  f"{count} {type_} events in the log", timeout_ms)
        return self.events(type_)

    def badge(self) -> str:
        return self.eval("(() => { const b = document.querySelector('#badge'); return b.hidden ? '' : b.textContent; })()")

    def shown(self) -> list[str]:
        """The ids the bell lists, top to bottom."""
        return self.eval("[...document.querySelectorAll('#notification-list li')].map(li => li.dataset.id)")

    def wait_shown(self, ids: list[str], what: str, timeout_ms: int = WAIT_MS) -> None:
        listed = "[...document.querySelectorAll('#notification-list li')].map(li => li.dataset.id).join()"
        self.wait(f"{listed} === {json.dumps(','.join(ids))}", f"{what} (expected: {ids}, listed: {self.shown()})", timeout_ms)

    def wait_badge(self, count: int, timeout_ms: int = WAIT_MS) -> None:
        expr = ("document.querySelector('#badge').hidden" if count == 0
                else f"!document.querySelector('#badge').hidden && document.querySelector('#badge').textContent === '{count}'")
        self.wait(expr, f"badge {count or 'gone'}", timeout_ms)

    def item(self, notification_id: str, inner: str = "") -> str:
        return f"#notification-list li[data-id='{notification_id}'] {inner}".strip()

    def story(self) -> str:
        """The whole event log, compactly: connection notes and each event's channel, type and data."""
        return "\n".join(self.eval("[...document.querySelectorAll('#log li')].map(li => li.classList.contains('event') "
                                    "? `${li.dataset.id} ${li.dataset.type} ${li.lastChild.textContent}` : li.textContent)"))

    def diagnostics(self) -> str:
        shown = self.eval("""(() => {
            const status = document.querySelector('#status');
            const log = [...document.querySelectorAll('#log li')].slice(-40).map(li => li.textContent);
            const body = log.length ? log.join('\\n') : document.body.innerText;
            return `status: ${status ? JSON.stringify(status.dataset) : '-'}\\n${body}`;
        })()""")
        console = self.browser.call("console", page=self.name)
        return f"{shown}\nconsole:\n" + "\n".join(console[-20:])


@pytest.fixture
def demo(browser: Browser, live_servers: Callable[..., LiveServer], redis_url: str, tmp_path: Path) -> Iterator[Demo]:
    db.run_migrations(Settings(data_dir=tmp_path, database_url=None))  # the live server's SQLite in DATA_DIR
    # Long-polls of at most 5 s: stopping a server waits for the requests in flight.
    server = live_servers(DEMO_TOKENS="true", POLL_MAX_TIMEOUT="5")
    d = Demo(browser, server)
    yield d
    d.close()


class Demo:
    def __init__(self, browser: Browser, server: LiveServer) -> None:
        self.browser, self.server = browser, server
        self.contexts: list[str] = []
        self.http = httpx.Client(timeout=10, trust_env=False)

    def context(self, *, block: tuple[str, ...] = ()) -> str:
        name = f"ctx-{uuid.uuid4().hex[:8]}"
        self.browser.call("context", name=name)
        self.contexts.append(name)
        if "ws" in block:
            self.browser.call("blockWebSocket", context=name)
        if "sse" in block:
            self.browser.call("blockSse", context=name)
        return name

    def open(self, context: str, user: str, transport: str | None = None, query: str = "") -> Page:
        name = f"{user}-{uuid.uuid4().hex[:6]}"
        query = f"?user={user}" + (f"&transport={transport}" if transport else "") + query
        self.browser.call("open", name=name, context=context, url=f"{self.server.url}/demo/{query}")
        page = Page(self.browser, name)
        page.wait_open(transport)
        return page

    def publish(self, channel: str, type_: str, data: dict[str, Any]) -> str:
        response = self.http.post(f"{self.server.url}/v1/events", headers=auth(token("worker", TENANT, scope="publish")),
                                  json={"tenant": TENANT, "channel": channel, "type": type_, "data": data})
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def notify(self, user: str, title: str, **extra: Any) -> dict[str, Any]:
        response = self.http.post(f"{self.server.url}/v1/notifications", headers=auth(token("worker", TENANT, scope="publish")),
                                  json={"tenant": TENANT, "user_id": user, "type": "demo.mention", "title": title,
                                        "message": "…", **extra})
        assert response.status_code == 201, response.text
        return response.json()

    def as_user(self, user: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The service's API as `user` would call it (what the page does, without the page)."""
        return self.http.request(method, f"{self.server.url}{path}", headers=auth(token(user, TENANT)), **kwargs)

    def close(self) -> None:
        for name in self.contexts:
            self.browser.call("closeContext", name=name)
        self.http.close()


# --------------------------------------------------------------------------------------------


def test_the_page_receives_a_published_event_on_each_transport(demo: Demo) -> None:
    """Switching transports on the picker resumes from the cursor: an event published right as
    the switch starts arrives once, on whichever connection delivers it."""
    page = demo.open(demo.context(), "ada")
    assert page.status()["transport"] == "ws"
    for n, transport in enumerate(["ws", "sse", "poll", "ws"], start=1):
        if transport != page.status()["transport"]:
            page.select("#transport-picker", transport)
        demo.publish(REPOSITORY, "demo.ping", {"n": n, "on": transport})
        page.wait_open(transport)
        got = page.wait_events("demo.ping", n)
        assert got[-1]["data"] == {"n": n, "on": transport}
        assert page.eval("window.demo.client.transport") == transport
    pings = page.events("demo.ping")
    assert [e["data"]["n"] for e in pings] == [1, 2, 3, 4], "each event once, in order"
    assert len({e["id"] for e in pings}) == 4


def test_websocket_blocked_falls_back_to_sse(demo: Demo) -> None:
    page = demo.open(demo.context(block=("ws",)), "ada")
    assert page.status()["transport"] == "sse"
    demo.publish(REPOSITORY, "demo.ping", {"n": 1})
    assert page.wait_events("demo.ping", 1)[0]["data"] == {"n": 1}


def test_websocket_and_sse_blocked_fall_back_to_long_polling(demo: Demo) -> None:
    page = demo.open(demo.context(block=("ws", "sse")), "ada")
    assert page.status()["transport"] == "poll"
    demo.publish(REPOSITORY, "demo.ping", {"n": 1})
    assert page.wait_events("demo.ping", 1)[0]["data"] == {"n": 1}
    assert page.eval("window.demo.client.transport") == "poll"


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
def test_server_restarted_mid_stream_the_page_shows_every_event_once_in_order(demo: Demo, transport: str) -> None:
    """A worker publishes a numbered event every 40 ms (through Redis, so it goes on while no
    server runs). The server is stopped and a new one started on the same port and Redis prefix;
    the page reconnects, resumes from its cursor and shows 1..N, each once, in order."""
    page = demo.open(demo.context(), "ada", transport)
    total = 75
    publisher = Publisher(sync_redis.Redis.from_url(REDIS_URL), TENANT, prefix=demo.server._env["REDIS_PREFIX"])
    published = threading.Event()

    def publish_all() -> None:
        for n in range(1, total + 1):
            publisher.publish(REPOSITORY, "demo.seq", {"n": n})
            time.sleep(0.04)
        published.set()

    worker = threading.Thread(target=publish_all, daemon=True)
    worker.start()
    page.wait_events("demo.seq", 15)
    demo.server.stop()  # graceful: uvicorn ends the connections
    time.sleep(0.5)
    restarted = LiveServer(demo.server._env, demo.server.port).start()
    try:
        assert published.wait(30)
        last = ("[...document.querySelectorAll('#log li.event[data-type=\"demo.seq\"]')]"
                f".some(li => li.lastChild.textContent === '{{\"n\":{total}}}')")
        try:
            page.wait(last, f"event {total} in the log", 40_000)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- the whole log ---\n{page.story()}") from None
        time.sleep(0.5)  # duplicates, if any, would come right after
        got = page.events("demo.seq")
        assert [e["data"]["n"] for e in got] == list(range(1, total + 1)), page.story()
        assert len({e["id"] for e in got}) == total
        page.wait_open(transport)
        reconnects = page.eval("[...document.querySelectorAll('#log li.meta')]"
                               ".filter(li => li.textContent.includes('connected via')).length")
        assert reconnects >= 2, "the page did reconnect"
    finally:
        worker.join(10)
        restarted.stop()


def test_two_tabs_of_one_user_keep_the_unread_badge_in_sync(demo: Demo) -> None:
    context = demo.context()
    first, second = demo.open(context, "ada"), demo.open(context, "ada", "sse")
    assert first.badge() == second.badge() == ""
    created = [demo.notify("ada", "Review requested"), demo.notify("ada", "Build failed")]
    for tab in (first, second):
        tab.wait("document.querySelector('#badge').textContent === '2'", "badge 2")
    # read one in the first tab: the second tab's badge follows
    first.click("#bell")
    first.click(f"#notification-list li[data-id='{created[0]['id']}']")
    for tab in (first, second):
        tab.wait("document.querySelector('#badge').textContent === '1'", "badge 1")
    assert second.eval(f"document.querySelector(\"#notification-list li[data-id='{created[0]['id']}']\").className") == ""
    # read all in the second tab: the first tab's badge goes away
    second.click("#bell")
    second.click("#read-all")
    for tab in (first, second):
        tab.wait("document.querySelector('#badge').hidden", "badge gone")
    assert first.eval("document.querySelectorAll('#notification-list li.unread').length") == 0
    for tab in (first, second):
        assert_events_carry_counts(tab)


# --- the inbox of contract section 10, in two tabs of one user --------------------------------

ACTIONS = [{"id": "approve", "label": "Approve"}, {"id": "reject", "label": "Reject", "url": "/demo/?rejected"}]


def newest_first(*notes: dict[str, Any]) -> list[str]:
    """Their ids in the order the inbox lists them: newest first (created_at, then id)."""
    return [n["id"] for n in sorted(notes, key=lambda n: (n["created_at"], n["id"]), reverse=True)]


def assert_events_carry_counts(tab: Page) -> None:
    """Every notification event the tab received has the caller's counts, in both spellings."""
    for event in tab.events():
        if event["type"].startswith("notification."):
            data = event["data"]
            assert set(data.get("counts", {})) >= {"unread", "unseen", "total"}, f"{event['type']} without counts: {data}"
            assert (data["counts"]["unread"], data["counts"]["unseen"]) == (data["unread_count"], data["unseen_count"]), data


def two_tabs(demo: Demo, query: str = "") -> tuple[Page, Page]:
    """Two tabs of ada (one on WebSocket, one on SSE), each with the bell open."""
    context = demo.context()
    tabs = demo.open(context, "ada", query=query), demo.open(context, "ada", "sse", query=query)
    for tab in tabs:
        tab.click("#bell")
        tab.wait("document.querySelector('#notification-empty').textContent === 'Nothing yet.'", "the inbox loaded")
    return tabs


def test_an_action_taken_in_one_tab_shows_taken_in_the_other_and_tags_filter(demo: Demo) -> None:
    first, second = two_tabs(demo)
    deploy = demo.notify("ada", "Deploy to prod?", actions=ACTIONS, tags=["deploy", "prod"])
    docs = demo.notify("ada", "Docs updated", tags=["docs"])
    assert [a["id"] for a in deploy["actions"]] == ["approve", "reject"] and deploy["tags"] == ["deploy", "prod"]
    assert (deploy["action_taken"], deploy["acted_at"], deploy["snoozed_until"]) == (None, None, None)
    for tab in (first, second):
        tab.wait_shown(newest_first(docs, deploy), "both listed")
        tab.wait_badge(2)
    # the buttons: the first action is the primary one; tags are buttons too
    assert second.eval(f"[...document.querySelectorAll(\"{second.item(deploy['id'], 'button.action')}\")]"
                       ".map(b => `${b.dataset.action}:${b.classList.contains('primary') ? 'primary' : 'secondary'}`)") == [
        "approve:primary", "reject:secondary"]
    first.click(first.item(deploy["id"], "button.action[data-action='approve']"))
    for tab in (first, second):
        tab.wait(f"document.querySelector(\"{tab.item(deploy['id'])}\").dataset.actionTaken === 'approve'", "approve taken")
        tab.wait_badge(1)
    assert second.eval(f"document.querySelector(\"{second.item(deploy['id'], '.taken')}\").textContent") == "✓ Approve"
    assert second.eval(f"document.querySelectorAll(\"{second.item(deploy['id'], 'button.action')}\").length") == 0, \
        "no more buttons once one was taken"
    assert second.eval(f"document.querySelector(\"{second.item(deploy['id'])}\").className") == "", "taking an action read it"
    again = demo.as_user("ada", "POST", f"/v1/notifications/{deploy['id']}/actions/reject")
    assert again.status_code == 409, again.text
    unknown = demo.as_user("ada", "POST", f"/v1/notifications/{docs['id']}/actions/approve")
    assert unknown.status_code == 404, unknown.text

    # a tag filters the list (the server's ?tag=), and new notifications join the view live when they match
    second.click(second.item(deploy["id"], "button.tag[data-tag='deploy']"))
    second.wait_shown([deploy["id"]], "only the deploy-tagged one")
    assert second.eval("document.querySelector('#tag-filter-name').textContent") == "deploy"
    tagged = demo.notify("ada", "Deploy staging?", tags=["deploy"])
    untagged = demo.notify("ada", "Lunch?")
    first.wait_shown(newest_first(untagged, tagged, docs, deploy), "all four in the unfiltered tab")
    second.wait_badge(3)
    second.wait_shown(newest_first(tagged, deploy), "the new deploy-tagged one joined the filtered view, the other not")
    second.click("#tag-filter")
    second.wait_shown(newest_first(untagged, tagged, docs, deploy), "every tag again")
    assert demo.as_user("ada", "GET", "/v1/notifications?tag=deploy&tag=prod").json()["items"][0]["id"] == deploy["id"]
    assert [n["id"] for n in demo.as_user("ada", "GET", "/v1/notifications?tag=deploy&tag=docs").json()["items"]] == []
    for tab in (first, second):
        assert_events_carry_counts(tab)


def test_snoozed_in_one_tab_it_leaves_both_and_comes_back_unread_in_both(demo: Demo) -> None:
    first, second = two_tabs(demo, query="&snooze=2")
    note = demo.notify("ada", "Standup in 5 minutes")
    other = demo.notify("ada", "Build green")
    for tab in (first, second):
        tab.wait_shown(newest_first(other, note), "both listed")
    first.click(first.item(note["id"], "strong"))  # read it, so that coming back unread shows
    for tab in (first, second):
        tab.wait_badge(1)
    second.click("#views button[data-status='snoozed']")
    second.wait("document.querySelector('#notification-empty').textContent === 'Nothing snoozed.'", "the snoozed view, empty")
    first.click(first.item(note["id"], "button[data-do='snooze'][data-ms='2000']"))
    first.wait_shown([other["id"]], "snoozed: out of the inbox")
    second.wait_shown([note["id"]], "in the other tab's snoozed view")
    assert second.eval(f"document.querySelector(\"{second.item(note['id'], 'small')}\").textContent").count("snoozed until") == 1
    assert demo.as_user("ada", "GET", "/v1/notifications/counts").json() == {"unread": 1, "unseen": 1, "total": 1}, \
        "a snoozed notification is in no count"
    # back after ~2 s, announced: unread again in both tabs
    for tab in (first, second):
        tab.wait_events("notification.unsnoozed", 1, 15_000)
    first.wait_shown(newest_first(other, note), "back in the inbox")
    first.wait(f"document.querySelector(\"{first.item(note['id'])}\").className === 'unread'", "back as unread")
    second.wait_shown([], "gone from the snoozed view")
    for tab in (first, second):
        tab.wait_badge(2)
    second.click("#views button[data-status='all']")
    second.wait_shown(newest_first(other, note), "back in the other tab's inbox")
    assert second.eval(f"document.querySelector(\"{second.item(note['id'])}\").className") == "unread"
    time.sleep(1)  # a second announcement, if any, would come right after
    for tab in (first, second):
        unsnoozed = tab.events("notification.unsnoozed")
        assert len(unsnoozed) == 1, "announced once"
        assert unsnoozed[0]["data"]["notification"]["id"] == note["id"]
        assert unsnoozed[0]["data"]["notification"]["read_at"] is None
        assert (unsnoozed[0]["data"]["counts"]["unread"], unsnoozed[0]["data"]["counts"]["total"]) == (2, 2)
        assert_events_carry_counts(tab)
    # "1 h", then woken at once from the snoozed view
    first.click(first.item(note["id"], "button[data-do='snooze'][data-ms='3600000']"))
    first.wait_shown([other["id"]], "snoozed for an hour")
    first.click("#views button[data-status='snoozed']")
    first.wait_shown([note["id"]], "in the snoozed view")
    first.click(first.item(note["id"], "button[data-do='unsnooze']"))
    second.wait_shown(newest_first(other, note), "woken: back in the other tab's inbox")
    first.wait_shown([], "out of the snoozed view")


def test_delete_bulk_archive_and_archive_read_follow_in_the_other_tab(demo: Demo) -> None:
    first, second = two_tabs(demo)
    notes = [demo.notify("ada", f"Note {n}", idempotency_key=f"note-{n}-{uuid.uuid4().hex[:6]}") for n in range(1, 6)]
    ids = newest_first(*notes)
    for tab in (first, second):
        tab.wait_shown(ids, "five listed")
        tab.wait_badge(5)
    # delete in one tab: gone in the other, and never created again by its idempotency key
    first.click(first.item(notes[0]["id"], "button[data-do='delete']"))
    ids.remove(notes[0]["id"])
    for tab in (first, second):
        tab.wait_shown(ids, "deleted one gone")
        tab.wait_badge(4)
    again = demo.http.post(f"{demo.server.url}/v1/notifications", headers=auth(token("worker", TENANT, scope="publish")),
                           json={"tenant": TENANT, "user_id": "ada", "type": "demo.mention", "title": "Note 1", "message": "…",
                                 "idempotency_key": notes[0]["idempotency_key"]})
    assert again.status_code == 200 and again.json()["id"] == notes[0]["id"], again.text
    assert demo.as_user("ada", "GET", "/v1/notifications/counts").json()["total"] == 4, "a deleted one is in no count"
    # select two and archive them together
    for note in notes[1:3]:
        first.click(first.item(note["id"], "input.pick"))
    first.wait("!document.querySelector('#bulk').hidden && document.querySelector('#bulk-count').textContent === '2 selected'",
               "2 selected")
    first.click("#bulk button[data-bulk='archive']")
    ids = [n for n in ids if n not in (notes[1]["id"], notes[2]["id"])]
    for tab in (first, second):
        tab.wait_shown(ids, "the two archived ones gone")
        tab.wait_badge(2)
    first.wait("document.querySelector('#bulk').hidden", "the selection cleared")
    second.click("#views button[data-status='archived']")
    second.wait_shown(newest_first(notes[1], notes[2]), "the archive")
    second.click(second.item(notes[1]["id"], "button[data-do='unarchive']"))
    first.wait_shown(newest_first(notes[1], notes[3], notes[4]), "unarchived: back in the other tab, in its place")
    second.wait_shown([notes[2]["id"]], "out of the archive")
    for tab in (first, second):
        tab.wait_badge(3)
    # archive what was read: the unread ones stay
    first.click(first.item(notes[3]["id"], "strong"))
    first.wait_badge(2)
    first.click("#archive-read")
    for tab in (first, second):
        tab.wait_badge(2)
    first.wait_shown(newest_first(notes[1], notes[4]), "the read one archived")
    second.wait_shown(newest_first(notes[2], notes[3]), "and in the other tab's archive")
    # bulk delete from the archive: one event per id
    second.click(second.item(notes[3]["id"], "input.pick"))
    second.click(second.item(notes[2]["id"], "input.pick"))
    second.click("#bulk button[data-bulk='delete']")
    second.wait_shown([], "the archive emptied")
    for tab in (first, second):
        tab.wait_events("notification.deleted", 3)
        deleted = tab.events("notification.deleted")
        assert sorted(e["data"]["id"] for e in deleted[1:]) == sorted([notes[3]["id"], notes[2]["id"]])
        assert all(e["data"]["ids"] == [e["data"]["id"]] for e in deleted)
        assert_events_carry_counts(tab)
    assert demo.as_user("ada", "GET", "/v1/notifications/counts").json() == {"unread": 2, "unseen": 2, "total": 2}


def test_sample_run_on_the_demo_page_and_the_readme_screenshot(demo: Demo) -> None:
    """The 'Try it' buttons: a sample analysis moves the progress bar and the job's status and
    ends with a notification; another user is shown viewing the repository. Saves docs/demo.png."""
    grace = demo.open(demo.context(), "grace", "sse")
    ada = demo.open(demo.context(), "ada")
    ada.wait("[...document.querySelectorAll('#viewers li')].map(li => li.dataset.user).sort().join() === 'ada,grace'",
             "ada and grace both viewing")
    ada.click("#send-notification")
    ada.click("#run-sample")
    for tab in (ada, grace):
        tab.wait("document.querySelector('#progress').dataset.progress === '100'", "progress 100", 30_000)
        tab.wait("document.querySelector('#job-status').dataset.status === 'completed'", "job completed")
    ada.wait("document.querySelector('#badge').textContent === '2'", "badge 2 (mention + analysis finished)")
    progress = [e["data"]["progress"] for e in grace.events("analysis.progress") if not e.get("snapshot")]
    assert progress == sorted(progress) and progress[-1] == 100
    assert grace.badge() == "", "notifications are per user"
    ada.click("#send-alert")
    ada.wait("document.querySelectorAll('.toast.alert').length > 0", "an alert toast")
    ada.click("#bell")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    demo.browser.call("screenshot", page=ada.name, path=str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000



def test_react_hooks_in_a_real_react_page(demo: Demo) -> None:
    """useNotifications, useAnalysisProgress and useChannel (clients/js/src/react.ts) in React 19:
    the analysis's live-state snapshot first, then updates; the badge; the last event."""
    demo.publish("analysis:hooks", "analysis.progress", {"analysisId": "hooks", "progress": 30})
    context = demo.context()
    demo.browser.call("serveBundle", context=context, url=f"{demo.server.url}/hooks-test", entry="e2e/hooks-page.ts")
    demo.browser.call("open", name="react", context=context, url=f"{demo.server.url}/hooks-test?user=ada")
    page = Page(demo.browser, "react")
    text = "(id) => document.getElementById(id)?.textContent"
    page.wait(f"({text})('progress') === '30'", "the progress snapshot")
    page.wait(f"({text})('unread') === '0'", "the inbox loaded")
    demo.publish("analysis:hooks", "analysis.progress", {"analysisId": "hooks", "progress": 60})
    demo.publish(REPOSITORY, "repository.updated", {"sha": "abc"})
    note = demo.notify("ada", "Hooked")
    page.wait(f"({text})('progress') === '60'", "progress 60")
    page.wait(f"({text})('last') === 'repository.updated {{\"sha\":\"abc\"}}'", "the channel's last event")
    page.wait(f"({text})('unread') === '1'", "unread 1")
    page.browser.call("click", page="react", selector=f"li[data-id='{note['id']}']")
    page.wait(f"({text})('unread') === '0' && document.querySelector('li').dataset.read === 'true'", "read")

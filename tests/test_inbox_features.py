"""The inbox of CONTRACT.md section 10: unarchive, archive-all (and archive-read), delete, bulk
changes, actions, tags and snooze — over HTTP in-process on SQLite (embedded log) and Postgres
(+ Redis), each change's event and the counts it carries checked against what is stored; then over
live WebSockets: two tabs of one user on two server processes follow every change, and a snooze
comes back once, whichever process is up, also after a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.settings import Settings
from tests.conftest import IMPORT_TTL, LiveServer, auth, eventually, running_app, service_token, token
from tests.notify_support import (
    backend,  # noqa: F401  (fixture)
    migrate_and_empty,
    pg_url,  # noqa: F401  (fixture)
)
from tests.test_notifications import N1, create, events
from tests.test_transports_live import WAIT, ws_open

ME = auth(token(ttl=IMPORT_TTL))  # minted at import, used when the module's turn comes
ACTIONS = [{"id": "review", "label": "Review", "url": "https://forge.example/pr/42"}, {"id": "later", "label": "Later"}]


@pytest.fixture
async def app_settings(backend: tuple[str, str | None], make_settings: Callable[..., Settings]) -> Settings:
    database_url, redis_url = backend
    await migrate_and_empty(database_url)
    return make_settings(database_url=database_url, redis_url=redis_url)


async def counts(client: Any, headers: dict[str, str] = ME) -> dict[str, int]:
    return (await client.get("/v1/notifications/counts", headers=headers)).json()


async def listed(client: Any, headers: dict[str, str] = ME, **params: Any) -> list[str]:
    body = (await client.get("/v1/notifications", params=params, headers=headers)).json()
    return [n["title"] for n in body["items"]]


async def new(client: Any, title: str, **fields: Any) -> str:
    response = await create(client, title=title, **fields)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def last_event(app: Any, after: int) -> list[tuple[str, dict]]:
    """The events on user:u1 since the first `after`; each one's counts must be the stored ones
    at the end of the step (each step here is one change)."""
    return (await events(app))[after:]


def carried(data: dict) -> dict[str, int]:
    """The counts an event carries, in both of its forms (which must agree)."""
    assert data["counts"]["unread"] == data["unread_count"] and data["counts"]["unseen"] == data["unseen_count"]
    return dict(data["counts"])


# --------------------------------------------------------------------------------------------
# HTTP, in-process, on both backends
# --------------------------------------------------------------------------------------------


async def test_unarchive_archive_all_and_archive_read(app_settings: Settings) -> None:
    async with running_app(app_settings) as (app, client):
        a, b, c = [await new(client, t) for t in "abc"]
        await client.post(f"/v1/notifications/{a}/read", headers=ME)
        before = len(await events(app))

        only_read = await client.post("/v1/notifications/archive-all", json={"status": "read"}, headers=ME)
        assert only_read.status_code == 200, only_read.text
        assert only_read.json() == {"changed": 1, "counts": {"unread": 2, "unseen": 2, "total": 2}}
        assert await listed(client, status="archived") == ["a"] and await listed(client) == ["c", "b"]
        [(kind, data)] = await last_event(app, before)
        assert (kind, data["change"], data["status"], data["all"]) == ("notification.updated", "archived", "read", True)
        assert carried(data) == await counts(client)

        back = await client.post(f"/v1/notifications/{a}/unarchive", headers=ME)
        assert back.status_code == 200 and back.json()["archived_at"] is None and back.json()["read_at"] is not None
        [(kind, data)] = await last_event(app, before + 1)
        assert (kind, data["change"], data["ids"], data["notification"]["id"]) == ("notification.updated", "unarchived", [a], a)
        assert carried(data) == await counts(client) == {"unread": 2, "unseen": 2, "total": 3}
        unchanged = await client.post(f"/v1/notifications/{a}/unarchive", headers=ME)
        assert unchanged.json() == back.json() and len(await events(app)) == before + 2  # already so: not announced

        everything = await client.post("/v1/notifications/archive-all", headers=ME)
        assert everything.json() == {"changed": 3, "counts": {"unread": 0, "unseen": 0, "total": 0}}
        assert sorted(await listed(client, status="archived")) == ["a", "b", "c"]
        [(kind, data)] = await last_event(app, before + 2)
        assert (data["change"], data["status"], data["all"], carried(data)) == (
            "archived", None, True, {"unread": 0, "unseen": 0, "total": 0})
        nothing = await client.post("/v1/notifications/archive-all", headers=ME)
        assert nothing.json()["changed"] == 0 and len(await events(app)) == before + 3
        assert (await client.post(f"/v1/notifications/{c}/unarchive", headers=auth(token("u2")))).status_code == 404
        assert (await client.post("/v1/notifications/archive-all", json={"status": "unread"}, headers=ME)).status_code == 422
        del b


async def test_delete_is_gone_everywhere_and_its_key_still_answers_with_it(app_settings: Settings) -> None:
    async with running_app(app_settings) as (app, client):
        first = await create(client, title="a", idempotency_key="pr-1")
        a = first.json()["id"]
        await new(client, "b")
        assert (await client.delete(f"/v1/notifications/{a}", headers=auth(token("u2")))).status_code == 404
        before = len(await events(app))
        gone = await client.delete(f"/v1/notifications/{a}", headers=ME)
        assert gone.status_code == 204 and gone.content == b""
        [(kind, data)] = await last_event(app, before)
        assert (kind, data["id"], data["ids"]) == ("notification.deleted", a, [a])
        assert carried(data) == await counts(client) == {"unread": 1, "unseen": 1, "total": 1}
        for status in ("all", "unread", "unseen", "archived", "snoozed"):
            assert "a" not in await listed(client, status=status)
        for change in ("read", "unread", "archive", "unarchive", "snooze", "unsnooze"):
            body = {"until": (datetime.now(UTC) + timedelta(hours=1)).isoformat()} if change == "snooze" else None
            assert (await client.post(f"/v1/notifications/{a}/{change}", json=body, headers=ME)).status_code == 404
        assert (await client.delete(f"/v1/notifications/{a}", headers=ME)).status_code == 404
        again = await create(client, title="a again", idempotency_key="pr-1")
        assert again.status_code == 200 and again.json()["id"] == a  # the first id, never created again
        assert await counts(client) == {"unread": 1, "unseen": 1, "total": 1}
        assert len(await events(app)) == before + 1


async def test_bulk_changes_skip_others_ids_and_are_announced_once(app_settings: Settings) -> None:
    async with running_app(app_settings) as (app, client):
        mine = [await new(client, t) for t in "abcde"]
        theirs = (await create(client, user_id="u2", title="theirs")).json()["id"]
        before = len(await events(app))

        async def bulk(ids: list[str], action: str) -> Any:
            return await client.post("/v1/notifications/bulk", json={"ids": ids, "action": action}, headers=ME)

        steps = [("read", mine[:3], 3, {"unread": 2, "unseen": 2, "total": 5}),
                 ("read", mine[:3], 0, {"unread": 2, "unseen": 2, "total": 5}),  # already so: unchanged, not announced
                 ("unread", mine[1:3], 2, {"unread": 4, "unseen": 2, "total": 5}),
                 ("archive", mine[:2], 2, {"unread": 3, "unseen": 2, "total": 3}),
                 ("unarchive", mine[:1], 1, {"unread": 3, "unseen": 2, "total": 4}),
                 ("delete", mine[3:], 2, {"unread": 1, "unseen": 0, "total": 2})]
        for action, ids, changed, expected in steps:
            response = await bulk([*ids, theirs, "no-such-id", ids[0]], action)
            assert response.status_code == 200, response.text
            assert response.json() == {"changed": changed, "counts": expected}, (action, response.json())
            assert await counts(client) == expected
        assert await counts(client, auth(token("u2"))) == {"unread": 1, "unseen": 1, "total": 1}  # theirs untouched

        announced = [(kind, data.get("change"), data.get("ids"), data.get("id"), carried(data))
                     for kind, data in await last_event(app, before)]
        assert announced == [
            ("notification.read", "read", mine[:3], None, {"unread": 2, "unseen": 2, "total": 5}),
            ("notification.updated", "unread", mine[1:3], None, {"unread": 4, "unseen": 2, "total": 5}),
            ("notification.updated", "archived", mine[:2], None, {"unread": 3, "unseen": 2, "total": 3}),
            ("notification.updated", "unarchived", mine[:1], None, {"unread": 3, "unseen": 2, "total": 4}),
            ("notification.deleted", None, [mine[3]], mine[3], {"unread": 1, "unseen": 0, "total": 2}),
            ("notification.deleted", None, [mine[4]], mine[4], {"unread": 1, "unseen": 0, "total": 2}),
        ]
        for bad in ({"ids": [], "action": "read"}, {"ids": [mine[0]] * 101, "action": "read"},
                    {"ids": [mine[0]], "action": "explode"}, {"ids": [mine[0]]}, {"ids": "x", "action": "read"}):
            assert (await client.post("/v1/notifications/bulk", json=bad, headers=ME)).status_code == 422, bad


async def test_actions_are_taken_once_and_tags_filter_all_of(app_settings: Settings) -> None:
    async with running_app(app_settings) as (app, client):
        created = await create(client, title="pr", actions=ACTIONS, tags=["pr", "repo:r1", "pr"])
        assert created.status_code == 201, created.text
        note = created.json()
        assert note["actions"] == [ACTIONS[0], {**ACTIONS[1], "url": None}] and note["tags"] == ["pr", "repo:r1"]
        assert (note["action_taken"], note["acted_at"]) == (None, None)
        await new(client, "other", tags=["pr"])
        await new(client, "untagged")
        for bad in ({"actions": [*ACTIONS, {"id": "third", "label": "3"}]}, {"actions": [ACTIONS[0], ACTIONS[0]]},
                    {"actions": [{"id": "x y", "label": "bad id"}]}, {"actions": [{"id": "x", "label": ""}]},
                    {"actions": [{"id": "x", "label": "js", "url": "javascript:alert(1)"}]},
                    {"tags": ["has space"]}, {"tags": [f"t{i}" for i in range(11)]}, {"tags": ["x" * 65]}):
            assert (await create(client, **bad)).status_code == 422, bad

        assert await listed(client, tag="pr") == ["other", "pr"]
        assert await listed(client, tag=["pr", "repo:r1"]) == ["pr"]
        assert await listed(client, tag=["repo:r1", "nope"]) == []
        assert (await client.get("/v1/notifications", params={"tag": "bad tag"}, headers=ME)).status_code == 422
        assert await listed(client, auth(token("u2")), tag="pr") == []

        url = f"/v1/notifications/{note['id']}/actions"
        assert (await client.post(f"{url}/nope", headers=ME)).status_code == 404
        assert (await client.post(f"{url}/review", headers=auth(token("u2")))).status_code == 404
        before = len(await events(app))
        taken = await client.post(f"{url}/review", headers=ME)
        assert taken.status_code == 200, taken.text
        assert taken.json()["action_taken"] == "review" and taken.json()["acted_at"] and taken.json()["read_at"]
        [(kind, data)] = await last_event(app, before)
        assert (kind, data["change"], data["action_id"], data["notification"]["action_taken"]) == (
            "notification.updated", "acted", "review", "review")
        assert carried(data) == await counts(client) == {"unread": 2, "unseen": 2, "total": 3}
        for second in ("review", "later"):
            conflict = await client.post(f"{url}/{second}", headers=ME)
            assert conflict.status_code == 409 and conflict.json()["code"] == "conflict"
        assert len(await events(app)) == before + 1


async def test_snooze_hides_then_brings_it_back_unread_once(app_settings: Settings, counted: Any) -> None:
    async with running_app(app_settings) as (app, client):
        a = await new(client, "a")
        await new(client, "b")
        await client.post(f"/v1/notifications/{a}/read", headers=ME)
        url = f"/v1/notifications/{a}"
        now = datetime.now(UTC)
        for until in (now - timedelta(seconds=1), now + timedelta(days=91), "2030-01-01T00:00:00", "soon"):
            text = until if isinstance(until, str) else until.isoformat()
            assert (await client.post(f"{url}/snooze", json={"until": text}, headers=ME)).status_code == 422, until

        before = len(await events(app))
        later = datetime.now(UTC) + timedelta(hours=1)
        snoozed = await client.post(f"{url}/snooze", json={"until": later.isoformat()}, headers=ME)
        assert snoozed.status_code == 200, snoozed.text
        assert snoozed.json()["snoozed_until"] == later.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert await listed(client) == ["b"] and await listed(client, status="snoozed") == ["a"]
        assert await listed(client, status="archived") == [] and await counts(client) == {"unread": 1, "unseen": 1, "total": 1}
        [(kind, data)] = await last_event(app, before)
        assert (kind, data["change"], carried(data)) == ("notification.updated", "snoozed", await counts(client))

        back = await client.post(f"{url}/unsnooze", headers=ME)
        assert back.status_code == 200 and back.json()["snoozed_until"] is None
        assert back.json()["read_at"] is None and back.json()["seen_at"] is None  # back as new
        [(kind, data)] = await last_event(app, before + 1)
        assert (kind, data["ids"], carried(data)) == ("notification.unsnoozed", [a], {"unread": 2, "unseen": 2, "total": 2})
        assert (await client.post(f"{url}/unsnooze", headers=ME)).json() == back.json()  # not snoozed: unchanged
        assert len(await events(app)) == before + 2

        # due: the relay's holder brings it back by itself, once
        due = datetime.now(UTC) + timedelta(seconds=1)
        assert (await client.post(f"{url}/snooze", json={"until": due.isoformat()}, headers=ME)).status_code == 200
        unsnoozed = await eventually(lambda: _unsnoozed(app, before + 3), timeout=WAIT)
        assert isinstance(unsnoozed, list) and len(unsnoozed) == 1
        lag_ms = unsnoozed[0].ms - due.timestamp() * 1000
        assert lag_ms >= 0, "came back before it was due"
        await asyncio.sleep(app_settings.outbox_poll_seconds * 3)  # turns of the clock after it fired
        assert len(await _unsnoozed(app, before + 3)) == 1
        assert await counts(client) == {"unread": 2, "unseen": 2, "total": 2}
        counted("snooze released", lag_ms=round(lag_ms), announced=1)


async def _unsnoozed(app: Any, after: int) -> list[Any]:
    log = app.state.services.log
    found = await log.read("t1", "user:u1", "0-0", await log.head(), 10_000)
    return [e for e in found[after:] if e.type == "notification.unsnoozed"]


# --------------------------------------------------------------------------------------------
# live: two tabs of one user on two processes (Postgres + Redis)
# --------------------------------------------------------------------------------------------


async def next_inbox_event(ws: Any) -> dict:
    while True:
        frame = await ws.next()
        assert isinstance(frame, dict), frame
        if str(frame.get("type", "")).startswith("notification."):
            return frame


async def test_two_tabs_on_two_processes_follow_every_change(live_servers: Any, redis_url: str, pg_url: str,
                                                             counted: Any) -> None:
    await migrate_and_empty(pg_url)
    servers: list[LiveServer] = [live_servers(DATABASE_URL=pg_url, OUTBOX_POLL_SECONDS="0.2") for _ in range(2)]
    tabs = [await ws_open(server) for server in servers]
    http = [httpx.AsyncClient(base_url=s.url, timeout=WAIT, trust_env=False) for s in servers]
    try:
        async def both() -> list[dict]:
            frames = [await next_inbox_event(tab) for tab in tabs]
            assert frames[0]["id"] == frames[1]["id"] and frames[0]["data"] == frames[1]["data"]
            stored = (await http[1].get("/v1/notifications/counts", headers=ME)).json()
            assert carried(frames[0]["data"]) == stored
            return frames

        publisher = auth(service_token())
        made = await http[0].post("/v1/notifications", headers=publisher,
                                  json={**N1, "title": "pr", "actions": ACTIONS, "tags": ["pr"]})
        assert made.status_code == 201, made.text
        a = made.json()["id"]
        assert (await both())[0]["type"] == "notification.created"
        other = (await http[1].post("/v1/notifications", headers=publisher, json={**N1, "title": "other"})).json()["id"]
        assert (await both())[0]["type"] == "notification.created"

        seen: list[tuple[str, Any]] = []

        async def step(server: int, method: str, path: str, **kwargs: Any) -> dict:
            response = await http[server].request(method, f"/v1/notifications{path}", headers=ME, **kwargs)
            assert response.status_code in (200, 204), response.text
            frame = (await both())[0]
            seen.append((frame["type"], frame["data"].get("change")))
            return frame

        acted = await step(1, "POST", f"/{a}/actions/later")
        assert acted["data"]["notification"]["action_taken"] == "later"
        due = datetime.now(UTC) + timedelta(seconds=1)
        await step(0, "POST", f"/{a}/snooze", json={"until": due.isoformat()})
        back = (await both())[0]  # nobody asked: the clock of whichever process holds the relay's lease
        assert back["type"] == "notification.unsnoozed" and back["data"]["notification"]["read_at"] is None
        lag_ms = int(back["id"].split("-")[0]) - due.timestamp() * 1000
        assert lag_ms >= 0
        await step(1, "POST", "/bulk", json={"ids": [a, other], "action": "archive"})
        await step(0, "POST", f"/{other}/unarchive")
        await step(1, "POST", "/archive-all")
        await step(0, "DELETE", f"/{other}")
        assert seen == [("notification.updated", "acted"), ("notification.updated", "snoozed"),
                        ("notification.updated", "archived"), ("notification.updated", "unarchived"),
                        ("notification.updated", "archived"), ("notification.deleted", None)]
        counted("two tabs, two processes", changes=len(seen) + 1, snooze_lag_ms=round(lag_ms))
    finally:
        for tab in tabs:
            await tab.aclose()
        for client in http:
            await client.aclose()


async def test_a_snooze_survives_a_restart_and_fires_once_across_processes(live_servers: Any, redis_url: str,
                                                                           pg_url: str, counted: Any) -> None:
    await migrate_and_empty(pg_url)
    first = live_servers(DATABASE_URL=pg_url, OUTBOX_POLL_SECONDS="0.2")
    async with httpx.AsyncClient(base_url=first.url, timeout=WAIT, trust_env=False) as http:
        made = await http.post("/v1/notifications", headers=auth(service_token()), json={**N1, "title": "later"})
        a = made.json()["id"]
        due = datetime.now(UTC) + timedelta(seconds=3)
        assert (await http.post(f"/v1/notifications/{a}/snooze", json={"until": due.isoformat()}, headers=ME)).status_code == 200
        cursor = (await http.get("/v1/poll", params={"timeout": 0}, headers=ME)).json()["cursor"]
    first.stop()  # down before it is due
    while datetime.now(UTC) < due:
        await asyncio.sleep(0.1)
    started = time.monotonic()
    servers = [live_servers(DATABASE_URL=pg_url, OUTBOX_POLL_SECONDS="0.2") for _ in range(3)]
    async with httpx.AsyncClient(timeout=WAIT, trust_env=False) as http:
        async def unsnoozed() -> list[dict]:
            body = (await http.get(f"{servers[0].url}/v1/poll", params={"timeout": 0, "since": cursor}, headers=ME)).json()
            return [e for e in body["events"] if e["type"] == "notification.unsnoozed"]

        assert await eventually(unsnoozed, timeout=WAIT)
        await asyncio.sleep(1.0)  # several turns of three clocks after it fired
        assert len(await unsnoozed()) == 1
        counts_now = (await http.get(f"{servers[2].url}/v1/notifications/counts", headers=ME)).json()
        assert counts_now == {"unread": 1, "unseen": 1, "total": 1}
    counted("snooze across a restart", processes=3, announced=1, seconds_after_start=round(time.monotonic() - started, 2))

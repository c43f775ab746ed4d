"""Inbox writes serialized across processes (app/notifications/store.py `lock_inbox`: a
transaction-scoped Postgres advisory lock per inbox): two real servers on one Postgres database
and one Redis log, hammered concurrently on the same user's inbox (creates, read, unread,
archive, read-all, seen-all). Every change's event carries the counts its own commit left, so
replaying the events in log order must give each count they announce exactly, and end where the
database is. Without the lock, two transactions count before either commits and announce the same
count (a lost update), or reach the log out of commit order.

The tables live in a Postgres database of this module's own (tests/notify_support.py `pg_url`),
emptied before the test."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
from sqlalchemy import NullPool, func, select

from app import db
from app.notifications.models import Notification
from app.settings import Settings
from tests.conftest import LiveServer, auth, service_token, token
from tests.notify_support import (
    migrate_and_empty,
    pg_url,  # noqa: F401  (fixture)
)

TIMEOUT = 60.0
WORKERS_PER_SERVER = 6
OPS_PER_WORKER = 25
# (operation, weight): creates dominate so the inbox keeps unread rows for the others to change
OPERATIONS = [("create", 10), ("read", 5), ("unread", 2), ("archive", 1), ("read_all", 1), ("seen_all", 1)]


async def poll_all(http: httpx.AsyncClient, cursor: str) -> list[dict]:
    """Every event on u1's channels after `cursor`, in log order (poll pages until none are left)."""
    found: list[dict] = []
    while True:
        response = await http.get("/v1/poll", params={"since": cursor, "timeout": 0}, headers=auth(token()))
        assert response.status_code == 200, response.text
        body = response.json()
        assert not body["reset"]
        if not body["events"]:
            return found
        found += body["events"]
        cursor = body["cursor"]


def replay(events: list[dict]) -> tuple[set[str], set[str]]:
    """Apply each inbox event in log order to the (unread, unseen) ids it implies, checking that
    the counts it announces are exactly what the changes before it and its own change leave."""
    unread: set[str] = set()
    unseen: set[str] = set()
    for position, event in enumerate(events):
        data = event["data"]
        change = data.get("change")
        if data.get("all"):  # read-all, seen-all: every counted row changes
            assert (event["type"], change) in (("notification.read", "read"), ("notification.updated", "seen")), event
            if change == "read":
                unread.clear()
            unseen.clear()
        else:  # one row: created, read, unread, archived; the event carries the row as that change left it
            note = data["notification"]
            assert event["type"] == "notification.created" or data["ids"] == [note["id"]], event
            assert event["type"] != "notification.created" or note["archived_at"] is None  # nothing filed away
            for ids, column in ((unread, "read_at"), (unseen, "seen_at")):
                if note[column] is None and note["archived_at"] is None:
                    ids.add(note["id"])
                else:
                    ids.discard(note["id"])
        announced = (data["unread_count"], data["unseen_count"])
        assert announced == (len(unread), len(unseen)), (
            f"event {position} of {len(events)} ({event['type']} {change or ''}) announces unread/unseen {announced}, "
            f"but the changes before it leave {(len(unread), len(unseen))}: a lost update or events out of commit order")
    return unread, unseen


async def test_two_processes_writing_one_inbox_announce_exact_counts(live_servers: Any, redis_url: str, pg_url: str) -> None:
    await migrate_and_empty(pg_url)
    servers: list[LiveServer] = [live_servers(redis=True, DATABASE_URL=pg_url) for _ in range(2)]
    assert servers[0].process and servers[1].process and servers[0].process.pid != servers[1].process.pid
    me = auth(token())
    publisher = auth(service_token())
    clients = [httpx.AsyncClient(base_url=s.url, timeout=TIMEOUT, trust_env=False) for s in servers]
    try:
        cursor = (await clients[0].get("/v1/poll", params={"timeout": 0}, headers=me)).json()["cursor"]
        created: list[str] = []
        statuses: list[tuple[str, int]] = []
        rng = random.Random(11)
        names = [name for name, _ in OPERATIONS]
        weights = [weight for _, weight in OPERATIONS]

        async def worker(http: httpx.AsyncClient, n: int) -> None:
            for i in range(OPS_PER_WORKER):
                op = rng.choices(names, weights)[0] if created else "create"
                if op == "create":
                    response = await http.post("/v1/notifications", headers=publisher, json={
                        "tenant": "t1", "user_id": "u1", "type": "mention", "title": f"w{n} #{i}", "message": "look"})
                    if response.status_code == 201:
                        created.append(response.json()["id"])
                elif op in ("read", "unread", "archive"):
                    response = await http.post(f"/v1/notifications/{rng.choice(created)}/{op}", headers=me)
                else:
                    response = await http.post(f"/v1/notifications/{op.replace('_', '-')}", headers=me)
                statuses.append((op, response.status_code))

        await asyncio.wait_for(asyncio.gather(*(worker(clients[n % 2], n) for n in range(2 * WORKERS_PER_SERVER))),
                               TIMEOUT * 3)
        assert [s for s in statuses if s[1] not in (200, 201)] == []
        assert len(statuses) == 2 * WORKERS_PER_SERVER * OPS_PER_WORKER

        # each write publishes its events right after its commit, before it answers, so once every
        # request has answered they are all in the log; both processes read the same log
        events = [e for e in await poll_all(clients[0], cursor) if e["type"].startswith("notification.")]
        assert [e["id"] for e in events] == [e["id"] for e in await poll_all(clients[1], cursor)
                                             if e["type"].startswith("notification.")]
        assert all(e["channel"] == "user:u1" for e in events)
        assert sorted(e["data"]["notification"]["id"] for e in events if e["type"] == "notification.created") == sorted(created)
        assert {e["data"].get("change") for e in events} == {None, "read", "unread", "archived", "seen"}  # every kind happened
        unread, unseen = replay(events)

        # what is stored: the same on both processes, and the rows themselves
        for http in clients:
            counts = (await http.get("/v1/notifications/counts", headers=me)).json()
            assert (counts["unread"], counts["unseen"]) == (len(unread), len(unseen)), counts
        engine = db.create_engine(Settings(database_url=pg_url), poolclass=NullPool)
        try:
            async with engine.connect() as connection:
                stored = set(await connection.scalars(select(Notification.id).where(
                    Notification.tenant == "t1", Notification.user_id == "u1", Notification.read_at.is_(None),
                    Notification.archived_at.is_(None))))
                rows = await connection.scalar(select(func.count()).select_from(Notification))
        finally:
            await engine.dispose()
        assert stored == unread
        assert rows == len(created)
    finally:
        for http in clients:
            await http.aclose()

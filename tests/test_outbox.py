"""The transactional outbox (app/notifications/outbox.py), proven with counts on SQLite (a file
database) and on Postgres, each with Redis as the log and the push queue (so processes share them):

1. the commit fails after the outbox row was written: an error answered, nothing stored, announced
   or pushed;
2. Redis away while notifications are created and changed: each answered (stored); once Redis is
   back each change is announced exactly once, in commit order per inbox, carrying the counts the
   database gave right after that change;
3. a process SIGKILLed between commit and publish: another process announces every stored
   notification exactly once, and nothing that is not stored;
4. a process SIGKILLed in the middle of a relay drain of thousands of rows: the next one finishes
   it, exactly once and in order per inbox;
5. the relay's (and the writer's) DELETE fails after the append and the push put succeeded: the
   next turn appends and pushes nothing twice;
6. the database away while rows are pending, and in the middle of a relay turn (after its append):
   once it is back, exactly once.

Exactly once is read from Redis itself: each inbox's index stream `<prefix>:ch:<tenant>:user:<id>`
(and the log `<prefix>:log`) for events, the push stream's `entries-added` and the fake push
service's deliveries for pushes. Every wait is for a condition with a deadline; the few sleeps hold
a fault open, they time nothing.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
import redis as sync_redis
from prometheus_client import REGISTRY
from sqlalchemy import NullPool, event, func, select, text
from sqlalchemy.engine import make_url

from app import db
from app.core.publish import prepare
from app.notifications.models import Notification, OutboxEntry
from app.rules import user_channel
from app.settings import Settings
from app.sql import utcnow
from tests.conftest import REDIS_URL, auth, eventually, running_app, service_token, token
from tests.notify_support import (
    FakePushService,
    fake_push_service,
    pg_url,  # noqa: F401  (fixture)
)
from tests.test_faults import TcpProxy

WAIT = 30.0  # the longest one condition may take (a deadline that turns a hang into a failure)
TENANT = "t1"
TABLES = ("outbox", "leases", "notification_tags", "notifications", "notification_preferences", "push_subscriptions")
FAST_RELAY = {"OUTBOX_POLL_SECONDS": "0.1", "OUTBOX_LEASE_SECONDS": "2"}  # a killed holder is replaced in 2 s


# --------------------------------------------------------------------------------------------
# the two databases, and reading what is stored
# --------------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
async def database(database_url: str, redis_url: str) -> str:
    """The database migrated, with no rows in any table (the outbox and the lease included)."""
    engine = db.create_engine(Settings(database_url=database_url), poolclass=NullPool)
    try:
        await db.run_migrations_async(engine)
        async with engine.begin() as connection:
            for table in TABLES:
                await connection.execute(text(f"DELETE FROM {table}"))
    finally:
        await engine.dispose()
    return database_url


class Stored:
    """What the database holds, read on a connection of the test's own."""

    def __init__(self, url: str) -> None:
        self.engine = db.create_engine(Settings(database_url=url), poolclass=NullPool)

    async def notifications(self) -> list[tuple[str, str, str]]:
        """(user, id, title) of every stored notification."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(select(Notification.user_id, Notification.id, Notification.title))
            return [(row[0], row[1], row[2]) for row in rows]

    async def pending(self) -> int:
        async with self.engine.connect() as connection:
            return await connection.scalar(select(func.count()).select_from(OutboxEntry)) or 0

    async def close(self) -> None:
        await self.engine.dispose()


@pytest.fixture
async def stored(database: str) -> AsyncIterator[Stored]:
    reader = Stored(database)
    yield reader
    await reader.close()


# --------------------------------------------------------------------------------------------
# reading Redis directly: the log, each inbox's index stream, the push stream
# --------------------------------------------------------------------------------------------


class Announced:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.redis = sync_redis.Redis.from_url(REDIS_URL)

    def inbox(self, user: str) -> list[tuple[str, str, dict[str, Any]]]:
        """(id, type, data) of every event on user:<user>, in log order."""
        entries = self.redis.xrange(f"{self.prefix}:ch:{TENANT}:user:{user}")
        return [(i.decode(), f[b"type"].decode(), orjson.loads(f[b"data"])) for i, f in entries]

    def log(self) -> list[dict[str, Any]]:
        return [{"id": i.decode(), **{k.decode(): v.decode() for k, v in f.items()}}
                for i, f in self.redis.xrange(f"{self.prefix}:log")]

    def count(self) -> int:
        return int(self.redis.xlen(f"{self.prefix}:log"))

    def push_jobs_added(self) -> int:
        """Every job ever put on the push stream (a worker deletes the ones it settled)."""
        try:
            return int(self.redis.xinfo_stream(f"{self.prefix}:push")["entries-added"])
        except sync_redis.ResponseError:  # no such stream: nothing was ever put
            return 0

    def close(self) -> None:
        self.redis.close()


@pytest.fixture
def announced(prefix: str, redis_url: str) -> Iterator[Announced]:
    reader = Announced(prefix)
    yield reader
    reader.close()


def created_ids(events: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    return [data["notification"]["id"] for _, kind, data in events if kind == "notification.created"]


def duplicates(ids: list[str]) -> int:
    return sum(n - 1 for n in Counter(ids).values())


# --------------------------------------------------------------------------------------------
# clients, servers, proxies
# --------------------------------------------------------------------------------------------


def note(user: str, title: str, **fields: Any) -> dict[str, Any]:
    return {"tenant": TENANT, "user_id": user, "type": "mention", "title": title, "message": "look", **fields}


@pytest.fixture
def proxies() -> Iterator[Callable[[int], TcpProxy]]:
    started: list[TcpProxy] = []

    def start(target_port: int) -> TcpProxy:
        proxy = TcpProxy(target_port).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.close()


def through(url: str, proxy: TcpProxy) -> str:
    return make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


@pytest.fixture
def redis_proxy(proxies: Callable[[int], TcpProxy], redis_url: str) -> TcpProxy:
    return proxies(urlsplit(redis_url).port or 6379)


def redis_through(proxy: TcpProxy) -> str:
    return f"redis://127.0.0.1:{proxy.port}/0"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(WAIT, connect=5.0), trust_env=False) as client:
        yield client


async def create(http: httpx.AsyncClient, base: str, user: str, title: str) -> dict[str, Any]:
    response = await http.post(f"{base}/v1/notifications", json=note(user, title), headers=auth(service_token()))
    assert response.status_code == 201, response.text
    return response.json()


async def create_many(http: httpx.AsyncClient, base: str, users: list[str], per_user: int, *, concurrency: int = 8) -> None:
    """`per_user` notifications for each user, titled `<user> #<n>`: each user's one after the
    other (so in that order), the users side by side, `concurrency` requests at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def lane(user: str) -> None:
        for n in range(per_user):
            async with gate:
                await create(http, base, user, f"{user} #{n}")

    await asyncio.gather(*(lane(user) for user in users))


def seq(title: str) -> int:
    return int(title.rsplit("#", 1)[1])


# --------------------------------------------------------------------------------------------
# in-process apps, and faults injected at the driver
# --------------------------------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakePushService]:
    async with fake_push_service() as service:
        yield service


def in_process(make_settings: Callable[..., Settings], database_url: str, redis_url: str = REDIS_URL) -> Settings:
    return make_settings(database_url=database_url, redis_url=redis_url, push_allowed_endpoints="http://127.0.0.1:",
                         outbox_poll_seconds=0.1, push_retry_base_seconds=0.05)


async def subscribe(client: httpx.AsyncClient, fake: FakePushService, name: str, user: str) -> None:
    response = await client.post("/v1/push/subscriptions", json=fake.browser(name).subscription(fake.endpoint(name)),
                                 headers=auth(token(user, TENANT)))
    assert response.status_code == 201, response.text


async def knows_vapid(client: httpx.AsyncClient, fake: FakePushService) -> None:
    response = await client.get("/v1/push/vapid-public-key", headers=auth(token()))
    fake.vapid_public_key = response.json()["public_key"]


def delivered(fake: FakePushService) -> Counter[tuple[str, str]]:
    """(subscription name, notification id) -> pushes the fake push service received."""
    assert [r.problem for r in fake.received if r.problem] == []
    return Counter((r.name, r.payload["id"]) for r in fake.received if r.payload)


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def in_relay() -> bool:
    task = asyncio.current_task()
    return task is not None and task.get_name() == "outbox-relay"


def dbapi_error(engine: Any, message: str) -> Exception:
    """The driver's own OperationalError, so SQLAlchemy handles it as it would a real one."""
    return engine.sync_engine.dialect.loaded_dbapi.OperationalError(message)


class CommitFails:
    """The COMMIT of the next `arm(n)` transactions that changed notifications fails (rolled back,
    then the driver's OperationalError), as a commit that loses its connection or its server
    does; `after_outbox_row` counts those that had written their outbox row (all of them, if the
    row is in the change's own transaction)."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.left, self.failed, self.after_outbox_row = engine, 0, 0, 0
        sync = engine.sync_engine
        self._original = sync.dialect.do_commit
        event.listen(sync, "before_cursor_execute", self._saw)
        event.listen(sync, "rollback", self._forget)
        sync.dialect.do_commit = self._commit

    def arm(self, times: int = 1) -> None:
        self.left = times

    def _saw(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        words = statement.split(None, 3)[:3]
        if [w.upper() for w in words[:2]] == ["INSERT", "INTO"] and words[2:] == ["outbox"]:
            conn.info["outbox written"] = True
        elif words[:1] in (["INSERT"], ["UPDATE"]) and "notifications" in words[1:3]:
            conn.info["change written"] = True

    def _forget(self, conn: Any) -> None:
        conn.info.pop("outbox written", None)
        conn.info.pop("change written", None)

    def _commit(self, dbapi_connection: Any) -> None:
        change = dbapi_connection.info.pop("change written", False)
        outbox_row = dbapi_connection.info.pop("outbox written", False)
        if change and self.left > 0:
            self.left -= 1
            self.failed += 1
            self.after_outbox_row += outbox_row
            dbapi_connection.rollback()
            raise dbapi_error(self.engine, "injected: the COMMIT failed")
        self._original(dbapi_connection)

    def remove(self) -> None:
        sync = self.engine.sync_engine
        event.remove(sync, "before_cursor_execute", self._saw)
        event.remove(sync, "rollback", self._forget)
        sync.dialect.do_commit = self._original


class DeleteFails:
    """`DELETE FROM outbox` fails (the driver's OperationalError): always for writers while
    `writers` is set, and the relay's next `relay` times."""

    def __init__(self, engine: Any, *, writers: bool, relay: int) -> None:
        self.engine, self.writers, self.relay = engine, writers, relay
        self.failed = Counter[str]()
        event.listen(engine.sync_engine, "before_cursor_execute", self._check)

    def _check(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.lstrip().upper().startswith("DELETE FROM OUTBOX"):
            return
        relay = in_relay()
        if relay and self.relay > 0:
            self.relay -= 1
        elif relay or not self.writers:
            return
        self.failed["relay" if relay else "writer"] += 1
        raise dbapi_error(self.engine, "injected: the DELETE failed")

    def remove(self) -> None:
        event.remove(self.engine.sync_engine, "before_cursor_execute", self._check)


class Attempts:
    """Counts what the outbox hands the log and the push queue (repeats included)."""

    def __init__(self, outbox: Any) -> None:
        self.appends = 0
        self.puts = 0
        log, queue = outbox.log, outbox.queue
        append_many, put = log.append_many, queue.put

        async def counting_append_many(items: Any) -> Any:
            result = await append_many(items)
            self.appends += len(items)
            return result

        async def counting_put(jobs: Any) -> None:
            await put(jobs)
            self.puts += len(jobs)

        log.append_many = counting_append_many
        queue.put = counting_put


# --------------------------------------------------------------------------------------------
# 1. the commit fails after the outbox row was written
# --------------------------------------------------------------------------------------------


DOOMED_BY_POSTGRES = ("""
CREATE OR REPLACE FUNCTION test_outbox_doomed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.data LIKE '%doomed by the database%' THEN
    RAISE EXCEPTION 'could not serialize access' USING ERRCODE = 'serialization_failure';
  END IF;
  RETURN NULL;
END $$""", """
CREATE CONSTRAINT TRIGGER test_outbox_doomed AFTER INSERT ON outbox DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION test_outbox_doomed()""")


async def test_a_commit_that_fails_after_the_outbox_row_is_written_announces_and_pushes_nothing(
        database: str, stored: Stored, announced: Announced, make_settings: Callable[..., Settings],
        fake: FakePushService, counted: Any) -> None:
    is_postgres = make_url(database).get_backend_name() == "postgresql"
    if is_postgres:  # a real failure at COMMIT too: a deferred constraint trigger that raises
        async with stored.engine.begin() as connection:
            for statement in DOOMED_BY_POSTGRES:
                await connection.exec_driver_sql(statement)
    try:
        async with running_app(in_process(make_settings, database)) as (app, client):
            await knows_vapid(client, fake)
            for name in ("laptop", "phone"):
                await subscribe(client, fake, name, "u1")
            publisher, me = auth(service_token()), auth(token("u1"))
            kept = [(await client.post("/v1/notifications", json=note("u1", "kept #0"), headers=publisher)).json()]
            await eventually(lambda: announced.count() == 1, timeout=WAIT)

            failing = CommitFails(app.state.services.engine)
            refused: list[tuple[str, int]] = []
            try:
                for what, request in [
                    ("create", lambda: client.post("/v1/notifications", json=note("u1", "doomed #1"), headers=publisher)),
                    ("read", lambda: client.post(f"/v1/notifications/{kept[0]['id']}/read", headers=me)),
                    ("read-all", lambda: client.post("/v1/notifications/read-all", headers=me)),
                    ("delete", lambda: client.delete(f"/v1/notifications/{kept[0]['id']}", headers=me)),
                ]:
                    failing.arm(1)
                    response = await request()
                    assert (response.status_code, response.json()["code"]) == (503, "unavailable"), (what, response.text)
                    refused.append((what, response.status_code))
                assert failing.failed == len(refused)
            finally:
                failing.remove()
            if is_postgres:
                # a serialization failure at COMMIT: nothing changed, retry (503 busy, not a 500)
                transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
                async with httpx.AsyncClient(transport=transport, base_url="http://app") as answering:
                    response = await answering.post("/v1/notifications", json=note("u1", "doomed by the database"),
                                                    headers=publisher)
                assert (response.status_code, response.json()["code"]) == (503, "busy"), response.text
                refused.append(("create, the trigger", response.status_code))

            kept.append((await client.post("/v1/notifications", json=note("u1", "kept #1"), headers=publisher)).json())

            async def settled() -> bool:  # the push worker sent what was queued, the outbox is empty
                return await stored.pending() == 0 and sum(delivered(fake).values()) >= 4

            await eventually(settled, timeout=WAIT)
            rows = await stored.notifications()
            events = announced.inbox("u1")
            pushes = delivered(fake)
            counts = (await client.get("/v1/notifications/counts", headers=me)).json()
    finally:
        if is_postgres:
            async with stored.engine.begin() as connection:
                await connection.exec_driver_sql("DROP TRIGGER test_outbox_doomed ON outbox")
                await connection.exec_driver_sql("DROP FUNCTION test_outbox_doomed()")

    kept_ids = [n["id"] for n in kept]
    assert sorted(row[1] for row in rows) == sorted(kept_ids)  # nothing of the failed commits stored ...
    assert counts == {"unread": 2, "unseen": 2, "total": 2}  # ... nor changed (kept #0 still unread, not deleted)
    assert [(what_it_says(kind, data), data["counts"]) for _, kind, data in events] == [
        (("notification.created", None, [kept_ids[0]]), {"unread": 1, "unseen": 1, "total": 1}),
        (("notification.created", None, [kept_ids[1]]), {"unread": 2, "unseen": 2, "total": 2}),
    ]  # ... nor announced: only the two kept, the second counting only what is stored
    assert announced.count() == 2
    assert announced.push_jobs_added() == 4  # ... nor pushed: two subscriptions x two kept
    assert pushes == {(name, id_): 1 for name in ("laptop", "phone") for id_ in kept_ids}
    assert failing.after_outbox_row == failing.failed  # each commit failed after its outbox row was written
    counted("commit fails after the outbox row", refused=len(refused),
            stored_of_refused=sum(1 for row in rows if "doomed" in row[2]),
            announced_of_refused=sum(1 for e in announced.log() if "doomed" in e["data"] or '"read"' in e["data"]),
            pushed_of_refused=sum(n for (_, id_), n in pushes.items() if id_ not in kept_ids),
            stored=len(rows), announced=announced.count(), push_jobs=announced.push_jobs_added(),
            statuses=" ".join(f"{what}:{status}" for what, status in refused))


# --------------------------------------------------------------------------------------------
# 2. Redis away at create time
# --------------------------------------------------------------------------------------------


def what_it_says(kind: str, data: dict[str, Any]) -> tuple[str, str | None, Any]:
    """An inbox event as (type, change, ids): what the replay compares with what was done."""
    if kind == "notification.created":
        return kind, None, [data["notification"]["id"]]
    return kind, data.get("change"), "all" if data.get("all") else data["ids"]


class Script:
    """One user's inbox, changed step by step while Redis is away; after each step, what it
    should announce (None: it changed nothing) and the counts the database then gives."""

    def __init__(self, http: httpx.AsyncClient, base: str, user: str) -> None:
        self.http, self.base, self.user = http, base, user
        self.me = auth(token(user, TENANT))
        self.ids: dict[str, str] = {}
        self.steps: list[tuple[tuple[str, str | None, Any], dict[str, int]]] = []  # (announced, counts after)
        self.quiet = 0  # steps that changed nothing, so announce nothing

    async def _then(self, response: httpx.Response, says: tuple[str, str | None, Any] | None) -> None:
        assert response.status_code in (200, 201, 204), response.text  # answered while Redis is away
        counts = (await self.http.get(f"{self.base}/v1/notifications/counts", headers=self.me)).json()
        if says is None:
            self.quiet += 1
        else:
            self.steps.append((says, counts))

    async def create(self, name: str) -> None:
        response = await self.http.post(f"{self.base}/v1/notifications", json=note(self.user, f"{self.user} {name}"),
                                         headers=auth(service_token()))
        self.ids[name] = response.json()["id"]
        await self._then(response, ("notification.created", None, [self.ids[name]]))

    async def mark(self, name: str, action: str, says: tuple[str, str | None] | None) -> None:
        response = await self.http.post(f"{self.base}/v1/notifications/{self.ids[name]}/{action}", headers=self.me)
        await self._then(response, None if says is None else (*says, [self.ids[name]]))

    async def all(self, action: str, says: tuple[str, str]) -> None:
        response = await self.http.post(f"{self.base}/v1/notifications/{action}", headers=self.me)
        await self._then(response, (*says, "all"))

    async def delete(self, name: str) -> None:
        response = await self.http.delete(f"{self.base}/v1/notifications/{self.ids[name]}", headers=self.me)
        await self._then(response, ("notification.deleted", None, [self.ids[name]]))

    async def bulk(self, names: list[str], action: str, says: tuple[str, str]) -> None:
        ids = [self.ids[name] for name in names]
        response = await self.http.post(f"{self.base}/v1/notifications/bulk", json={"ids": ids, "action": action},
                                        headers=self.me)
        await self._then(response, (*says, ids))

    async def run(self) -> None:
        for name in "abcd":
            await self.create(name)
        await self.mark("b", "read", ("notification.read", "read"))
        await self.mark("b", "read", None)  # already read: nothing to announce
        await self.mark("c", "archive", ("notification.updated", "archived"))
        await self.mark("b", "unread", ("notification.updated", "unread"))
        await self.all("seen-all", ("notification.updated", "seen"))
        for name in "ef":
            await self.create(name)
        await self.delete("a")
        await self.bulk(["d", "e"], "read", ("notification.read", "read"))
        await self.all("read-all", ("notification.read", "read"))
        await self.mark("c", "unarchive", ("notification.updated", "unarchived"))
        await self.create("g")


async def test_changes_made_while_redis_is_away_are_announced_once_back_exactly_once_in_commit_order(
        live_servers: Any, database: str, stored: Stored, announced: Announced, redis_proxy: TcpProxy,
        http: httpx.AsyncClient, counted: Any) -> None:
    server = live_servers(redis=False, REDIS_URL=redis_through(redis_proxy), DATABASE_URL=database, **FAST_RELAY)
    redis_proxy.cut()
    scripts = [Script(http, server.url, f"r{i}") for i in range(3)]
    await asyncio.gather(*(script.run() for script in scripts))  # the inboxes side by side, each in order
    expected = sum(len(script.steps) for script in scripts)
    assert announced.count() == 0  # nothing reached Redis ...
    assert await stored.pending() == expected  # ... each change is stored with its event, pending

    redis_proxy.restore()

    async def all_announced() -> bool:
        return await stored.pending() == 0 and announced.count() >= expected

    await eventually(all_announced, timeout=WAIT)
    for script in scripts:
        events = announced.inbox(script.user)
        # exactly once and in commit order: the events are the steps, one for one, in order ...
        assert [what_it_says(kind, data) for _, kind, data in events] == [says for says, _ in script.steps]
        for (_, _, data), (says, counts) in zip(events, script.steps, strict=True):
            # ... each carrying the counts the database gave right after its change
            assert data["counts"] == counts, (script.user, says, data["counts"], counts)
            assert (data["unread_count"], data["unseen_count"]) == (counts["unread"], counts["unseen"])
        final = (await http.get(f"{server.url}/v1/notifications/counts", headers=script.me)).json()
        assert events[-1][2]["counts"] == final
    assert announced.count() == expected
    counted("Redis away at create time", changes=expected, unchanged_steps=sum(s.quiet for s in scripts),
            stored=len(await stored.notifications()), announced=announced.count(),
            duplicates=duplicates([e["channel"] + e["data"] for e in announced.log()]), counts_checked=expected)


# --------------------------------------------------------------------------------------------
# 3. kill -9 between commit and publish
# --------------------------------------------------------------------------------------------


async def test_a_process_killed_between_commit_and_publish_is_announced_by_the_next_exactly_once(
        live_servers: Any, database: str, stored: Stored, announced: Announced, redis_proxy: TcpProxy,
        http: httpx.AsyncClient, counted: Any) -> None:
    a = live_servers(redis=False, REDIS_URL=redis_through(redis_proxy), DATABASE_URL=database, **FAST_RELAY)
    redis_proxy.cut()
    users, per_user = [f"k{i}" for i in range(4)], 10
    started = time.monotonic()
    await create_many(http, a.url, users, per_user)
    print(f"{len(users) * per_user} creates with Redis cut in {time.monotonic() - started:.2f} s")
    # a burst in flight when A dies (one notification each to users of their own): some commit,
    # some do not, and their callers hear nothing either way; the database says which are stored
    burst = [f"b{i}" for i in range(20)]
    requests = [asyncio.create_task(http.post(f"{a.url}/v1/notifications", json=note(user, f"{user} #0"),
                                              headers=auth(service_token()))) for user in burst]
    await eventually(lambda: any(r.done() for r in requests), timeout=WAIT, interval=0.001)
    a.stop(kill=True)
    answers = await asyncio.gather(*requests, return_exceptions=True)
    answered_in_burst = sum(1 for r in answers if isinstance(r, httpx.Response) and r.status_code == 201)

    rows = await stored.notifications()
    in_burst = [row for row in rows if row[0] in burst]
    assert len(rows) == len(users) * per_user + len(in_burst)
    assert announced.count() == 0  # A never reached Redis: every stored change is still in the outbox
    assert await stored.pending() == len(rows)

    live_servers(redis=True, DATABASE_URL=database, **FAST_RELAY)  # B, with Redis

    async def drained() -> bool:
        return await stored.pending() == 0 and announced.count() >= len(rows)

    await eventually(drained, timeout=WAIT)
    log = announced.log()
    by_id = {row[1]: row for row in rows}
    announced_ids = [orjson.loads(e["data"])["notification"]["id"] for e in log]
    assert [e["type"] for e in log] == ["notification.created"] * len(log)
    assert duplicates(announced_ids) == 0
    assert set(announced_ids) - set(by_id) == set()  # nothing announced that is not stored
    assert set(announced_ids) == set(by_id)  # everything stored announced
    for user in users:  # in commit order per inbox
        titles = [by_id[i][2] for i in created_ids(announced.inbox(user))]
        assert titles == [f"{user} #{n}" for n in range(per_user)], (user, titles)
    counted("killed between commit and publish", stored=len(rows), answered=len(users) * per_user + answered_in_burst,
            stored_but_unanswered=len(in_burst) - answered_in_burst, announced=len(log),
            duplicates=duplicates(announced_ids), announced_not_stored=len(set(announced_ids) - set(by_id)))


# --------------------------------------------------------------------------------------------
# 5. the window inside a batch: appended and pushed, not deleted
# --------------------------------------------------------------------------------------------


async def test_a_delete_that_fails_after_the_append_and_the_push_publishes_nothing_twice(
        database: str, stored: Stored, announced: Announced, make_settings: Callable[..., Settings],
        fake: FakePushService, counted: Any) -> None:
    subscriptions = {"w1": ["laptop", "phone"], "w2": ["tablet"], "w3": []}
    async with running_app(in_process(make_settings, database)) as (app, client):
        await knows_vapid(client, fake)
        for user, names in subscriptions.items():
            for name in names:
                await subscribe(client, fake, name, user)
        services = app.state.services
        attempts = Attempts(services.outbox)
        errors_before = metric("realtime_outbox_relay_errors_total")
        # every writer's DELETE fails (so every create re-publishes its inbox's pending rows, and
        # leaves them), and the relay's while the writes go on, then two more: each time after
        # the append and the put
        failing = DeleteFails(services.engine, writers=True, relay=1_000_000)
        created: dict[str, list[str]] = {user: [] for user in subscriptions}
        try:
            for n in range(3):
                for user in subscriptions:
                    response = await client.post("/v1/notifications", json=note(user, f"{user} #{n}"),
                                                 headers=auth(service_token()))
                    assert response.status_code == 201, response.text  # the commit stands
                    created[user].append(response.json()["id"])
            # a change that answers with its row: the failed publish must not spoil the answer (it was
            # a 500 when the writer's publish shared the request's session, which the rollback expired)
            read = await client.post(f"/v1/notifications/{created['w1'][0]}/read", headers=auth(token("w1")))
            assert read.status_code == 200 and read.json()["read_at"] is not None, read.text
            rows = 3 * len(subscriptions) + 1
            assert announced.count() == rows  # every change in the log once already (by its writer) ...
            assert await stored.pending() == rows  # ... and still in the outbox
            during_writes = failing.failed["relay"]
            failing.relay = 2

            async def relayed() -> bool:  # the relay failed twice in the window, then deleted the lot
                return failing.relay == 0 and await stored.pending() == 0

            await eventually(relayed, timeout=WAIT)
        finally:
            failing.remove()
        assert failing.failed["relay"] == during_writes + 2
        assert metric("realtime_outbox_relay_errors_total") - errors_before >= failing.failed["relay"]
        jobs = sum(3 * len(names) for names in subscriptions.values())
        await eventually(lambda: sum(delivered(fake).values()) >= jobs, timeout=WAIT)
        # one more after the fault, published by its writer as usual
        last = (await client.post("/v1/notifications", json=note("w2", "w2 #3"), headers=auth(service_token()))).json()
        created["w2"].append(last["id"])
        await eventually(lambda: sum(delivered(fake).values()) >= jobs + 1, timeout=WAIT)
        assert await stored.pending() == 0

    # the log: each change once, in order per inbox
    for user, ids in created.items():
        events = announced.inbox(user)
        assert created_ids(events) == ids
        expected = len(ids) + (1 if user == "w1" else 0)
        assert len(events) == expected, (user, [kind for _, kind, _ in events])
    assert [kind for _, kind, _ in announced.inbox("w1")][-1] == "notification.read"
    # the push queue: one job per subscription per notification, each delivered once
    pushes = delivered(fake)
    assert pushes == {(name, id_): 1 for user, names in subscriptions.items() for name in names for id_ in created[user]}
    assert announced.push_jobs_added() == jobs + 1
    counted("DELETE fails after append and push", rows=rows + 1, appends_attempted=attempts.appends,
            announced=announced.count(), push_jobs_attempted=attempts.puts, push_jobs_queued=announced.push_jobs_added(),
            pushes_delivered=sum(pushes.values()), failed_deletes_writer=failing.failed["writer"],
            failed_deletes_relay=failing.failed["relay"], duplicates=duplicates([e["data"] for e in announced.log()]))


# --------------------------------------------------------------------------------------------
# 6. the database away while rows are pending, and in the middle of a relay turn
# --------------------------------------------------------------------------------------------


class DatabaseAway:
    """Postgres: a proxy in front of it, cut (connections aborted, new ones refused). SQLite has
    no server to lose: another connection's write transaction holds its one write lock, so every
    write waits (the app's busy timeout is 30 s) until it ends."""

    def __init__(self, url: str, proxies: Callable[[int], TcpProxy]) -> None:
        parsed = make_url(url)
        self.sqlite = parsed.get_backend_name() == "sqlite"
        self.proxy = None if self.sqlite else proxies(parsed.port or 5432)
        self.app_url = url if self.proxy is None else through(url, self.proxy)
        self._lock: sqlite3.Connection | None = None
        self._path = parsed.database

    def _away(self) -> None:
        if self.proxy is not None:
            self.proxy.cut()
        else:
            self._lock = sqlite3.connect(self._path, timeout=WAIT, isolation_level=None, check_same_thread=False)
            self._lock.execute("BEGIN EXCLUSIVE")

    def _back(self) -> None:
        if self.proxy is not None:
            self.proxy.restore()
        elif self._lock is not None:
            self._lock.execute("ROLLBACK")
            self._lock.close()
            self._lock = None

    async def away(self) -> None:
        await asyncio.to_thread(self._away)

    async def back(self) -> None:
        await asyncio.to_thread(self._back)

    async def relay_stuck(self, errors_before: float) -> None:
        """Until the relay has felt it: Postgres, two failed turns; SQLite, a turn waiting on the
        lock (nothing to observe from outside: the outage is held a while, it times nothing)."""
        if self.proxy is not None:
            await eventually(lambda: metric("realtime_outbox_relay_errors_total") - errors_before >= 2, timeout=WAIT)
        else:
            await asyncio.sleep(1.5)


async def test_the_database_away_while_rows_are_pending_and_during_a_relay_turn_still_publishes_exactly_once(
        database: str, stored: Stored, announced: Announced, proxies: Callable[[int], TcpProxy], redis_proxy: TcpProxy,
        make_settings: Callable[..., Settings], counted: Any) -> None:
    outage = DatabaseAway(database, proxies)
    users = ["x0", "x1", "x2"]
    async with running_app(in_process(make_settings, outage.app_url, redis_through(redis_proxy))) as (app, client):
        outbox = app.state.services.outbox

        async def store_with_redis_away(numbers: range) -> None:
            redis_proxy.cut()
            for n in numbers:
                for user in users:
                    response = await client.post("/v1/notifications", json=note(user, f"{user} #{n}"),
                                                 headers=auth(service_token()))
                    assert response.status_code == 201, response.text

        # (a) rows pending when the database goes away; Redis comes back while it is away
        await store_with_redis_away(range(4))
        assert await stored.pending() == 12 and announced.count() == 0
        await outage.away()
        redis_proxy.restore()
        await outage.relay_stuck(metric("realtime_outbox_relay_errors_total"))  # failures from now on: the database's
        pending_while_away, announced_while_away_a = await stored.pending(), announced.count()
        await outage.back()
        await eventually(lambda: _drained(stored, announced, 12), timeout=WAIT)

        # (b) the database goes away in the middle of a relay turn: after its append, before its DELETE
        await store_with_redis_away(range(4, 8))
        append_many = outbox.log.append_many
        cut_after: list[int] = []
        errors_at_cut: list[float] = []

        async def append_then_lose_the_database(items: Any) -> Any:
            result = await append_many(items)
            if in_relay() and not cut_after:
                await outage.away()
                cut_after.append(len(items))
                errors_at_cut.append(metric("realtime_outbox_relay_errors_total"))
            return result

        outbox.log.append_many = append_then_lose_the_database
        redis_proxy.restore()
        await eventually(lambda: cut_after, timeout=WAIT)
        await outage.relay_stuck(errors_at_cut[0])  # its DELETE, then its next turn
        announced_while_away, pending_in_turn = announced.count(), await stored.pending()
        # the turn's rows (those older than the relay's grace) appended, none deleted
        assert cut_after[0] > 0 and (announced_while_away, pending_in_turn) == (12 + cut_after[0], 12)
        await outage.back()
        await eventually(lambda: _drained(stored, announced, 24), timeout=WAIT)
        outbox.log.append_many = append_many

    rows = await stored.notifications()
    by_id = {row[1]: row for row in rows}
    for user in users:
        events = announced.inbox(user)
        assert [seq(by_id[id_][2]) for id_ in created_ids(events)] == list(range(8))
        assert [data["counts"]["unread"] for _, _, data in events] == list(range(1, 9))
    ids = [orjson.loads(e["data"])["notification"]["id"] for e in announced.log()]
    assert len(ids) == len(rows) == 24 and duplicates(ids) == 0 and set(ids) == set(by_id)
    counted("database away", how="write lock held" if outage.sqlite else "proxy cut", stored=len(rows),
            pending_while_away=pending_while_away, announced_while_away=announced_while_away_a,
            appended_in_the_cut_turn=cut_after[0],
            announced_when_cut_in_turn=announced_while_away, pending_when_cut_in_turn=pending_in_turn,
            announced=len(ids), duplicates=duplicates(ids))


async def _drained(stored: Stored, announced: Announced, total: int) -> bool:
    return await stored.pending() == 0 and announced.count() >= total


# --------------------------------------------------------------------------------------------
# 4. kill -9 during a relay drain
# --------------------------------------------------------------------------------------------


async def write_backlog(url: str, users: list[str], first: int, per_user: int) -> int:
    """Notifications `<user> #<first>`... for each user, each stored with its outbox row exactly
    as the writer writes them (app.notifications.outbox.add's columns, the event prepared as the
    inbox prepares it, the counts it would carry), the users interleaved, 500 to a transaction:
    what a process leaves behind while Redis is away, written at SQL speed (this machine's API
    stores ~70 notifications a second). How many rows."""
    engine = db.create_engine(Settings(database_url=url), poolclass=NullPool)
    limit = Settings().max_event_bytes
    items = [(user, n) for n in range(first, first + per_user) for user in users]
    try:
        for start in range(0, len(items), 500):
            notifications, rows = [], []
            for user, n in items[start:start + 500]:
                created = utcnow()
                row = Notification(id=str(uuid.uuid4()), tenant=TENANT, user_id=user, type="mention", category="general",
                                   title=f"{user} #{n}", message="look", action_url=None, data={}, idempotency_key=None,
                                   created_at=created)
                notifications.append({column.key: getattr(row, column.key) for column in Notification.__table__.columns})
                counts = {"unread": n + 1, "unseen": n + 1, "total": n + 1}
                draft = prepare(TENANT, user_channel(user), "notification.created",
                                {"notification": row.to_json(), "unread_count": n + 1, "unseen_count": n + 1,
                                 "counts": counts}, max_event_bytes=limit)
                rows.append({"key": str(uuid.uuid4()), "tenant": TENANT, "channel": draft.channel, "type": draft.type,
                             "data": draft.data.decode(), "pushes": None, "created_at": created})
            async with engine.begin() as connection:
                await connection.execute(Notification.__table__.insert(), notifications)
                for row_ in rows:  # one at a time, so the ids follow the list
                    await connection.execute(OutboxEntry.__table__.insert().values(**row_))
    finally:
        await engine.dispose()
    return len(items)


async def test_a_process_killed_during_a_relay_drain_leaves_the_rest_to_the_next_exactly_once_in_order(
        live_servers: Any, database: str, stored: Stored, announced: Announced, redis_proxy: TcpProxy,
        http: httpx.AsyncClient, counted: Any) -> None:
    a = live_servers(redis=False, REDIS_URL=redis_through(redis_proxy), DATABASE_URL=database, **FAST_RELAY)
    redis_proxy.cut()
    users, before, backlog, after = [f"d{i}" for i in range(8)], 3, 375, 2
    await create_many(http, a.url, users, before)  # through A's API, as in 3 ...
    written = await write_backlog(database, users, before, backlog)  # ... then the bulk of the backlog ...
    for n in range(before + backlog, before + backlog + after):  # ... and A's API again, on top of it
        await asyncio.gather(*(create(http, a.url, user, f"{user} #{n}") for user in users))
    total = len(users) * (before + backlog + after)
    assert await stored.pending() == total and announced.count() == 0

    redis_proxy.restore()  # A's relay starts draining; A is killed as soon as the first events land
    await eventually(lambda: announced.count() > 0, timeout=WAIT, interval=0.001)
    a.stop(kill=True)
    at_kill, pending_at_kill = announced.count(), await stored.pending()
    assert 0 < at_kill < total, (at_kill, total)  # killed in the middle of the drain
    in_both = at_kill + pending_at_kill - total  # appended, not yet deleted: the next must not append them again

    live_servers(redis=True, DATABASE_URL=database, **FAST_RELAY)  # B

    async def drained() -> bool:
        return await stored.pending() == 0 and announced.count() >= total

    await eventually(drained, timeout=WAIT)
    rows = await stored.notifications()
    by_id = {row[1]: row for row in rows}
    log = announced.log()
    ids = [orjson.loads(e["data"])["notification"]["id"] for e in log]
    assert len(log) == total and duplicates(ids) == 0 and set(ids) == set(by_id)
    for user in users:  # in order per inbox, each with its own count
        events = announced.inbox(user)
        assert [seq(by_id[data["notification"]["id"]][2]) for _, _, data in events] == list(range(before + backlog + after))
        assert [data["counts"]["unread"] for _, _, data in events] == list(range(1, before + backlog + after + 1))
    counted("killed during a relay drain", rows=total, of_them_written_by_sql=written, announced_at_kill=at_kill,
            pending_at_kill=pending_at_kill, in_log_and_outbox_at_kill=in_both, announced=len(log),
            duplicates=duplicates(ids), missing=len(set(by_id) - set(ids)))

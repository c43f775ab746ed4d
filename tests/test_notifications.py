"""The notification API in-process, on SQLite with the embedded log and on Postgres with Redis:
ownership, idempotency, keyset pages, filters, counts, changes announced on `user:<id>`,
preferences, exact counts under concurrency, and 503 when the database is down."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import NullPool, func, select, text

from app import db
from app.db import Base
from app.notifications import store
from app.notifications.models import Notification
from app.settings import Settings
from tests.conftest import auth, running_app, service_token, token
from tests.live_support import WAIT
from tests.notify_support import (
    backend,  # noqa: F401  (fixture)
    migrate_and_empty,
    pg_url,  # noqa: F401  (fixture)
    postgres_database,
)

N1 = {"tenant": "t1", "user_id": "u1", "type": "mention", "title": "You were mentioned", "message": "@u1 look"}


# `backend` (SQLite + in-memory log, Postgres + Redis) and `pg_url` come from tests/notify_support.py


@pytest.fixture
async def app_settings(backend: tuple[str, str | None], make_settings: Callable[..., Settings]) -> Settings:
    database_url, redis_url = backend
    await migrate_and_empty(database_url)
    return make_settings(database_url=database_url, redis_url=redis_url,
                         notification_critical_categories="security,billing")


async def create(client: Any, **fields: Any) -> Any:
    return await client.post("/v1/notifications", json={**N1, **fields}, headers=auth(service_token()))


async def events(app: Any, tenant: str = "t1", user: str = "u1") -> list[tuple[str, dict]]:
    log = app.state.services.log
    found = await log.read(tenant, f"user:{user}", "0-0", await log.head(), 10_000)
    return [(e.type, orjson.loads(e.data)) for e in found]


# --------------------------------------------------------------------------------------------


async def test_create_needs_a_service_token_and_valid_fields(app_settings: Settings) -> None:
    async with running_app(app_settings) as (app, client):
        assert (await client.post("/v1/notifications", json=N1)).status_code == 401
        response = await client.post("/v1/notifications", json=N1, headers=auth(token()))
        assert response.status_code == 403 and response.json()["code"] == "forbidden"
        for bad in ({"tenant": "t:1"}, {"user_id": "u 1"}, {"title": ""}, {"category": "Not Valid"},
                    {"action_url": "javascript:alert(1)"}, {"type": "has space"}, {"unknown": 1}):
            response = await create(client, **bad)
            assert response.status_code == 422 and response.json()["code"] == "invalid_request", bad
        response = await create(client, data={"blob": "x" * 70_000})
        assert response.status_code == 413 and response.json()["code"] == "event_too_large"
        assert (await client.get("/v1/notifications/counts", headers=auth(token()))).json()["total"] == 0
        assert await events(app) == []


async def test_created_notification_is_stored_listed_counted_and_announced(app_settings: Settings) -> None:
    async with running_app(app_settings) as (app, client):
        response = await create(client, action_url="https://forge.example/pr/42", data={"pr": 42}, category="pull_requests")
        assert response.status_code == 201, response.text
        created = response.json()
        assert {k: created[k] for k in N1} == N1
        assert created["category"] == "pull_requests" and created["data"] == {"pr": 42}
        assert created["seen_at"] is None and created["read_at"] is None and created["archived_at"] is None
        assert created["created_at"].endswith("Z") and created["id"]
        page = (await client.get("/v1/notifications", headers=auth(token()))).json()
        assert page == {"items": [created], "next_cursor": None}
        assert (await client.get("/v1/notifications/unread-count", headers=auth(token()))).json() == {"count": 1}
        counts = (await client.get("/v1/notifications/counts", headers=auth(token()))).json()
        assert counts == {"unread": 1, "unseen": 1, "total": 1}
        assert await events(app) == [("notification.created", {"notification": created, "unread_count": 1, "unseen_count": 1,
                                                                "counts": {"unread": 1, "unseen": 1, "total": 1}})]


async def test_idempotency_key_stores_one_per_tenant(app_settings: Settings) -> None:
    async with running_app(app_settings) as (app, client):
        first = await create(client, idempotency_key="pr-42")
        again = await create(client, idempotency_key="pr-42", title="changed")
        assert (first.status_code, again.status_code) == (201, 200)
        assert again.json() == first.json()
        other_tenant = await create(client, tenant="t2", idempotency_key="pr-42")
        assert other_tenant.status_code == 201 and other_tenant.json()["id"] != first.json()["id"]
        concurrent = await asyncio.gather(*(create(client, idempotency_key="race") for _ in range(10)))
        assert sorted(r.status_code for r in concurrent) == [200] * 9 + [201]
        assert len({r.json()["id"] for r in concurrent}) == 1
        assert (await client.get("/v1/notifications/counts", headers=auth(token()))).json()["total"] == 2
        assert [t for t, _ in await events(app)] == ["notification.created"] * 2


async def test_another_users_or_tenants_notification_is_a_404(app_settings: Settings) -> None:
    async with running_app(app_settings) as (_app, client):
        mine = (await create(client)).json()
        (await create(client, user_id="u2")).json()
        for intruder in (token("u2", "t1"), token("u1", "t2"), token("u2", "t2")):
            for action in ("read", "unread", "archive"):
                response = await client.post(f"/v1/notifications/{mine['id']}/{action}", headers=auth(intruder))
                assert response.status_code == 404 and response.json()["code"] == "not_found"
        theirs = (await client.get("/v1/notifications", headers=auth(token("u2", "t1")))).json()["items"]
        assert [n["user_id"] for n in theirs] == ["u2"]
        assert (await client.get("/v1/notifications", headers=auth(token("u1", "t2")))).json()["items"] == []
        await client.post("/v1/notifications/read-all", headers=auth(token("u1", "t2")))
        assert (await client.get("/v1/notifications/unread-count", headers=auth(token()))).json() == {"count": 1}
        assert (await client.post("/v1/notifications/nope/read", headers=auth(token()))).status_code == 404
        assert (await client.get("/v1/notifications")).status_code == 401


async def test_keyset_pages_cover_everything_once_newest_first(app_settings: Settings) -> None:
    async with running_app(app_settings) as (_, client):
        ids = [(await create(client, title=f"n{i}", category="even" if i % 2 == 0 else "odd")).json()["id"] for i in range(25)]
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 10} | ({"cursor": cursor} if cursor else {})
            body = (await client.get("/v1/notifications", params=params, headers=auth(token()))).json()
            seen += [n["id"] for n in body["items"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert pages == 3 and seen == ids[::-1]
        # a page boundary on exactly the last row: no empty extra page
        body = (await client.get("/v1/notifications", params={"limit": 25}, headers=auth(token()))).json()
        assert len(body["items"]) == 25 and body["next_cursor"] is None
        evens = (await client.get("/v1/notifications", params={"category": "even", "limit": 100}, headers=auth(token()))).json()
        assert [n["id"] for n in evens["items"]] == ids[::-2]
        for bad in ("nonsense", "W10", "WyJ4IiwgMV0"):
            response = await client.get("/v1/notifications", params={"cursor": bad}, headers=auth(token()))
            assert response.status_code == 400 and response.json()["code"] == "bad_cursor", bad
        response = await client.get("/v1/notifications", params={"status": "bogus"}, headers=auth(token()))
        assert response.status_code == 422
        assert (await client.get("/v1/notifications", params={"limit": 0}, headers=auth(token()))).status_code == 422


async def test_status_filters_counts_and_every_change_is_announced(app_settings: Settings) -> None:
    async with running_app(app_settings) as (app, client):
        a, b, _c, _d = [(await create(client, title=t)).json()["id"] for t in "abcd"]
        me = auth(token())

        async def listed(status: str) -> list[str]:
            body = (await client.get("/v1/notifications", params={"status": status}, headers=me)).json()
            return [n["title"] for n in body["items"]]

        read = await client.post(f"/v1/notifications/{a}/read", headers=me)
        assert read.status_code == 200 and read.json()["read_at"] and read.json()["seen_at"]
        again = await client.post(f"/v1/notifications/{a}/read", headers=me)
        assert again.json() == read.json()  # already read: unchanged, nothing announced
        archived = await client.post(f"/v1/notifications/{b}/archive", headers=me)
        assert archived.status_code == 200 and archived.json()["archived_at"]
        assert await listed("unread") == ["d", "c"]
        assert await listed("unseen") == ["d", "c"]
        assert await listed("all") == ["d", "c", "a"]
        assert await listed("archived") == ["b"]
        assert (await client.get("/v1/notifications/counts", headers=me)).json() == {"unread": 2, "unseen": 2, "total": 3}

        seen = await client.post("/v1/notifications/seen-all", headers=me)
        assert seen.json() == {"updated": 2, "unread_count": 2, "unseen_count": 0}
        assert await listed("unseen") == [] and await listed("unread") == ["d", "c"]
        unread = await client.post(f"/v1/notifications/{a}/unread", headers=me)
        assert unread.json()["read_at"] is None and unread.json()["seen_at"] is not None
        assert (await client.get("/v1/notifications/unread-count", headers=me)).json() == {"count": 3}
        all_read = await client.post("/v1/notifications/read-all", headers=me)
        assert all_read.json() == {"updated": 3, "unread_count": 0, "unseen_count": 0}
        nothing = await client.post("/v1/notifications/read-all", headers=me)
        assert nothing.json() == {"updated": 0, "unread_count": 0, "unseen_count": 0}
        assert (await client.get("/v1/notifications/counts", headers=me)).json() == {"unread": 0, "unseen": 0, "total": 3}

        changes = [(t, data.get("change"), data.get("ids"), data.get("all"), data["unread_count"], data["unseen_count"])
                   for t, data in await events(app)][4:]
        assert changes == [
            ("notification.read", "read", [a], None, 3, 3),
            ("notification.updated", "archived", [b], None, 2, 2),
            ("notification.updated", "seen", None, True, 2, 0),
            ("notification.updated", "unread", [a], None, 3, 0),
            ("notification.read", "read", None, True, 0, 0),
        ]
        assert all(data["at"].endswith("Z") for _, data in (await events(app))[4:])


async def test_preferences_and_critical_categories(app_settings: Settings) -> None:
    async with running_app(app_settings) as (app, client):
        me = auth(token())
        assert (await client.get("/v1/notifications/preferences", headers=me)).json() == {
            "categories": {}, "channels": ["in_app", "web_push"], "critical_categories": ["billing", "security"]}
        put = await client.put("/v1/notifications/preferences", headers=me,
                               json={"categories": {"marketing": {"in_app": False, "web_push": False},
                                                    "mentions": {"web_push": False}}})
        assert put.status_code == 200
        assert put.json()["categories"] == {"marketing": {"in_app": False, "web_push": False}, "mentions": {"web_push": False}}
        refused = await client.put("/v1/notifications/preferences", headers=me,
                                   json={"categories": {"security": {"web_push": False}, "mentions": {}}})
        assert refused.status_code == 422 and refused.json()["code"] == "critical_category"
        assert "security" in refused.json()["message"]
        assert (await client.get("/v1/notifications/preferences", headers=me)).json()["categories"] == put.json()["categories"]
        bad = await client.put("/v1/notifications/preferences", headers=me, json={"categories": {"x": {"sms": False}}})
        assert bad.status_code == 422
        assert (await client.get("/v1/notifications/preferences", headers=auth(token("u2")))).json()["categories"] == {}

        # in-app off: stored straight into the archive, not counted, not announced
        filed = (await create(client, category="marketing")).json()
        assert filed["archived_at"] and filed["read_at"] and filed["seen_at"]
        assert (await client.get("/v1/notifications/counts", headers=me)).json() == {"unread": 0, "unseen": 0, "total": 0}
        archived = (await client.get("/v1/notifications", params={"status": "archived"}, headers=me)).json()["items"]
        assert [n["id"] for n in archived] == [filed["id"]]
        assert await events(app) == []
        await create(client, category="security")
        assert (await client.get("/v1/notifications/unread-count", headers=me)).json() == {"count": 1}

        # PUT replaces the whole set: what is not listed is on again
        cleared = await client.put("/v1/notifications/preferences", headers=me, json={"categories": {}})
        assert cleared.json()["categories"] == {}
        assert (await create(client, category="marketing")).json()["archived_at"] is None


async def test_unread_count_is_exact_under_concurrent_creates_and_read_all(app_settings: Settings) -> None:
    async with running_app(app_settings) as (app, client):
        me = auth(token())

        async def one(i: int) -> None:
            await asyncio.sleep(random.random() / 50)
            if i % 10 == 5:
                assert (await client.post("/v1/notifications/read-all", headers=me)).status_code == 200
            else:
                assert (await create(client, title=f"n{i}")).status_code == 201

        await asyncio.gather(*(one(i) for i in range(55)))
        engine = db.create_engine(app_settings, poolclass=NullPool)
        async with engine.connect() as connection:
            actually_unread = await connection.scalar(
                select(func.count()).select_from(Notification)
                .where(Notification.user_id == "u1", Notification.read_at.is_(None)))
            rows = await connection.scalar(select(func.count()).select_from(Notification))
        await engine.dispose()
        assert rows == 50
        counted = (await client.get("/v1/notifications/unread-count", headers=me)).json()["count"]
        assert counted == actually_unread
        # events reach the log in commit order, each with the count its change left: replaying
        # them (a create adds one, a read-all clears) gives every count they carry
        announced = await events(app)
        replayed = 0
        for type_, data in announced:
            replayed = replayed + 1 if type_ == "notification.created" else 0
            assert data["unread_count"] == replayed, (type_, data)
        assert replayed == actually_unread
        assert sum(t == "notification.created" for t, _ in announced) == 50


async def test_a_writer_of_an_inbox_waits_until_the_one_before_it_commits(backend: tuple[str, str | None]) -> None:
    """The inbox lock holds from lock_inbox to commit, reads before the first write included (on
    SQLite those ran outside the transaction: a writer could find nothing pending in a read the
    writer before it then made stale, and publish its event before that one's)."""
    database_url, _ = backend
    await migrate_and_empty(database_url)
    engine = db.create_engine(Settings(database_url=database_url))
    sessions = db.sessionmaker(engine)

    async def second_writer() -> None:
        async with sessions() as other, other.begin():
            await store.lock_inbox(other, "t1", "u1")

    try:
        async with sessions() as first:
            async with first.begin():
                await store.lock_inbox(first, "t1", "u1")
                await first.scalar(select(func.count()).select_from(Notification))  # a read, as a writer's first step
                second = asyncio.create_task(second_writer())
                await asyncio.sleep(0.3)
                assert not second.done(), "a second writer got the inbox while the first held it"
            await asyncio.wait_for(second, WAIT)
    finally:
        await engine.dispose()


async def test_database_down_is_503_and_real_time_keeps_working(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(database_url="postgresql+asyncpg://postgres@127.0.0.1:1/nowhere")
    async with running_app(settings) as (app, client):
        me = auth(token())
        for method, path in (("GET", "/v1/notifications"), ("GET", "/v1/notifications/unread-count"),
                             ("GET", "/v1/notifications/counts"), ("POST", "/v1/notifications/read-all"),
                             ("GET", "/v1/notifications/preferences"), ("GET", "/v1/push/subscriptions")):
            response = await client.request(method, path, headers=me)
            assert response.status_code == 503, (path, response.text)
            assert response.json()["code"] == "unavailable" and "database" in response.json()["message"]
        response = await create(client)
        assert response.status_code == 503 and response.json()["code"] == "unavailable"
        assert await events(app) == []
        # real time is unaffected
        cursor = (await client.get("/v1/poll", params={"timeout": 0}, headers=me)).json()["cursor"]
        published = await client.post("/v1/events", headers=auth(service_token()),
                                       json={"tenant": "t1", "channel": "user:u1", "type": "x.y", "data": {}})
        assert published.status_code == 202
        polled = (await client.get("/v1/poll", params={"since": cursor, "timeout": 0}, headers=me)).json()
        assert [e["type"] for e in polled["events"]] == ["x.y"]
        ready = await client.get("/readyz")  # still serving real time: degraded, not unready
        assert ready.status_code == 200 and ready.json()["status"] == "degraded" and ready.json()["database"] != "ok"


async def test_migration_matches_the_models_and_downgrades(backend: tuple[str, str | None], tmp_path: Any) -> None:
    database_url, _ = backend
    if database_url.startswith("postgresql"):
        async with postgres_database() as fresh:
            await _check_migration(fresh)
    else:
        await _check_migration(f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")


async def _check_migration(url: str) -> None:
    from alembic import command

    engine = db.create_engine(Settings(database_url=url), poolclass=NullPool)
    try:
        await db.run_migrations_async(engine)
        async with engine.connect() as connection:
            diff = await connection.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata))
        assert diff == []

        def down(sync: Any) -> None:
            command.downgrade(db._alembic_config(connection=sync), "base")

        async with engine.begin() as connection:
            await connection.run_sync(down)
        async with engine.connect() as connection:
            names = await connection.run_sync(lambda sync: set(sync.dialect.get_table_names(sync)))
        assert not names & {"notifications", "notification_preferences", "push_subscriptions"}
        await db.run_migrations_async(engine)
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT count(*) FROM notifications"))).scalar() == 0
    finally:
        await engine.dispose()


async def test_openapi_lists_the_notification_routes(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings()) as (_, client):
        paths = (await client.get("/openapi.json")).json()["paths"]
    for path in ("/v1/notifications", "/v1/notifications/unread-count", "/v1/notifications/counts",
                 "/v1/notifications/{notification_id}/read", "/v1/notifications/{notification_id}/unread",
                 "/v1/notifications/{notification_id}/archive", "/v1/notifications/read-all",
                 "/v1/notifications/seen-all", "/v1/notifications/preferences", "/v1/push/vapid-public-key",
                 "/v1/push/subscriptions"):
        assert path in paths, path
    assert set(paths["/v1/notifications/preferences"]) == {"get", "put"}
    assert set(paths["/v1/push/subscriptions"]) == {"get", "post", "delete"}

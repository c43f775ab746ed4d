"""The demo page's routes in-process: the static page, and the development-only helpers that
exist only where they are safe (DEMO_TOKENS, or no JWT_SECRET)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from sqlalchemy import NullPool

from app import db, demo
from app.auth import TokenVerifier
from app.settings import Settings
from tests.conftest import auth, running_app, token


async def migrated(settings: Settings) -> Settings:
    engine = db.create_engine(settings, poolclass=NullPool)
    try:
        await db.run_migrations_async(engine)
    finally:
        await engine.dispose()
    return settings


def test_demo_is_on_only_in_development(make_settings: Callable[..., Settings]) -> None:
    assert make_settings(jwt_secret=None).demo_enabled, "no JWT_SECRET: the generated development secret"
    assert not make_settings().demo_enabled, "JWT_SECRET set: production unless DEMO_TOKENS says otherwise"
    assert make_settings(demo_tokens=True).demo_enabled
    assert not make_settings(jwt_secret=None, demo_tokens=False).demo_enabled
    assert not make_settings(jwt_secret=None, jwt_algorithms="RS256", jwt_public_key="k").demo_enabled, "no HS256 to mint with"


async def test_the_page_is_served_and_the_helpers_are_absent_when_off(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings()) as (_, client):
        assert (await client.get("/demo")).status_code in (307, 308)
        page = await client.get("/demo/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert '<script type="module" src="/demo/demo.js">' in page.text
        script = await client.get("/demo/demo.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert "Built from clients/js" in script.text
        assert (await client.get("/demo/demo.css")).status_code == 200
        assert (await client.post("/demo/token", json={"user": "ada"})).status_code in (404, 405)
        assert (await client.post("/demo/publish", json={"kind": "alert", "user": "ada"})).status_code in (404, 405)
        assert not [path for path in (await client.get("/openapi.json")).json()["paths"] if path.startswith("/demo")]


async def test_demo_token_signs_in_as_a_demo_user(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(demo_tokens=True, demo_tenant="acme")
    async with running_app(settings) as (_, client):
        answer = (await client.post("/demo/token", json={"user": "ada", "ttl": 60})).json()
        assert (answer["user"], answer["tenant"], answer["expires_in"]) == ("ada", "acme", 60)
        principal = await TokenVerifier(settings).verify(answer["token"])
        assert (principal.user, principal.tenant, principal.can_publish) == ("ada", "acme", False)
        assert set(principal.patterns) == {"repository:*", "analysis:*", "job:*"}
        assert (await client.post("/demo/token", json={"user": "Not A Name"})).status_code == 422
        assert (await client.post("/demo/token", json={"user": "ada", "ttl": 5})).status_code == 422
        assert "/demo/token" in (await client.get("/openapi.json")).json()["paths"]


async def test_demo_publish_goes_through_the_public_api(make_settings: Callable[..., Settings],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "STEP_SECONDS", 0.01)
    settings = await migrated(make_settings(demo_tokens=True))
    user = token("ada", "demo", channels=["analysis:*", "job:*"])
    async with running_app(settings) as (_, client):
        async def head() -> str:
            return (await client.get("/v1/poll?timeout=0", headers=auth(user))).json()["cursor"]

        cursor = await head()

        async def events_since(channels: str = "") -> list[dict]:
            answer = (await client.get(f"/v1/poll?timeout=0&since={cursor}&channels={channels}", headers=auth(user))).json()
            return answer["events"]

        assert (await client.post("/demo/publish", json={"kind": "alert", "user": "ada"})).status_code == 202
        assert [(e["channel"], e["type"]) for e in await events_since()] == [("tenant:demo", "system.alert")]

        note = (await client.post("/demo/publish", json={"kind": "notification", "user": "ada"})).json()
        assert (await client.get("/v1/notifications/unread-count", headers=auth(user))).json() == {"count": 1}
        assert (await events_since())[-1]["data"]["notification"]["id"] == note["notification"]

        cursor = await head()
        run = (await client.post("/demo/publish", json={"kind": "run", "user": "ada"})).json()
        analysis, job = run["analysis"], run["job"]
        tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("demo-run-")]
        assert len(tasks) == 1
        await asyncio.wait_for(tasks[0], 15)
        events = await events_since(f"analysis:demo,{analysis},{job}")
        assert events[0]["type"] == "demo.run" and events[0]["data"]["analysisId"] == analysis.split(":")[1]
        progress = [e["data"]["progress"] for e in events if e["type"] == "analysis.progress"]
        assert progress == list(range(0, 101, 10))
        assert [e["data"]["status"] for e in events if e["type"] == "refactoring.status"] == ["queued", "running", "completed"]
        assert events[-1]["type"] == "notification.created" and events[-1]["data"]["unread_count"] == 2


@pytest.mark.parametrize("path", ["index.html", "demo.css", "demo.js"])
def test_the_static_files_ship_with_the_package(path: str) -> None:
    """pyproject's package-data includes them, so a non-editable install (the Docker image) has them."""
    assert (demo.STATIC_DIR / path).is_file()

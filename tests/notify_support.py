"""Test support for notifications and Web Push: databases of their own, a browser's push keys and
a fake push service on loopback that checks what pywebpush sends the way a real one would."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import http_ece
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02
from sqlalchemy import NullPool, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app import db
from app.settings import Settings
from tests.conftest import DATABASE_URL, _unavailable, auth, eventually, running_app, service_token, token

# tags before the notifications they point at; the outbox too, or a test's relay would publish
# rows an earlier test left pending in the module's database
TABLES = ("notification_tags", "notifications", "notification_preferences", "push_subscriptions", "outbox", "leases")


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64url(text_: str) -> bytes:
    return base64.urlsafe_b64decode(text_ + "=" * (-len(text_) % 4))


# --------------------------------------------------------------------------------------------
# databases
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def pg_url() -> AsyncIterator[str]:
    """A Postgres database of this test module's own, dropped afterwards."""
    async with postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite-memory", "postgres-redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, str | None]:
    """(database URL, Redis URL or None): the embedded defaults, and the production pair."""
    if request.param == "sqlite-memory":
        return f"sqlite+aiosqlite:///{tmp_path / 'app.db'}", None
    return request.getfixturevalue("pg_url"), request.getfixturevalue("redis_url")


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A database of its own on the test server (TEST_DATABASE_URL), dropped afterwards."""
    base = make_url(DATABASE_URL)
    name = f"test_notify_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(base, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # unreachable, or no CREATEDB right: skipped (a failure under CI=true)
        await admin.dispose()
        _unavailable(f"Postgres at {base.render_as_string()} ({type(exc).__name__}: {exc})",
                     "start PostgreSQL or set TEST_DATABASE_URL to a role that may CREATE DATABASE")
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def migrate_and_empty(url: str) -> None:
    """`alembic upgrade head` (a no-op when already there), then no rows in our tables."""
    engine = db.create_engine(Settings(database_url=url), poolclass=NullPool)
    try:
        await db.run_migrations_async(engine)
        async with engine.begin() as connection:
            for table in TABLES:
                await connection.execute(text(f"DELETE FROM {table}"))
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------------------------
# a browser and a push service
# --------------------------------------------------------------------------------------------


class Browser:
    """A PushSubscription's key pair and auth secret, as a browser makes them."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)
        point = self.key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        self.p256dh = b64url(point)

    def subscription(self, endpoint: str) -> dict[str, Any]:
        return {"endpoint": endpoint, "expirationTime": None, "keys": {"p256dh": self.p256dh, "auth": b64url(self.auth)}}

    def decrypt(self, body: bytes) -> bytes:
        return http_ece.decrypt(body, private_key=self.key, auth_secret=self.auth, version="aes128gcm")


@dataclass
class Received:
    name: str
    at: float
    status: int
    headers: dict[str, str]  # names lower-cased
    body_size: int
    claims: dict[str, Any] | None = None
    payload: dict[str, Any] | None = None
    plaintext_size: int = 0
    problem: str | None = None  # what a real push service would have refused


@dataclass
class FakePushService:
    """Answers POST /push/<name> like a push service: verifies the VAPID JWT against the
    expected public key, decrypts the aes128gcm body with the named browser's keys, then answers
    with the next scripted status (201 once the script is used up)."""

    vapid_public_key: str | None = None
    browsers: dict[str, Browser] = field(default_factory=dict)
    scripts: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    port: int = 0

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def endpoint(self, name: str) -> str:
        return f"{self.origin}/push/{name}"

    def browser(self, name: str) -> Browser:
        return self.browsers.setdefault(name, Browser())

    def script(self, name: str, *answers: int | tuple[int, dict[str, str]]) -> None:
        self.scripts[name] = [a if isinstance(a, tuple) else (a, {}) for a in answers]

    def for_(self, name: str) -> list[Received]:
        return [r for r in self.received if r.name == name]

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.read()
        script = self.scripts.get(name) or []
        status, headers = script.pop(0) if script else (201, {})
        record = Received(name, time.monotonic(), status, {k.lower(): v for k, v in request.headers.items()}, len(body))
        try:
            record.claims = self._check_vapid(request.headers.get("Authorization", ""))
            if request.headers.get("Content-Encoding") != "aes128gcm":
                raise AssertionError(f"Content-Encoding {request.headers.get('Content-Encoding')!r}")
            if len(body) > 4096:
                raise AssertionError(f"body of {len(body)} bytes is more than one 4096-byte record")
            plaintext = self.browser(name).decrypt(body)
            record.plaintext_size = len(plaintext)
            record.payload = json.loads(plaintext)
        except Exception as exc:  # recorded: every test asserts there is no problem
            record.problem = f"{type(exc).__name__}: {exc}"
            status, headers = 400, {}
            record.status = status
        self.received.append(record)
        return web.Response(status=status, headers=headers)

    def _check_vapid(self, authorization: str) -> dict[str, Any]:
        scheme, _, params = authorization.partition(" ")
        if scheme != "vapid":
            raise AssertionError(f"Authorization scheme {scheme!r}, expected vapid (RFC 8292)")
        parts = dict(item.split("=", 1) for item in params.split(","))
        if self.vapid_public_key is None or parts.get("k") != self.vapid_public_key:
            raise AssertionError("k= is not the service's VAPID public key")
        if not Vapid02.verify(authorization):
            raise AssertionError("VAPID JWT signature does not verify against k=")
        header, claims_part, _sig = parts["t"].split(".")
        if json.loads(unb64url(header)).get("alg") != "ES256":
            raise AssertionError("VAPID JWT is not ES256")
        claims = json.loads(unb64url(claims_part))
        if claims.get("aud") != self.origin:
            raise AssertionError(f"aud {claims.get('aud')!r} is not this push service's origin {self.origin!r}")
        if not time.time() < claims["exp"] <= time.time() + 24 * 3600:
            raise AssertionError(f"exp {claims['exp']} is not within the next 24 h")
        if not claims.get("sub"):
            raise AssertionError("no sub claim")
        return claims


@asynccontextmanager
async def fake_push_service() -> AsyncIterator[FakePushService]:
    service = FakePushService()
    app = web.Application()
    app.router.add_post("/push/{name}", service.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    service.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield service
    finally:
        await runner.cleanup()


async def push_and_outbox_through(redis_url: str, make_settings: Any, tmp_path: Any, *, wait: float) -> None:
    """A notification created on an engine other than one plain Redis (Sentinel, Cluster): it goes
    through the outbox to the log (a poll sees `notification.created`) and through the Redis push
    queue to the user's browser (a fake push service receives it)."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    await migrate_and_empty(database_url)
    settings = make_settings(redis_url=redis_url, database_url=database_url,
                             push_allowed_endpoints="http://127.0.0.1:", push_retry_base_seconds=0.05)
    async with fake_push_service() as fake, running_app(settings) as (_, client):
        fake.vapid_public_key = (await client.get("/v1/push/vapid-public-key", headers=auth(token()))).json()["public_key"]
        browser = fake.browser("laptop").subscription(fake.endpoint("laptop"))
        subscription = await client.post("/v1/push/subscriptions", json=browser, headers=auth(token("u1", "t1")))
        assert subscription.status_code == 201, subscription.text
        cursor = (await client.get("/v1/poll", params={"timeout": 0}, headers=auth(token("u1", "t1")))).json()["cursor"]
        note = {"tenant": "t1", "user_id": "u1", "type": "mention", "title": "Not on one Redis", "message": "hello"}
        created = await client.post("/v1/notifications", json=note, headers=auth(service_token()))
        assert created.status_code == 201, created.text
        await eventually(lambda: fake.for_("laptop"), wait)  # through the Redis push queue
        [pushed] = fake.for_("laptop")
        assert pushed.problem is None and pushed.payload["id"] == created.json()["id"]
        answer = (await client.get("/v1/poll", params={"since": cursor, "timeout": 5},
                                   headers=auth(token("u1", "t1")))).json()
        assert [e["type"] for e in answer["events"]] == ["notification.created"] and not answer["reset"]

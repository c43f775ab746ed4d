"""Web Push with no internet: a fake push service on loopback checks each VAPID JWT against the
service's public key and decrypts each aes128gcm body with keys the test made for the "browser";
then it answers 201, 410, 429, 5xx and 401 to prove every path. Also: the subscription API, the
endpoint allow-list, the queue's reclaim of abandoned pushes (memory and Redis), pushes surviving a
database outage, and the issue's "done when" through live servers."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from httpx_sse import aconnect_sse
from prometheus_client import REGISTRY
from websockets.asyncio.client import connect

from app.errors import EndpointNotAllowed
from app.keys import Keys
from app.push import payload, vapid
from app.push.queue.base import PushJob, PushQueue
from app.push.queue.memory import MemoryPushQueue
from app.push.queue.redis import RedisPushQueue
from app.push.sender import PushSender
from app.push.validation import check_endpoint
from app.push.worker import PushWorker
from app.settings import DEFAULT_PUSH_ENDPOINTS, Settings
from tests.conftest import ROOT, auth, eventually, running_app, service_token, token
from tests.notify_support import (
    Browser,
    FakePushService,
    backend,  # noqa: F401  (fixture)
    fake_push_service,
    migrate_and_empty,
    pg_url,  # noqa: F401  (fixture)
    unb64url,
)

WAIT = 15.0
NOTE = {"tenant": "t1", "user_id": "u1", "type": "mention", "title": "You were mentioned", "message": "@u1 look"}


# `backend` (SQLite + in-memory log, Postgres + Redis) and `pg_url` come from tests/notify_support.py


@pytest.fixture
async def fake() -> AsyncIterator[FakePushService]:
    async with fake_push_service() as service:
        yield service


@pytest.fixture
async def push_settings(backend: tuple[str, str | None], make_settings: Callable[..., Settings]) -> Settings:
    database_url, redis_url = backend
    await migrate_and_empty(database_url)
    return make_settings(database_url=database_url, redis_url=redis_url, push_allowed_endpoints="http://127.0.0.1:",
                         push_retry_base_seconds=0.05, notification_critical_categories="security")


@pytest.fixture
async def pushing(push_settings: Settings, fake: FakePushService) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The app in-process, its worker sending to the fake push service, which knows its VAPID key."""
    async with running_app(push_settings) as (app, client):
        fake.vapid_public_key = (await client.get("/v1/push/vapid-public-key", headers=auth(token()))).json()["public_key"]
        yield app, client


async def subscribe(client: httpx.AsyncClient, fake: FakePushService, name: str, user: str = "u1", tenant: str = "t1") -> dict:
    response = await client.post("/v1/push/subscriptions", json=fake.browser(name).subscription(fake.endpoint(name)),
                                 headers=auth(token(user, tenant)))
    assert response.status_code in (200, 201), response.text
    return response.json()


async def notify(client: httpx.AsyncClient, **fields: Any) -> dict:
    response = await client.post("/v1/notifications", json={**NOTE, **fields}, headers=auth(service_token()))
    assert response.status_code == 201, response.text
    return response.json()


def pushes(name: str) -> float:
    return REGISTRY.get_sample_value("realtime_push_results_total", {"result": name}) or 0.0


def no_problems(fake: FakePushService) -> None:
    assert [r.problem for r in fake.received if r.problem] == []


# --------------------------------------------------------------------------------------------
# subscriptions
# --------------------------------------------------------------------------------------------


async def test_subscriptions_upsert_by_endpoint_list_and_delete(pushing: Any, fake: FakePushService) -> None:
    _, client = pushing
    me, other = auth(token()), auth(token("u2"))
    body = fake.browser("a").subscription(fake.endpoint("a"))
    created = await client.post("/v1/push/subscriptions", json=body, headers={**me, "User-Agent": "Firefox/140"})
    assert created.status_code == 201
    item = created.json()
    assert item["endpoint"] == body["endpoint"] and item["user_agent"] == "Firefox/140" and item["created_at"]
    renewed = {**body, "keys": {"p256dh": Browser().p256dh, "auth": body["keys"]["auth"]}, "expirationTime": 4102444800000}
    updated = await client.post("/v1/push/subscriptions", json=renewed, headers=me)
    assert updated.status_code == 200 and updated.json()["id"] == item["id"]
    assert updated.json()["expiration_time"] == "2100-01-01T00:00:00.000Z"
    listed = (await client.get("/v1/push/subscriptions", headers=me)).json()["items"]
    assert [s["id"] for s in listed] == [item["id"]] and set(listed[0]) >= {"id", "endpoint", "created_at"}
    assert (await client.get("/v1/push/subscriptions", headers=other)).json() == {"items": []}
    by_endpoint = {"endpoint": body["endpoint"]}
    assert (await client.delete("/v1/push/subscriptions", params=by_endpoint, headers=other)).status_code == 404
    # the same browser, now logged in as another user: the endpoint moves with it
    moved = await client.post("/v1/push/subscriptions", json=body, headers=other)
    assert moved.status_code == 200 and moved.json()["id"] == item["id"]
    assert (await client.get("/v1/push/subscriptions", headers=me)).json() == {"items": []}
    assert (await client.delete("/v1/push/subscriptions", params=by_endpoint, headers=other)).status_code == 204
    assert (await client.get("/v1/push/subscriptions", headers=other)).json() == {"items": []}
    assert (await client.get("/v1/push/subscriptions")).status_code == 401


async def test_only_allowed_push_services_and_real_keys_are_accepted(make_settings: Callable[..., Settings],
                                                                    tmp_path: Any) -> None:
    browser = Browser()
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'push.db'}"
    await migrate_and_empty(database_url)
    async with running_app(make_settings(database_url=database_url)) as (_, client):  # the default allow-list
        me = auth(token())
        for endpoint in ("http://127.0.0.1:9/push/x", "https://evil.example/push", "http://fcm.googleapis.com/fcm/send/x",
                         "https://fcm.googleapis.com.evil.example/fcm/send/x", "https://fcm.googleapis.com@evil.example/x",
                         "https://user:pw@fcm.googleapis.com/fcm/send/x", "file:///etc/passwd", "not a url"):
            response = await client.post("/v1/push/subscriptions", json=browser.subscription(endpoint), headers=me)
            assert response.status_code == 422 and response.json()["code"] == "endpoint_not_allowed", endpoint
        ok = await client.post("/v1/push/subscriptions", json=browser.subscription("https://fcm.googleapis.com/fcm/send/abc:APA91b"),
                               headers=me)
        assert ok.status_code == 201
        good = browser.subscription("https://updates.push.services.mozilla.com/wpush/v2/gAAAA")
        for keys in ({"p256dh": "AAAA", "auth": good["keys"]["auth"]}, {"p256dh": good["keys"]["p256dh"], "auth": "AAAA"},
                     {"p256dh": "B" + "A" * 86, "auth": good["keys"]["auth"]}, {"p256dh": "not*base64", "auth": "x"}):
            response = await client.post("/v1/push/subscriptions", json={**good, "keys": keys}, headers=me)
            assert response.status_code == 422 and response.json()["code"] == "invalid_subscription", keys
        assert (await client.post("/v1/push/subscriptions", json={"endpoint": good["endpoint"]}, headers=me)).status_code == 422


@pytest.mark.parametrize(("endpoint", "allowed"), [
    ("https://fcm.googleapis.com/fcm/send/abc", True),
    ("https://fcm.googleapis.com:443/wp/abc", True),
    ("https://updates.push.services.mozilla.com/wpush/v2/abc", True),
    ("https://web.push.apple.com/QGm1ZsV", True),
    ("https://wns2-par02p.notify.windows.com/w/?token=abc", True),
    ("https://notify.windows.com/w/?token=abc", False),
    ("https://evilnotify.windows.com/w/", False),
    ("https://fcm.googleapis.com:8443/fcm/send/abc", False),
    ("https://FCM.googleapis.com/fcm/send/abc", True),
    ("https://web.push.apple.com.evil.example/x", False),
    ("http://updates.push.services.mozilla.com/wpush/v2/abc", False),
    ("https://updates.push.services.mozilla.com" + "/x" * 1100, False),
])
def test_endpoint_allow_list_compares_by_parts(endpoint: str, allowed: bool) -> None:
    prefixes = Settings(push_allowed_endpoints=DEFAULT_PUSH_ENDPOINTS).push_endpoint_prefixes
    if allowed:
        assert check_endpoint(endpoint, prefixes) == endpoint
    else:
        with pytest.raises(EndpointNotAllowed):
            check_endpoint(endpoint, prefixes)


def test_loopback_prefixes_only_when_configured() -> None:
    assert check_endpoint("http://127.0.0.1:8123/push/a", ["http://127.0.0.1:"])
    with pytest.raises(EndpointNotAllowed):
        check_endpoint("http://127.0.0.1:8123@evil.example/push/a", ["http://127.0.0.1:"])
    with pytest.raises(EndpointNotAllowed):
        check_endpoint("http://127.0.0.1:8123/push/a", ["http://127.0.0.1:9999/"])
    with pytest.raises(ValueError, match="PUSH_ALLOWED_ENDPOINTS"):
        Settings(push_allowed_endpoints="http://push.example/")


# --------------------------------------------------------------------------------------------
# sending
# --------------------------------------------------------------------------------------------


async def test_a_notification_is_pushed_encrypted_and_signed(pushing: Any, fake: FakePushService,
                                                             push_settings: Settings) -> None:
    _, client = pushing
    await subscribe(client, fake, "laptop")
    await subscribe(client, fake, "phone")
    await subscribe(client, fake, "someone-else", user="u2")
    note = await notify(client, action_url="https://forge.example/pr/42", data={"pr": 42})
    await eventually(lambda: len(fake.received) >= 2, WAIT)
    no_problems(fake)
    for name in ("laptop", "phone"):
        [got] = fake.for_(name)
        shown = ("id", "type", "category", "title", "message", "action_url", "created_at", "data")
        assert got.payload == {k: note[k] for k in shown}
        # what is left of PUSH_TTL_SECONDS, counted from the notification (rounded up: the whole of it
        # when sent within its first second)
        assert push_settings.push_ttl_seconds - 30 < int(got.headers["ttl"]) <= push_settings.push_ttl_seconds
        assert got.headers["urgency"] == "normal"
        assert got.claims and got.claims["sub"] == push_settings.vapid_subject
    await asyncio.sleep(0.2)
    assert fake.for_("someone-else") == []


async def test_each_answer_of_the_push_service(pushing: Any, fake: FakePushService, caplog: pytest.LogCaptureFixture) -> None:
    """201 delivered; 410 deletes the subscription; 429 waits for Retry-After, then delivers;
    5xx backs off, then delivers; 401 is alerted and the subscription kept."""
    _, client = pushing
    fake.script("gone", 410)
    fake.script("busy", (429, {"Retry-After": "1"}), 201)
    fake.script("flaky", 503, 500, 201)
    fake.script("misconfigured", 401)
    for name in ("ok", "gone", "busy", "flaky", "misconfigured"):
        await subscribe(client, fake, name)
    before = {r: pushes(r) for r in ("delivered", "gone", "retry", "vapid_rejected")}
    with caplog.at_level(logging.INFO, logger="app.push.worker"):
        note = await notify(client)
        await eventually(lambda: len(fake.for_("busy")) == 2 and len(fake.for_("flaky")) == 3, WAIT)
        await eventually(lambda: pushes("vapid_rejected") > before["vapid_rejected"] and pushes("gone") > before["gone"], WAIT)
    no_problems(fake)
    assert all(r.payload and r.payload["id"] == note["id"] for r in fake.received)
    assert [r.status for r in fake.for_("ok")] == [201]
    first, second = fake.for_("busy")
    assert (first.status, second.status) == (429, 201) and second.at - first.at >= 0.9  # Retry-After honoured
    assert [r.status for r in fake.for_("flaky")] == [503, 500, 201]
    remaining = {s["endpoint"] for s in (await client.get("/v1/push/subscriptions", headers=auth(token()))).json()["items"]}
    assert remaining == {fake.endpoint(n) for n in ("ok", "busy", "flaky", "misconfigured")}  # gone deleted, 401 kept
    assert pushes("delivered") - before["delivered"] == 3
    assert pushes("retry") - before["retry"] == 3
    assert any("refused our VAPID credentials" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    assert not any(fake.endpoint("misconfigured") in r.getMessage() for r in caplog.records)  # capability URLs stay out of logs


async def test_preferences_decide_web_push_and_critical_is_urgent(pushing: Any, fake: FakePushService) -> None:
    _, client = pushing
    await subscribe(client, fake, "b")
    me = auth(token())
    switches = {"categories": {"mentions": {"web_push": False}, "digest": {"in_app": False}}}
    assert (await client.put("/v1/notifications/preferences", headers=me, json=switches)).status_code == 200
    muted = await notify(client, category="mentions", title="muted")
    pushed_only = await notify(client, category="digest", title="push only")
    critical = await notify(client, category="security", title="new login")
    await eventually(lambda: len(fake.for_("b")) >= 2, WAIT)
    await asyncio.sleep(0.2)
    no_problems(fake)
    got = {r.payload["title"]: r for r in fake.for_("b") if r.payload}
    assert set(got) == {"push only", "new login"}
    assert got["new login"].headers["urgency"] == "high" and got["push only"].headers["urgency"] == "normal"
    assert muted["archived_at"] is None and pushed_only["archived_at"] is not None and critical["read_at"] is None


async def test_big_payloads_are_trimmed_to_one_record(pushing: Any, fake: FakePushService) -> None:
    _, client = pushing
    await subscribe(client, fake, "b")
    note = await notify(client, message="é" * 5000, data={"blob": "x" * 3000})
    await eventually(lambda: fake.for_("b"), WAIT)
    no_problems(fake)
    [got] = fake.for_("b")
    assert got.body_size <= 4096 and got.payload is not None
    assert got.payload["truncated"] is True and "data" not in got.payload
    assert got.payload["message"].endswith("…") and note["message"].startswith(got.payload["message"][:-1])
    assert payload.MAX_PLAINTEXT - 16 <= got.plaintext_size <= payload.MAX_PLAINTEXT  # trimmed, not gutted


def test_payload_builder_keeps_what_fits() -> None:
    small = {"id": "1", "type": "t", "category": "c", "title": "T", "message": "m", "action_url": None,
             "created_at": "2026-11-28T06:00:00.000Z", "data": {"k": 1}, "tenant": "t1"}
    assert json.loads(payload.build(small)) == {k: v for k, v in small.items() if k != "tenant"}
    for message in ("a" * 10_000, "€" * 4000, "\u0001" * 3000, "x" * 3900):
        built = payload.build({**small, "message": message, "data": {}})
        assert len(built.encode()) <= payload.MAX_PLAINTEXT
        assert message.startswith(json.loads(built)["message"].removesuffix("…"))


async def test_sender_refuses_what_would_not_fit_one_record(fake: FakePushService) -> None:
    sender = PushSender(vapid.load(Settings(vapid_private_key=vapid.generate()[0])), subject="mailto:a@b.example", timeout=5)
    await sender.start()
    try:
        browser = fake.browser("b")
        job = PushJob(id="j", subscription_id="s", endpoint=fake.endpoint("b"), p256dh=browser.p256dh,
                      auth=browser.subscription("x")["keys"]["auth"], payload="x" * 4000, ttl=60, urgency="normal",
                      created_ms=int(time.time() * 1000))
        outcome = await sender.send(job)
    finally:
        await sender.close()
    assert outcome.result == "rejected" and fake.received == []


async def test_claims_are_fresh_for_each_push_service(pushing: Any, fake: FakePushService) -> None:
    """pywebpush mutates a reused claims dict: the second service would get the first's `aud`."""
    _, client = pushing
    async with fake_push_service() as other:
        other.vapid_public_key = fake.vapid_public_key
        await subscribe(client, fake, "here")
        await subscribe(client, other, "there")
        await notify(client)
        await notify(client)
        await eventually(lambda: len(fake.received) == 2 and len(other.received) == 2, WAIT)
        no_problems(fake)
        no_problems(other)
        assert {r.claims["aud"] for r in other.received if r.claims} == {other.origin}


# --------------------------------------------------------------------------------------------
# the queue: nothing lost
# --------------------------------------------------------------------------------------------


def job(n: int, endpoint: str = "http://127.0.0.1:9/push/x", **fields: Any) -> PushJob:
    values: dict[str, Any] = dict(id=f"job{n}", subscription_id="s", endpoint=endpoint, p256dh="k", auth="a",
                                  payload="{}", ttl=3600, urgency="normal", created_ms=int(time.time() * 1000))
    return PushJob(**{**values, **fields})


@pytest.fixture
async def queues(engine_name: str, request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Callable[[int], PushQueue]]:
    """Queues of one engine that share their jobs: two RedisPushQueues are two workers' views."""
    clients: list[aioredis.Redis] = []
    memory = MemoryPushQueue(claim_idle_ms=300)

    def make(claim_idle_ms: int) -> PushQueue:
        if engine_name == "memory":
            memory._claim_idle = claim_idle_ms / 1000
            return memory
        client = aioredis.from_url(request.getfixturevalue("redis_url"))
        clients.append(client)
        return RedisPushQueue(client, keys=Keys(prefix), claim_idle_ms=claim_idle_ms)

    yield make
    for client in clients:
        await client.aclose()


async def _take_until(queue: PushQueue, ids: set[str], got: list[Any], timeout: float = WAIT) -> float:
    """Take into `got` until every job in `ids` is there (in one take or several); returns when the
    last one came. A wait on the condition: a loaded machine only makes it slower."""

    async def all_there() -> bool:
        if not ids <= {d.job.id for d in got}:
            got.extend(await queue.take(10, 0.2))
        return ids <= {d.job.id for d in got}

    await eventually(all_there, timeout, interval=0)
    return time.monotonic()


async def test_queue_hands_abandoned_jobs_to_another_worker(queues: Callable[[int], PushQueue]) -> None:
    claim = 0.3
    first = queues(int(claim * 1000))
    await first.start()
    await first.put([job(1), job(2), job(3)])
    before_take = time.monotonic()
    taken = await first.take(10, 1.0)
    assert [d.job.id for d in taken] == ["job1", "job2", "job3"]
    await first.done(taken[0])
    # the first worker dies here, holding job2 and job3
    second = queues(int(claim * 1000))
    await second.start()
    reclaimed = await second.take(10, 0.05)
    # not yet, the first worker may only be slow: nothing is taken over unless the claim time has
    # passed by now (a loaded machine can stall that long)
    assert reclaimed == [] or time.monotonic() - before_take >= claim, [d.job.id for d in reclaimed]
    at = await _take_until(second, {"job2", "job3"}, reclaimed)
    assert sorted(d.job.id for d in reclaimed) == ["job2", "job3"]  # each once; never the settled job1
    assert at - before_take >= claim - 0.05  # taken over only after idling for the claim time
    for delivery in reclaimed:
        await second.done(delivery)
    # settled: a take that lasts past the claim time (and looks for abandoned jobs at its end) finds
    # nothing to take over
    assert await second.take(10, claim * 2) == []


async def test_queue_retries_after_the_delay_as_the_next_attempt(queues: Callable[[int], PushQueue]) -> None:
    delay = 0.4
    queue = queues(60_000)
    await queue.start()
    original = job(1)
    await queue.put([original])
    [delivery] = await queue.take(10, 1.0)
    retried_at = time.monotonic()
    await queue.retry(delivery, delay)
    again = await queue.take(10, 0.05)
    # not yet: nothing is handed out before the delay, unless it has passed by now (a stalled machine)
    assert again == [] or time.monotonic() - retried_at >= delay, [d.job.id for d in again]
    at = await _take_until(queue, {"job1"}, again)
    assert at - retried_at >= delay - 0.05  # held back for the delay
    [retried] = again
    assert retried.job == original.next_attempt() and retried.job.attempt == 1
    await queue.done(retried)
    assert await queue.take(10, 0.6) == []


class _Hangs(PushSender):
    """A sender stuck forever (a worker that dies mid-send, as far as the queue can tell)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def send(self, job: PushJob, ttl: int | None = None) -> Any:
        self.started.set()
        await asyncio.Event().wait()


async def test_a_worker_that_dies_mid_batch_loses_nothing(queues: Callable[[int], PushQueue], fake: FakePushService,
                                                          tmp_path: Any) -> None:
    identity = vapid.load(Settings(data_dir=tmp_path))
    fake.vapid_public_key = vapid.public_key(identity)
    browser = fake.browser("b")
    keys = browser.subscription("x")["keys"]
    jobs = [job(n, fake.endpoint("b"), p256dh=keys["p256dh"], auth=keys["auth"], payload=json.dumps({"n": n})) for n in range(3)]
    options = dict(concurrency=4, max_attempts=3, retry_base_seconds=0.05, retry_max_seconds=1.0)
    # the claim time must outlast a send (Settings insists on twice the push timeout), or a slow
    # send would be taken over while it may still succeed: a duplicate
    dying_queue = queues(1500)
    await dying_queue.start()
    hangs = _Hangs()
    dying = PushWorker(dying_queue, hangs, None, **options)  # type: ignore[arg-type]
    await dying_queue.put(jobs)
    await dying.start()
    await asyncio.wait_for(hangs.started.wait(), WAIT)
    await dying.stop()  # mid-batch: three jobs taken, none settled
    sender = PushSender(identity, subject="mailto:ops@forge.example", timeout=0.7)
    await sender.start()
    survivor_queue = queues(1500)
    survivor = PushWorker(survivor_queue, sender, None, **options)  # type: ignore[arg-type]
    await survivor.start()
    try:
        await eventually(lambda: len(fake.for_("b")) == 3, WAIT)
    finally:
        await survivor.stop()
        await sender.close()
    no_problems(fake)
    assert sorted(r.payload["n"] for r in fake.for_("b") if r.payload) == [0, 1, 2]


async def test_pushes_waiting_are_not_lost_while_the_database_is_down(make_settings: Callable[..., Settings],
                                                                      fake: FakePushService) -> None:
    settings = make_settings(database_url="postgresql+asyncpg://postgres@127.0.0.1:1/nowhere",
                             push_allowed_endpoints="http://127.0.0.1:", push_retry_base_seconds=0.05)
    async with running_app(settings) as (app, client):
        fake.vapid_public_key = (await client.get("/v1/push/vapid-public-key", headers=auth(token()))).json()["public_key"]
        assert (await client.get("/v1/notifications", headers=auth(token()))).status_code == 503
        fake.script("gone", 410, 410)
        queued = []
        for name in ("alive", "gone"):
            keys = fake.browser(name).subscription("x")["keys"]
            queued.append(job(len(queued), fake.endpoint(name), p256dh=keys["p256dh"], auth=keys["auth"], payload='{"n": 1}'))
        await app.state.services.push_queue.put(queued)
        # delivered without the database; the dead subscription cannot be deleted, so it is tried again
        await eventually(lambda: len(fake.for_("alive")) == 1 and len(fake.for_("gone")) >= 2, WAIT)
        no_problems(fake)


# --------------------------------------------------------------------------------------------
# VAPID identity
# --------------------------------------------------------------------------------------------


async def test_vapid_key_is_kept_or_configured(make_settings: Callable[..., Settings]) -> None:
    keys = []
    for _ in range(2):
        async with running_app(make_settings()) as (_, client):
            keys.append((await client.get("/v1/push/vapid-public-key", headers=auth(token()))).json()["public_key"])
    assert keys[0] == keys[1] and len(unb64url(keys[0])) == 65  # kept in DATA_DIR across restarts
    printed = subprocess.run([sys.executable, "-m", "app", "vapid"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    private = printed.splitlines()[0].removeprefix("VAPID_PRIVATE_KEY=")
    public = printed.splitlines()[1].rsplit(" ", 1)[1]
    async with running_app(make_settings(vapid_private_key=private)) as (_, client):
        assert (await client.get("/v1/push/vapid-public-key", headers=auth(token()))).json() == {"public_key": public}
        assert (await client.get("/v1/push/vapid-public-key")).status_code == 401
    with pytest.raises(ValueError, match="VAPID_PRIVATE_KEY"):
        vapid.load(make_settings(vapid_private_key="not-a-key"))


# --------------------------------------------------------------------------------------------
# done when: one notification, every path, live servers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("production", [True, False], ids=["postgres-redis", "sqlite-memory"])
async def test_done_when(production: bool, live_servers: Any, tmp_path: Any, fake: FakePushService,
                         request: pytest.FixtureRequest) -> None:
    """Created through the API: listed, counted, live on an open WebSocket and SSE client,
    decrypted by the push service, then read from another tab, which the first tab hears."""
    env = {"PUSH_ALLOWED_ENDPOINTS": f"{fake.origin}/"}
    if production:
        request.getfixturevalue("redis_url")
        database_url = request.getfixturevalue("pg_url")
        env["DATABASE_URL"] = database_url
    else:
        database_url = f"sqlite+aiosqlite:///{tmp_path / 'realtime.db'}"  # the live server's default in DATA_DIR
    await migrate_and_empty(database_url)
    server = live_servers(redis=production, **env)
    tok = token("u1", "t1")
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT, trust_env=False) as http:
        fake.vapid_public_key = (await http.get("/v1/push/vapid-public-key", headers=auth(tok))).json()["public_key"]
        subscription = fake.browser("b").subscription(fake.endpoint("b"))
        sub = await http.post("/v1/push/subscriptions", json=subscription, headers=auth(tok))
        assert sub.status_code == 201, sub.text
        cursor = (await http.get("/v1/poll", params={"timeout": 0}, headers=auth(tok))).json()["cursor"]

        frames: asyncio.Queue[dict] = asyncio.Queue()
        sse_events: asyncio.Queue[dict] = asyncio.Queue()
        ws = await connect(f"{server.ws_url}/v1/ws?since={cursor}&access_token={tok}", proxy=None, open_timeout=WAIT)

        async def read_ws() -> None:
            async for raw in ws:
                message = json.loads(raw)
                if "op" not in message:
                    frames.put_nowait(message)

        async def read_sse() -> None:
            async with aconnect_sse(http, "GET", f"/v1/sse?since={cursor}", headers=auth(tok)) as source:
                async for event in source.aiter_sse():
                    sse_events.put_nowait({"event": event.event, **json.loads(event.data)})

        readers = [asyncio.create_task(read_ws()), asyncio.create_task(read_sse())]
        try:
            created = await http.post("/v1/notifications", json={**NOTE, "idempotency_key": f"done-{uuid.uuid4()}"},
                                      headers=auth(service_token()))
            assert created.status_code == 201, created.text
            note = created.json()

            page = (await http.get("/v1/notifications", headers=auth(tok))).json()
            assert [n["id"] for n in page["items"]] == [note["id"]]
            counts = (await http.get("/v1/notifications/counts", headers=auth(tok))).json()
            assert counts == {"unread": 1, "unseen": 1, "total": 1}

            for queue in (frames, sse_events):
                event = await asyncio.wait_for(queue.get(), WAIT)
                assert event["type"] == "notification.created" and event["channel"] == "user:u1"
                assert event["data"] == {"notification": note, "unread_count": 1, "unseen_count": 1,
                                         "counts": {"unread": 1, "unseen": 1, "total": 1}}

            await eventually(lambda: fake.for_("b"), WAIT)
            no_problems(fake)
            assert fake.for_("b")[0].payload["id"] == note["id"]

            other_tab = httpx.AsyncClient(base_url=server.url, timeout=WAIT, trust_env=False)
            async with other_tab:
                read = await other_tab.post(f"/v1/notifications/{note['id']}/read", headers=auth(token("u1", "t1")))
            assert read.status_code == 200 and read.json()["read_at"]
            for queue in (frames, sse_events):
                event = await asyncio.wait_for(queue.get(), WAIT)
                assert event["type"] == "notification.read"
                assert event["data"]["ids"] == [note["id"]] and event["data"]["unread_count"] == 0
            assert (await http.get("/v1/notifications/unread-count", headers=auth(tok))).json() == {"count": 0}
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            await ws.close()

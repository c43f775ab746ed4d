"""The publisher package (clients/python, `forge_publisher`): its local checks refuse exactly what the
service refuses (the same rules, read from the same module), its errors are the service's codes,
and against live servers it publishes through the ingest stream and over HTTP, sync and async, to
a WebSocket client. Last, the issue's "done when": a fresh virtual environment with only the
package installed publishes to a running server and a WebSocket client receives it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import typing
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from forge_publisher import (
    AsyncHttpPublisher,
    AsyncPublisher,
    BadChannel,
    Conflict,
    EventTooLarge,
    Forbidden,
    HttpPublisher,
    InvalidEvent,
    InvalidRequest,
    JobStatus,
    Publisher,
    PublishError,
    RateLimited,
    Severity,
    Unauthorized,
    Unrepresentable,
    alert_event,
    check_event,
    errors,
    ingest_fields,
    job_status_event,
    notification_body,
    progress_event,
)
from forge_publisher import rules as wire
from forge_publisher.http import _Http

from app import db, faithful
from app import errors as service_errors
from app.core.publish import prepare
from app.errors import ServiceError
from app.keys import Keys
from app.notifications.schemas import NotificationIn
from app.settings import Settings
from tests.conftest import REDIS_URL, ROOT, TEST_SECRET, LiveServer, eventually, free_port, service_token, token
from tests.test_transports_live import WS, ws_open

PACKAGE = ROOT / "clients" / "python"
MAX_EVENT_BYTES = wire.DEFAULT_MAX_EVENT_BYTES
WAIT = 15.0


# --- the same refusals as the service ---------------------------------------------------------

def _service_refuses(tenant: str, channel: str, type_: str, data: Any) -> bool:
    """What the server does with an entry a worker XADDs without the package (app.ingest): parse
    its data exactly (faithful.loads), then the rules of every publish."""
    try:
        raw = json.dumps(data, separators=(",", ":")).encode()  # NaN as NaN, a lone surrogate escaped
        prepare(tenant, channel, type_, faithful.loads(raw, path="$.data", depth=2), max_event_bytes=MAX_EVENT_BYTES)
    except (ServiceError, ValueError):
        return True
    return False


def _service_error(tenant: str, channel: str, type_: str, data: Any) -> ServiceError:
    """The error the service answers `POST /v1/events` with (its guard checks the body first)."""
    try:
        faithful.check({"data": data})
        prepare(tenant, channel, type_, data, max_event_bytes=MAX_EVENT_BYTES)
    except ServiceError as exc:
        return exc
    raise AssertionError(f"the service accepted {(tenant, channel, type_)}")


def _publisher_refuses(tenant: str, channel: str, type_: str, data: Any) -> bool:
    try:
        ingest_fields(tenant, channel, type_, data)
    except PublishError as exc:
        assert isinstance(exc, ValueError) and exc.local
        return True
    return False


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


BIG = MAX_EVENT_BYTES - wire.ENVELOPE_OVERHEAD - len("analysis:a1") - len("x") - len('{"s":""}')  # exactly at the limit

TRICKY: list[tuple[str, str, str, Any, bool]] = [  # tenant, channel, type, data, refused
    ("org_123", "analysis:a1", "analysis.progress", {"progress": 42}, False),
    ("org_123", "repository:a:b", "repository.updated", {"sha": "abc"}, False),
    ("T" * 128, "a:" + "x" * 128, "x" * 64, {}, False),
    ("org_123\n", "analysis:a1", "x", {}, True),
    ("t 1", "analysis:a1", "x", {}, True),
    ("t:1", "analysis:a1", "x", {}, True),
    ("", "analysis:a1", "x", {}, True),
    ("org_123", "analysis:a1\n", "x", {}, True),
    ("org_123", "Analysis:a1", "x", {}, True),
    ("org_123", "analysis:", "x", {}, True),
    ("org_123", "analysis", "x", {}, True),
    ("org_123", "a:" + "x" * 129, "x", {}, True),
    ("org_123", "analysis:a\u00e91", "x", {}, True),
    ("org_123", "analysis:a1", "x\n", {}, True),
    ("org_123", "analysis:a1", "x" * 65, {}, True),
    ("org_123", "analysis:a1", "bad type!", {}, True),
    ("org_123", "analysis:a1", "x", [1, 2], True),
    ("org_123", "analysis:a1", "x", {"v": float("nan")}, True),
    ("org_123", "analysis:a1", "x", {"v": float("inf")}, True),
    ("org_123", "analysis:a1", "x", {"v": 2**64}, True),
    ("org_123", "analysis:a1", "x", {"v": 2**64 - 1, "w": -(2**63)}, False),
    ("org_123", "analysis:a1", "x", {"v": 1e20}, True),
    ("org_123", "analysis:a1", "x", {"s": "a\x00b"}, True),
    ("org_123", "analysis:a1", "x", {"k\x00": 1}, True),
    ("org_123", "analysis:a1", "x", {"s": "\ud800"}, True),
    ("org_123", "analysis:a1", "x", {"s": "caf\u00e9 \U0001f600"}, False),
    ("org_123", "analysis:a1", "x", nested(31), False),  # levels 2..32 inside the entry
    ("org_123", "analysis:a1", "x", nested(32), True),
    ("org_123", "analysis:a1", "x", {"s": "x" * BIG}, False),
    ("org_123", "analysis:a1", "x", {"s": "x" * (BIG + 1)}, True),
    ("org_123", "analysis:a1", "analysis.progress", {"progress": 101}, True),
    ("org_123", "analysis:a1", "analysis.progress", {"progress": True}, True),
    ("org_123", "analysis:a1", "analysis.progress", {}, True),
    ("org_123", "job:j1", "refactoring.status", {"status": "running"}, False),
    ("org_123", "job:j1", "refactoring.status", {"status": "paused"}, True),
    ("org_123", "job:j1", "refactoring.status", {"status": ["running"]}, True),
    ("org_123", "tenant:org_123", "system.alert", {"severity": "warning"}, False),
    ("org_123", "tenant:org_123", "system.alert", {"severity": "fatal"}, True),
]


@pytest.mark.parametrize("tenant, channel, type_, data, refused", TRICKY)
def test_the_publisher_refuses_exactly_what_the_service_refuses(
        tenant: str, channel: str, type_: str, data: Any, refused: bool) -> None:
    assert _service_refuses(tenant, channel, type_, data) is refused
    assert _publisher_refuses(tenant, channel, type_, data) is refused


def test_the_local_errors_are_the_ones_the_service_would_answer() -> None:
    cases: list[tuple[tuple[str, str, str, Any], type[PublishError]]] = [
        (("t 1", "analysis:a1", "x", {}), InvalidEvent),
        (("t1", "Not A Channel", "x", {}), BadChannel),
        (("t1", "analysis:a1", "bad type!", {}), BadChannel),
        (("t1", "analysis:a1", "x", [1]), InvalidEvent),
        (("t1", "analysis:a1", "x", {"n": 2**70}), Unrepresentable),
        (("t1", "analysis:a1", "x", {"s": "x" * 70_000}), EventTooLarge),
        (("t1", "analysis:a1", "analysis.progress", {"progress": 140}), InvalidEvent),
    ]
    for args, expected in cases:
        with pytest.raises(expected) as caught:
            check_event(*args)
        served = _service_error(*args)
        assert (caught.value.code, caught.value.status) == (served.code, served.status), args
        if expected in (Unrepresentable, EventTooLarge) or args[2] == "analysis.progress":  # the same rule's words
            assert caught.value.message == served.message
        assert caught.value.local and not caught.value.retryable
    with pytest.raises(Unrepresentable, match=r"\$\.data\.n is an integer beyond 64 bits"):
        check_event("t1", "analysis:a1", "x", {"n": 2**70})
    # the size is the service's MAX_EVENT_BYTES: another limit can be given, or the check left to it
    assert check_event("t1", "analysis:a1", "x", {"s": "x" * 70_000}, max_event_bytes=None).data
    with pytest.raises(EventTooLarge, match="the limit is 1000"):
        check_event("t1", "analysis:a1", "x", {"s": "x" * 1000}, max_event_bytes=1000)
    with pytest.raises(InvalidRequest, match="idempotency_key: expected at most 200 characters"):
        check_event("t1", "analysis:a1", "x", {}, idempotency_key="k" * 201)
    with pytest.raises(InvalidEvent, match="cannot be encoded"):
        check_event("t1", "analysis:a1", "x", {"when": object()})


def test_the_ingest_entry_is_what_the_service_reads() -> None:
    fields = ingest_fields("org_123", "analysis:a1", "analysis.progress", {"analysisId": "a1", "progress": 42.5,
                                                                          "note": "caf\u00e9"}, "a1-42")
    assert fields == {"tenant": "org_123", "channel": "analysis:a1", "type": "analysis.progress",
                      "data": '{"analysisId":"a1","progress":42.5,"note":"café"}', "idempotency_key": "a1-42"}
    assert set(fields) <= set(wire.INGEST_FIELDS)
    assert Keys("p").ingest == wire.ingest_stream("p") == "p:ingest" and Keys().ingest == wire.ingest_stream()
    assert "idempotency_key" not in ingest_fields("t1", "analysis:a1", "x", {}, "")  # none: the entry id is the key
    draft = prepare(fields["tenant"], fields["channel"], fields["type"], faithful.loads(fields["data"].encode()),
                    max_event_bytes=MAX_EVENT_BYTES)
    assert orjson.loads(draft.data) == {"analysisId": "a1", "progress": 42.5, "note": "café"}
    assert wire.event_size("analysis:a1", "analysis.progress", fields["data"].encode()) == \
        wire.event_size("analysis:a1", "analysis.progress", draft.data)  # the size counted is the service's


def test_the_typed_helpers_build_what_the_service_accepts() -> None:
    assert progress_event("a1", 42) == ("analysis:a1", "analysis.progress", {"analysisId": "a1", "progress": 42})
    assert progress_event("a1", 7, stage="scan").data == {"analysisId": "a1", "progress": 7, "stage": "scan"}
    assert job_status_event("j1", "completed", pr="x") == ("job:j1", "refactoring.status",
                                                           {"jobId": "j1", "status": "completed", "pr": "x"})
    assert alert_event("org_123", "info", "hi") == ("tenant:org_123", "system.alert", {"severity": "info", "message": "hi"})
    for status in wire.JOB_STATUSES:
        assert not _service_refuses("t1", *job_status_event("j1", status))
    for severity in wire.SEVERITIES:
        assert not _service_refuses("t1", *alert_event("t1", severity, "hi"))
    for progress in (0, 0.5, 100):
        assert not _service_refuses("t1", *progress_event("a1", progress))
    for bad in (lambda: progress_event("a1", 101), lambda: progress_event("a1", True),
                lambda: job_status_event("j1", ["queued"]),  # type: ignore[arg-type]
                lambda: job_status_event("j1", "paused"),  # type: ignore[arg-type]
                lambda: alert_event("t1", "fatal", "hi")):  # type: ignore[arg-type]
        with pytest.raises(InvalidEvent) as refused:
            bad()
        assert refused.value.local and refused.value.status == 422
    # the Literal types a type checker sees are the rules' values
    assert typing.get_args(JobStatus) == wire.JOB_STATUSES and typing.get_args(Severity) == wire.SEVERITIES
    # a channel the id would make invalid is refused when published
    with pytest.raises(BadChannel):
        check_event("t1", *progress_event("a 1", 5))


# --- notifications ----------------------------------------------------------------------------

FULL_NOTIFICATION: dict[str, Any] = {
    "action_url": "https://forge.example/org_123/repo_456/pulls/42", "data": {"pr": 42}, "category": "pull_requests",
    "idempotency_key": "pr-42-created", "actions": [{"id": "review", "label": "Review", "url": "/pulls/42"},
                                                    {"id": "later", "label": "Later"}],
    "tags": ["repo:repo_456", "pr", "pr"]}


def _service_refuses_notification(body: bytes) -> bool:
    try:
        value = faithful.loads(body)
        faithful.check(value)
        NotificationIn.model_validate(value)
    except Exception:
        return True
    return False


def test_a_notification_body_is_what_the_route_takes() -> None:
    body = notification_body("org_123", "u1", "pr.created", "New pull request", "Ada opened #42", **FULL_NOTIFICATION)
    parsed = json.loads(body)
    assert parsed["tags"] == ["repo:repo_456", "pr"]  # repeats dropped, as the service does
    model = NotificationIn.model_validate(parsed)
    assert (model.category, [a.id for a in model.actions], model.data) == ("pull_requests", ["review", "later"], {"pr": 42})
    minimal = json.loads(notification_body("org_123", "u1", "mention", "Hi"))
    assert minimal == {"tenant": "org_123", "user_id": "u1", "type": "mention", "title": "Hi", "message": ""}
    assert NotificationIn.model_validate(minimal).category == wire.DEFAULT_CATEGORY
    # every field of the route's model can be given (and nothing else)
    assert set(NotificationIn.model_fields) == {"tenant", "user_id", "type", "title", "message", *FULL_NOTIFICATION}


BAD_NOTIFICATIONS: list[tuple[str, dict[str, Any]]] = [
    ("tenant", {"tenant": "t:1"}),
    ("user_id", {"user_id": "u 1"}),
    ("type", {"type_": "bad type!"}),
    ("title", {"title": ""}),
    ("title", {"title": "x" * (wire.TITLE_MAX + 1)}),
    ("message", {"message": "x" * (wire.MESSAGE_MAX + 1)}),
    ("action_url", {"action_url": "javascript:alert(1)"}),
    ("action_url", {"action_url": "/" + "x" * wire.URL_MAX}),
    ("category", {"category": "Pull Requests"}),
    ("category", {"category": "general\n"}),
    ("idempotency_key", {"idempotency_key": "k" * 201}),
    ("actions", {"actions": [{"id": "a", "label": "A"}, {"id": "b", "label": "B"}, {"id": "c", "label": "C"}]}),
    ("actions", {"actions": [{"id": "a", "label": "A"}, {"id": "a", "label": "again"}]}),
    ("actions[0].id", {"actions": [{"id": "a b", "label": "A"}]}),
    ("actions[0].label", {"actions": [{"id": "a", "label": ""}]}),
    ("actions[0].label", {"actions": [{"id": "a", "label": "x" * 101}]}),
    ("actions[0].url", {"actions": [{"id": "a", "label": "A", "url": "ftp://x"}]}),
    ("actions[0]", {"actions": [{"id": "a", "label": "A", "style": "primary"}]}),
    ("tags", {"tags": [f"t{n}" for n in range(11)]}),
    ("tags", {"tags": ["a tag"]}),
    ("data", {"data": [1, 2]}),
    ("unrepresentable", {"data": {"n": 2**64}}),
    ("unrepresentable", {"title": "a\x00b"}),
    ("unrepresentable", {"message": "\ud800"}),
]


@pytest.mark.parametrize("field, change", BAD_NOTIFICATIONS, ids=[f"{f}-{n}" for n, (f, _) in enumerate(BAD_NOTIFICATIONS)])
def test_a_notification_the_route_would_refuse_is_refused_locally(field: str, change: dict[str, Any]) -> None:
    args: dict[str, Any] = {"tenant": "org_123", "user_id": "u1", "type_": "mention", "title": "Hi", "message": "",
                            **FULL_NOTIFICATION, **change}
    with pytest.raises(InvalidRequest) as refused:
        notification_body(**args)
    assert refused.value.local and refused.value.status == 422
    if field == "unrepresentable":
        assert isinstance(refused.value, Unrepresentable)
    else:
        assert str(refused.value).startswith(f"{field}:"), refused.value
    # and the service refuses the same body (sent as it would be without the check)
    raw = {"tenant": args["tenant"], "user_id": args["user_id"], "type": args["type_"], "title": args["title"],
           "message": args["message"], **{k: args[k] for k in FULL_NOTIFICATION}}
    assert _service_refuses_notification(json.dumps(raw).encode())


# --- errors -----------------------------------------------------------------------------------

def test_every_error_class_is_the_services_code_and_status() -> None:
    served = {cls.code: cls for cls in _subclasses(service_errors.ServiceError)}
    for code, cls in errors.ERRORS.items():
        assert code in served, f"{code} is no code of the service's (app.errors)"
        assert cls.status == served[code].status, code
    # the codes a publish or a notification can be answered with all have their class
    publishing = {"bad_request", "bad_channel", "unauthorized", "token_expired", "forbidden", "conflict", "event_too_large",
                  "invalid_event", "invalid_request", "unrepresentable_json", "rate_limited", "internal_error",
                  "unavailable", "busy"}
    assert publishing <= set(errors.ERRORS)
    for cls in (BadChannel, EventTooLarge, InvalidEvent, InvalidRequest, Unrepresentable):
        assert issubclass(cls, ValueError)
    assert not issubclass(Conflict, ValueError) and not issubclass(RateLimited, ValueError)


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found | {cls}


def test_an_answer_is_mapped_to_its_named_error() -> None:
    conflict = errors.error_from_answer(409, {"code": "conflict", "message": "analysis.progress 40 would move backwards from 70",
                                              "channel": "analysis:a1"})
    assert isinstance(conflict, Conflict) and conflict.channel == "analysis:a1" and not conflict.local
    assert conflict.message == str(conflict) == "analysis.progress 40 would move backwards from 70"
    limited = errors.error_from_answer(429, {"code": "rate_limited", "message": "slow down", "retry_after": 0.25})
    assert isinstance(limited, RateLimited) and limited.retry_after == 0.25 and limited.retryable
    busy = errors.error_from_answer(503, {"code": "busy", "message": "m"}, "2")
    assert isinstance(busy, errors.Busy) and isinstance(busy, errors.Unavailable) and busy.retry_after == 2.0 and busy.retryable
    expired = errors.error_from_answer(401, {"code": "token_expired", "message": "m"})
    assert isinstance(expired, errors.TokenExpired) and isinstance(expired, Unauthorized)
    odd = errors.error_from_answer(422, {"code": "critical_category", "message": "m"})  # a code with no class of its own
    assert type(odd) is InvalidRequest and odd.code == "critical_category" and odd.status == 422
    proxy = errors.error_from_answer(502, "<html>Bad Gateway</html>")
    assert type(proxy) is PublishError and proxy.status == 502 and "Bad Gateway" in proxy.message and not proxy.retryable
    schema = errors.error_from_answer(422, {"code": "invalid_request", "message": "m", "errors": [{"loc": ["body", "title"]}]})
    assert schema.body is not None and schema.body["errors"] == [{"loc": ["body", "title"]}]


# --- standard library only, until a client is needed -------------------------------------------

def test_the_package_imports_nothing_outside_the_standard_library() -> None:
    """-S -I: no site-packages, so any import of redis, httpx, fastapi... fails. The ingest
    publisher works with any object that has xadd; HttpPublisher says what it needs."""
    code = """
import sys
sys.path.insert(0, sys.argv[1])
import forge_publisher
from forge_publisher import Publisher, InvalidEvent
class Client:
    def xadd(self, name, fields):
        self.sent = (name, fields)
        return b"1-0"
client = Client()
assert Publisher(client, "t1", prefix="p").progress("a1", 5) == "1-0"
assert client.sent[0] == "p:ingest" and client.sent[1]["data"] == '{"analysisId":"a1","progress":5}'
try:
    forge_publisher.HttpPublisher
except ModuleNotFoundError as exc:
    assert "forge-realtime-publisher[http]" in str(exc), exc
else:
    raise AssertionError("httpx was importable")
print(sorted(m for m in sys.modules if m.partition(".")[0] in ("forge_publisher", "redis", "httpx")))
"""
    result = subprocess.run([sys.executable, "-S", "-I", "-c", code, str(PACKAGE / "src")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(["forge_publisher", "forge_publisher.errors", "forge_publisher.events",
                                         "forge_publisher.ingest", "forge_publisher.rules"])


def test_the_package_is_typed_and_versioned() -> None:
    import tomllib

    import forge_publisher

    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    assert project["version"] == forge_publisher.__version__ == "0.1.0"
    assert [dep.split(">")[0] for dep in project["dependencies"]] == ["redis"]
    assert [dep.split(">")[0] for dep in project["optional-dependencies"]["http"]] == ["httpx"]
    assert (PACKAGE / "src" / "forge_publisher" / "py.typed").is_file()
    assert sorted(set(forge_publisher.__all__) - set(dir(forge_publisher)) - {"HttpPublisher", "AsyncHttpPublisher"}) == []
    service = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "forge-realtime-publisher" in service


# --- against a live server --------------------------------------------------------------------

CHANNELS = ["analysis:*", "job:*", "repository:*"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[LiveServer]:
    """One default-configured server on its own Redis prefix and SQLite database (migrated) for this
    module; its keys are deleted afterwards."""
    prefix, data_dir = f"test{uuid.uuid4().hex[:10]}", tmp_path_factory.mktemp("publisher")
    db.run_migrations(Settings(data_dir=data_dir, database_url=None))
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update({"DATA_DIR": str(data_dir), "JWT_SECRET": TEST_SECRET, "REDIS_PREFIX": prefix, "REDIS_URL": redis_url})
    live = LiveServer(env, free_port())
    try:
        yield live.start()
    finally:
        live.stop()
        client = sync_redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def prefix_of(server: LiveServer) -> str:
    return server._env["REDIS_PREFIX"]


async def watch(server: LiveServer, user: str, *channels: str) -> WS:
    return await ws_open(server, user, "t1", channels=channels, tok=token(user, "t1", channels=CHANNELS))


def unique(name: str) -> str:
    return f"{name}{uuid.uuid4().hex[:8]}"


def summary(frames: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(f["channel"], f["type"], f["data"]) for f in frames]


@pytest.fixture
async def aredis(server: LiveServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


async def test_ingest_publishers_sync_and_async_reach_a_websocket_client(server: LiveServer, aredis: aioredis.Redis) -> None:
    analysis, job, repo = unique("a"), unique("j"), f"repository:{unique('r')}"
    sync = Publisher.from_url(REDIS_URL, "t1", prefix=prefix_of(server))
    async_ = AsyncPublisher(aredis, "t1", prefix=prefix_of(server))
    async with await watch(server, "u1", f"analysis:{analysis}", f"job:{job}", repo) as ws:
        entry = await asyncio.to_thread(sync.progress, analysis, 10, stage="scan")
        assert entry and "-" in entry  # the ingest entry's id
        await asyncio.to_thread(sync.job_status, job, "running")
        await async_.progress(analysis, 60)
        await async_.job_status(job, "completed", pullRequest="https://git.example/pr/1")
        await async_.publish(repo, "repository.updated", {"sha": "abc"}, idempotency_key=unique("k"))
        await async_.alert("info", f"{analysis} done")
        frames = await ws.events(6)
    sync.client.close()  # type: ignore[attr-defined]
    assert summary(frames) == [
        (f"analysis:{analysis}", "analysis.progress", {"analysisId": analysis, "progress": 10, "stage": "scan"}),
        (f"job:{job}", "refactoring.status", {"jobId": job, "status": "running"}),
        (f"analysis:{analysis}", "analysis.progress", {"analysisId": analysis, "progress": 60}),
        (f"job:{job}", "refactoring.status", {"jobId": job, "status": "completed", "pullRequest": "https://git.example/pr/1"}),
        (repo, "repository.updated", {"sha": "abc"}),
        ("tenant:t1", "system.alert", {"severity": "info", "message": f"{analysis} done"}),
    ]
    assert [f["id"] for f in frames] == sorted(f["id"] for f in frames)


async def test_an_ingest_entry_refused_for_its_order_is_kept_aside(server: LiveServer, aredis: aioredis.Redis) -> None:
    """What only the service can check (progress backwards) is not a local error on the ingest
    path: the entry is kept aside with its reason, and the next one is delivered."""
    analysis = unique("a")
    events = AsyncPublisher(aredis, "t1", prefix=prefix_of(server))
    rejected = f"{prefix_of(server)}:ingest:rejected"
    async with await watch(server, "u1", f"analysis:{analysis}") as ws:
        await events.progress(analysis, 70)
        entry = await events.progress(analysis, 40)
        await events.progress(analysis, 80)
        frames = await ws.events(2)
    assert [f["data"]["progress"] for f in frames] == [70, 80]

    async def kept() -> list[Any]:
        return [fields for _, fields in await aredis.xrange(rejected) if fields[b"entry_id"] == entry.encode()]

    [aside] = await eventually(kept, timeout=WAIT)  # type: ignore[misc]
    assert b"backwards" in aside[b"reason"]


async def test_http_publishers_sync_and_async_reach_a_websocket_client(server: LiveServer) -> None:
    analysis, job = unique("a"), unique("j")
    async with await watch(server, "u2", f"analysis:{analysis}", f"job:{job}") as ws:
        with HttpPublisher(server.url, service_token(), "t1") as sync:
            first = await asyncio.to_thread(sync.progress, analysis, 5)
            await asyncio.to_thread(sync.publish, "user:u2", "build.finished", {"buildId": "b1"})
        tokens = iter([service_token(), service_token()])
        async with AsyncHttpPublisher(server.url, lambda: next(tokens), "t1") as async_:  # a token asked per request
            await async_.job_status(job, "queued")
            last = await async_.alert("warning", "deploy at 18:00", source="ci")
        frames = await ws.events(4)
    assert summary(frames) == [
        (f"analysis:{analysis}", "analysis.progress", {"analysisId": analysis, "progress": 5}),
        ("user:u2", "build.finished", {"buildId": "b1"}),
        (f"job:{job}", "refactoring.status", {"jobId": job, "status": "queued"}),
        ("tenant:t1", "system.alert", {"severity": "warning", "message": "deploy at 18:00", "source": "ci"}),
    ]
    assert (frames[0]["id"], frames[-1]["id"]) == (first, last)  # over HTTP the id is the event's cursor


async def test_notifications_over_http_sync_and_async(server: LiveServer) -> None:
    key = unique("pr-42-")
    async with await watch(server, "u3") as ws:
        with HttpPublisher(server.url, service_token(), "t1") as sync:
            note = await asyncio.to_thread(lambda: sync.notify(
                "u3", "pr.created", "New pull request", "Ada opened #42", idempotency_key=key, **{
                    k: v for k, v in FULL_NOTIFICATION.items() if k != "idempotency_key"}))
        async with AsyncHttpPublisher(server.url, service_token(), "t1") as async_:
            again = await async_.notify("u3", "pr.created", "Another title", idempotency_key=key)  # the first one again
            other = await async_.notify("u3", "mention", "Ada mentioned you")
        frames = await ws.events(2)
    assert again["id"] == note["id"] and again["title"] == "New pull request"
    assert note["tags"] == ["repo:repo_456", "pr"] and [a["id"] for a in note["actions"]] == ["review", "later"]
    assert (note["category"], note["action_url"], note["read_at"]) == ("pull_requests", FULL_NOTIFICATION["action_url"], None)
    assert other["category"] == "general"
    assert [(f["channel"], f["type"], f["data"]["notification"]["id"]) for f in frames] == [
        ("user:u3", "notification.created", note["id"]), ("user:u3", "notification.created", other["id"])]
    assert frames[1]["data"]["counts"]["unread"] == 2


async def test_the_services_answers_are_mapped_to_named_errors(server: LiveServer, live_servers: Any) -> None:
    analysis = unique("a")
    async with AsyncHttpPublisher(server.url, service_token(), "t1") as events:
        await events.progress(analysis, 70)
        with pytest.raises(Conflict) as conflict:
            await events.progress(analysis, 40)
        assert conflict.value.channel == f"analysis:{analysis}" and not conflict.value.local
        assert (conflict.value.status, conflict.value.code) == (409, "conflict") and "backwards" in conflict.value.message
        job = unique("j")
        await events.job_status(job, "completed")
        with pytest.raises(Conflict):
            await events.job_status(job, "running")  # out of a final state
        big = AsyncHttpPublisher(server.url, service_token(), "t1", client=events.client, max_event_bytes=None)
        with pytest.raises(EventTooLarge) as large:
            await big.publish("analysis:a1", "x", {"s": "x" * 70_000})
        assert not large.value.local and large.value.status == 413 and "65536" in large.value.message
    with HttpPublisher(server.url, token("someone", "t1"), "t1") as user:  # not a service token
        with pytest.raises(Forbidden) as forbidden:
            user.publish("analysis:a1", "x", {})
        assert forbidden.value.status == 403 and "publish" in forbidden.value.message
        with pytest.raises(Forbidden):
            user.notify("u1", "mention", "Hi")
    with HttpPublisher(server.url, "not-a-jwt", "t1") as nobody, pytest.raises(Unauthorized) as unauthorized:
        nobody.publish("analysis:a1", "x", {})
    assert unauthorized.value.status == 401
    # the route's own refusals of a body, as the package maps them (sent raw: the package would not send these)
    with httpx.Client() as raw:
        headers = {"Authorization": f"Bearer {service_token()}", "Content-Type": "application/json"}
        for body, expected in [
            (b'{"tenant":"t1","channel":"analysis:a1","type":"x","data":{"n":99999999999999999999}}', Unrepresentable),
            (b'{"tenant":"t1","channel":"Bad Channel","type":"x","data":{}}', BadChannel),
            (b'{"tenant":"t1","channel":"analysis:a1","type":"analysis.progress","data":{"progress":140}}', InvalidEvent),
            (b'{"tenant":"t1","channel":"analysis:a1","type":"x","data":[1]}', InvalidRequest),
        ]:
            answer = raw.post(f"{server.url}/v1/events", content=body, headers=headers)
            with pytest.raises(expected) as mapped:
                _Http._answer(answer, (202,))
            assert mapped.value.code == answer.json()["code"] and mapped.value.status == answer.status_code
        answer = raw.post(f"{server.url}/v1/notifications", headers=headers,
                          json={"tenant": "t1", "user_id": "u1", "type": "mention", "title": "", "message": ""})
        with pytest.raises(InvalidRequest) as schema:
            _Http._answer(answer, (201,))
        assert schema.value.body and schema.value.body["errors"]
    # a rate limit, on a server of its own that allows one publish per second
    limited = live_servers(PUBLISH_PER_SECOND="1", PUBLISH_BURST="1")
    with HttpPublisher(limited.url, service_token(), "t1") as events, pytest.raises(RateLimited) as rate:
        for n in range(5):
            events.publish("analysis:a1", "x", {"n": n})
    assert rate.value.retryable and rate.value.retry_after is not None and rate.value.retry_after > 0


# --- done when: a fresh virtual environment with only the package -------------------------------

FRESH_SCRIPT = """
import importlib.util, json, os, sys
for service_part in ("app", "fastapi", "sqlalchemy", "pydantic", "uvicorn", "orjson"):
    assert importlib.util.find_spec(service_part) is None, f"{service_part} is installed: not a fresh environment"
from forge_publisher import HttpPublisher, InvalidEvent, Publisher

tenant, channel = os.environ["TENANT"], os.environ["CHANNEL"]
events = Publisher.from_url(os.environ["REDIS_URL"], tenant, prefix=os.environ["PREFIX"])
try:
    events.progress(channel, 140)
except InvalidEvent as exc:
    refused = exc.local
entry = events.progress(channel, 33, via="ingest")
with HttpPublisher(os.environ["URL"], os.environ["TOKEN"], tenant) as http:
    event_id = http.progress(channel, 66, via="http")
    note = http.notify("fresh", "mention", "From a fresh venv", tags=["fresh"])
print(json.dumps({"entry": entry, "event_id": event_id, "notification": note["id"], "refused_locally": refused,
                  "python": sys.prefix}))
"""


async def test_a_fresh_venv_with_only_the_package_publishes_to_a_running_server(
        server: LiveServer, tmp_path: Path, counted: Any) -> None:
    """python -m venv (no pip of its own: the suite's pip installs into it with --python), then
    `pip install clients/python[http]` built from the directory, its dependencies (redis, httpx)
    from the package index under constraints.txt's pins; nothing of the service."""
    venv, source = tmp_path / "fresh", tmp_path / "publisher"
    # built from a copy: pip builds in the source tree, which would leave build/ in the checkout
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", ".*_cache"))
    started = time.monotonic()
    await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    install = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-input",
                         "-c", str(ROOT / "constraints.txt"), f"{source}[http]"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    installed_in = time.monotonic() - started
    assert install.returncode == 0, install.stdout + install.stderr
    listed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "list", "--format", "json"],
                            capture_output=True, text=True, timeout=60, check=True)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"forge-realtime-publisher", "redis", "httpx"} <= names and "forge-realtime" not in names and "fastapi" not in names
    location = subprocess.run([str(python), "-c", "import forge_publisher; print(forge_publisher.__file__)"],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path, check=True).stdout
    assert location.startswith(str(venv)), location  # installed, not the working tree

    channel = unique("fresh")
    script = tmp_path / "publish.py"
    script.write_text(FRESH_SCRIPT)
    env = {"PATH": os.environ.get("PATH", ""), "TENANT": "t1", "CHANNEL": channel, "REDIS_URL": REDIS_URL,
           "PREFIX": prefix_of(server), "URL": server.url, "TOKEN": service_token()}

    async with await watch(server, "fresh", f"analysis:{channel}") as ws:
        done = await asyncio.to_thread(subprocess.run, [str(python), str(script)], capture_output=True, text=True,
                                       timeout=60, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        published, frames = json.loads(done.stdout), await ws.events(3)
    assert published["refused_locally"] is True and published["python"] == str(venv)
    assert summary(frames[:2]) == [
        (f"analysis:{channel}", "analysis.progress", {"analysisId": channel, "progress": 33, "via": "ingest"}),
        (f"analysis:{channel}", "analysis.progress", {"analysisId": channel, "progress": 66, "via": "http"}),
    ]
    assert frames[1]["id"] == published["event_id"]
    assert (frames[2]["channel"], frames[2]["type"], frames[2]["data"]["notification"]["id"]) == \
        ("user:fresh", "notification.created", published["notification"])
    counted("fresh venv", install_seconds=round(installed_in, 1), packages=len(names))

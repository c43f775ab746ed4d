"""Tracing (issue 15, app/tracing.py): a publish's trace context travels with its event through the
log, so the deliver span of any process links to the publish span.

In-process tests record spans with OpenTelemetry's in-memory exporter; the two-process test runs
two `python -m app serve` on one Redis with TRACING=true, exporting over OTLP/HTTP (the standard
variables) to a receiver here that decodes what they send. Every wait is a condition with a
deadline, never a timing assertion.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
import pytest
import redis as sync_redis
from forge_publisher import HttpPublisher, ingest_fields
from forge_publisher import publish as worker_publish
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from app.core.publish import prepare
from app.eventlog import create_event_log
from app.eventlog.base import Event, EventLog
from app.ingest import Ingest
from app.protocol import encode
from app.redis_client import create_redis, keys_for
from app.settings import Settings
from app.tracing import Tracing
from tests.conftest import ROOT, auth, eventually, service_token, token
from tests.live_support import WS, LocalHTTPServer, Request
from tests.notify_support import (
    backend,  # noqa: F401  (fixture)
    migrate_and_empty,
    pg_url,  # noqa: F401  (fixture)
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
WAIT = 20.0


def draft(channel: str = "repository:r1", **fields: Any):  # type: ignore[no-untyped-def]
    return replace(prepare("t1", channel, "test.event", {"n": 1}, max_event_bytes=65536), **fields)


async def first_batch(log: EventLog, after: str) -> list[Event]:
    async def read() -> list[Event]:
        async for batch in log.tail(after):
            if batch:
                return batch
        return []

    return await asyncio.wait_for(read(), WAIT)


# --------------------------------------------------------------------------------------------
# the context in the log
# --------------------------------------------------------------------------------------------


async def test_the_traceparent_travels_through_the_log_beside_the_event(settings: Settings) -> None:
    """Both engines: stored with the event, read back by the tail, absent where none was given
    (as on every entry written before tracing), and never part of what clients receive."""
    redis = create_redis(settings)
    log = create_event_log(settings, redis)
    await log.start()
    try:
        head = await log.head()
        traced, _ = await log.append(draft(traceparent=TRACEPARENT))
        plain, _ = await log.append(draft())
        events: list[Event] = []
        while len(events) < 2:
            events += await first_batch(log, events[-1].id if events else head)
        assert [(e.id, e.traceparent) for e in events] == [(traced, TRACEPARENT), (plain, None)]
        assert b"traceparent" not in encode.envelope(events[0]) and b"00f067aa" not in encode.envelope(events[0])
        if redis is not None:  # the stream entry: one more field, only when there is a context
            raw = await redis.xrange(keys_for(settings).log, min=traced, max=plain)
            assert raw[0][1][b"traceparent"] == TRACEPARENT.encode() and b"traceparent" not in raw[1][1]
    finally:
        await log.close()
        if redis is not None:
            await redis.aclose()


# --------------------------------------------------------------------------------------------
# in one process: the in-memory exporter
# --------------------------------------------------------------------------------------------


class Recorder:
    label = "test"

    def __init__(self, tenant: str = "t1") -> None:
        self.tenant = tenant
        self.events: list[Event] = []

    def deliver(self, event: Event) -> bool:
        self.events.append(event)
        return True

    def fail(self) -> None:
        pass

    def reset(self) -> None:
        pass


@asynccontextmanager
async def traced_app(settings: Settings) -> AsyncIterator[tuple[Any, httpx.AsyncClient, InMemorySpanExporter]]:
    from app.main import create_app

    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter=exporter)
    app = create_app(settings, tracing=tracing)
    try:
        async with app.router.lifespan_context(app), \
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            yield app.state.services, client, exporter
    finally:
        tracing.shutdown()


def spans(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


async def test_a_delivery_links_to_the_publish_which_continues_the_callers_trace(settings: Settings) -> None:
    async with traced_app(settings) as (services, client, exporter):
        subscribers = [Recorder(), Recorder(), Recorder()]
        for subscriber in subscribers:
            services.hub.add(subscriber, "repository:r1")
        response = await client.post("/v1/events", headers={**auth(service_token()), "traceparent": TRACEPARENT},
                                     json={"tenant": "t1", "channel": "repository:r1", "type": "test.event", "data": {}})
        assert response.status_code == 202, response.text
        event_id = response.json()["id"]
        await eventually(lambda: spans(exporter, "deliver"), timeout=WAIT)

        [publish] = spans(exporter, "publish")
        assert publish.kind is SpanKind.PRODUCER
        assert f"{publish.context.trace_id:032x}" == TRACE_ID  # a child of the caller's span
        assert publish.parent is not None and f"{publish.parent.span_id:016x}" == PARENT_ID
        assert publish.attributes["messaging.message.id"] == event_id
        assert publish.attributes["realtime.source"] == "http"

        [deliver] = spans(exporter, "deliver")  # one per event in this process, not one per connection
        assert deliver.kind is SpanKind.CONSUMER
        [link] = deliver.links
        assert (link.context.trace_id, link.context.span_id) == (publish.context.trace_id, publish.context.span_id)
        assert deliver.attributes["realtime.connections"] == 3
        assert deliver.attributes["messaging.destination.name"] == "repository:r1"
        assert deliver.attributes["messaging.message.id"] == event_id
        assert all(s.events[-1].traceparent for s in subscribers)

        # without a traceparent: a publish span of a new trace; nobody listening here: no deliver span
        exporter.clear()
        response = await client.post("/v1/events", headers=auth(service_token()),
                                     json={"tenant": "t1", "channel": "repository:nobody", "type": "test.event", "data": {}})
        assert response.status_code == 202
        [publish] = await eventually(lambda: spans(exporter, "publish"), timeout=WAIT)  # type: ignore[misc]
        assert publish.parent is None and f"{publish.context.trace_id:032x}" != TRACE_ID
        following = await client.post("/v1/events", headers=auth(service_token()),
                                      json={"tenant": "t1", "channel": "repository:r1", "type": "test.event", "data": {}})
        await eventually(lambda: subscribers[0].events[-1].id == following.json()["id"], timeout=WAIT)
        assert [s.attributes["messaging.message.id"] for s in spans(exporter, "deliver")] == [following.json()["id"]]


async def test_an_ingest_entry_s_traceparent_field_is_the_publish_span_s_parent(
        redis_url: str, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis_url=redis_url)
    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter=exporter)
    redis = create_redis(settings)
    assert redis is not None
    log = create_event_log(settings, redis)
    await log.start()
    ingest = Ingest(redis, log, keys=keys_for(settings), max_event_bytes=65536, claim_idle_ms=30_000, tracing=tracing)
    try:
        head = await log.head()
        entry = {b"tenant": b"t1", b"channel": b"job:j1", b"type": b"test.event", b"data": b"{}"}
        await ingest.handle([(b"1-1", {**entry, b"traceparent": TRACEPARENT.encode()}),
                             (b"1-2", {**entry, b"traceparent": b"not a traceparent"}),  # a new trace, never a refusal
                             (b"1-3", entry)])
        events = []
        while len(events) < 3:
            events += await first_batch(log, events[-1].id if events else head)
        published = spans(exporter, "publish")
        assert [s.attributes["realtime.source"] for s in published] == ["ingest"] * 3
        assert f"{published[0].context.trace_id:032x}" == TRACE_ID and published[0].parent is not None
        assert published[1].parent is None and published[2].parent is None
        for event, span in zip(events, published, strict=True):  # each event carries its own publish span's context
            assert event.traceparent is not None
            assert event.traceparent.split("-")[1:3] == [f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"]
        assert await redis.xlen(keys_for(settings).ingest_rejected) == 0
    finally:
        await log.close()
        await redis.aclose()
        tracing.shutdown()


async def test_a_notification_s_event_continues_its_caller_s_trace_whoever_publishes_it(
        backend: tuple[str, str | None], make_settings: Callable[..., Settings]) -> None:
    """An inbox change's event is published after its commit: by its writer at once, or by the
    relay when the writer could not (the log refused it here). Either way its publish span (source
    `outbox`) is a child of the request that made the change, stored with the outbox row; and a
    context too long or malformed for a column is dropped, never a refusal."""
    database_url, redis_url = backend
    await migrate_and_empty(database_url)
    async with traced_app(make_settings(database_url=database_url, redis_url=redis_url)) as (services, client, exporter):
        def published(parent: str) -> list[ReadableSpan]:
            return [s for s in spans(exporter, "publish") if s.attributes["realtime.source"] == "outbox"
                    and s.parent is not None and f"{s.context.trace_id:032x}-{s.parent.span_id:016x}" == parent]

        start = await services.log.head()

        async def logged() -> list[Event]:  # as the tail reads them (a channel's replay carries no context)
            events, head = [], await services.log.head()
            while (events[-1].id if events else start) != head:
                events += await first_batch(services.log, events[-1].id if events else start)
            return events

        # by the writer, right after its commit
        response = await client.post("/v1/notifications", headers={**auth(service_token()), "traceparent": TRACEPARENT},
                                     json={"tenant": "t1", "user_id": "u1", "type": "mention", "title": "traced", "message": ""})
        assert response.status_code == 201, response.text
        notification = response.json()["id"]
        [publish] = published(f"{TRACE_ID}-{PARENT_ID}")
        [event] = await logged()
        assert publish.attributes["messaging.message.id"] == event.id and publish.attributes["realtime.created"]
        assert event.traceparent == f"00-{TRACE_ID}-{publish.context.span_id:016x}-01"

        # by the relay, after the writer's append failed: still the change's caller's child
        other_trace = uuid.uuid4().hex
        caller = f"00-{other_trace}-{PARENT_ID}-01"
        refused = asyncio.Event()

        async def log_away(*args: Any, **kwargs: Any) -> Any:
            refused.set()
            raise ConnectionError("the log is away")

        services.log.append_many = log_away  # type: ignore[method-assign]
        try:
            response = await client.post(f"/v1/notifications/{notification}/read",
                                         headers={**auth(token()), "traceparent": caller, "tracestate": "vendor=1"})
            assert response.status_code == 200, response.text
            assert refused.is_set()
            [failed] = published(f"{other_trace}-{PARENT_ID}")
            assert not failed.status.is_ok and len(await logged()) == 1
        finally:
            del services.log.append_many  # the class's method again
        await eventually(lambda: len(published(f"{other_trace}-{PARENT_ID}")) == 2, timeout=WAIT)
        relayed = published(f"{other_trace}-{PARENT_ID}")[1]
        assert relayed.status.is_ok and f"{relayed.context.trace_id:032x}" == other_trace
        assert relayed.context.trace_state.get("vendor") == "1"  # the caller's tracestate, stored with the row
        [_, read] = await logged()
        assert relayed.attributes["messaging.message.id"] == read.id
        assert read.traceparent is not None and read.traceparent.split("-")[2] == f"{relayed.context.span_id:016x}"

        # what no column holds, or is not a W3C context, starts a new trace: the change is made
        exporter.clear()
        for headers in ({"traceparent": TRACEPARENT + "-" + "x" * 200}, {"traceparent": "00-zz"},
                        {"traceparent": TRACEPARENT, "tracestate": "v=" + "x" * 600}):
            response = await client.post(f"/v1/notifications/{notification}/unread", headers={**auth(token()), **headers})
            assert response.status_code == 200, response.text
            assert (await client.post(f"/v1/notifications/{notification}/read", headers=auth(token()))).status_code == 200
        outbox_spans = [s for s in spans(exporter, "publish") if s.attributes["realtime.source"] == "outbox"
                        and s.attributes["realtime.created"]]  # not a repeat (the relay's row, published again)
        assert [s.parent is not None for s in outbox_spans] == [False, False, False, False, True, False]
        assert f"{outbox_spans[4].context.trace_id:032x}" == TRACE_ID and not outbox_spans[4].context.trace_state
        assert [json.loads(e.data)["change"] for e in (await logged())[2:]] == ["unread", "read"] * 3


OFF_CHECK = """
import asyncio, json, sys
import httpx
from app.auth import mint_token
from app.main import create_app
from app.settings import Settings

async def main():
    settings = Settings(data_dir=sys.argv[1], jwt_secret="s" * 40, redis_url=None, database_url=None)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        services = app.state.services
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            tok = mint_token(settings, user="w", tenant="t1", ttl=60, scope="publish")
            response = await client.post("/v1/events", headers={"Authorization": f"Bearer {tok}", "traceparent": sys.argv[2]},
                                         json={"tenant": "t1", "channel": "repository:r1", "type": "test.event", "data": {}})
            [event] = await services.log.read("t1", "repository:r1", "0-0", response.json()["id"], 10)
    loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk.trace", "opentelemetry.exporter")))
    print(json.dumps({"status": response.status_code, "tracing": services.tracing is not None,
                      "traceparent": event.traceparent, "loaded": loaded}))

asyncio.run(main())
"""


def test_with_tracing_off_nothing_is_recorded_and_no_sdk_is_loaded(tmp_path: Any) -> None:
    """A fresh interpreter (this one has loaded the SDK): the app, a publish with a traceparent,
    and neither OpenTelemetry's tracing SDK nor an exporter imported. (The API is loaded anyway:
    FastAPI and redis-py import it, and redis-py the metrics SDK too when it is installed.)"""
    done = subprocess.run([sys.executable, "-c", OFF_CHECK, str(tmp_path), TRACEPARENT], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"status": 202, "tracing": False, "traceparent": None, "loaded": []}


# --------------------------------------------------------------------------------------------
# across two processes: OTLP/HTTP to a receiver here
# --------------------------------------------------------------------------------------------


class Collector:
    """An OTLP/HTTP trace receiver: every span posted to /v1/traces, with its service's name."""

    def __init__(self) -> None:
        self.server = LocalHTTPServer(self._answer)
        self.url = self.server.url
        self.spans: list[tuple[str, Any]] = []

    def __enter__(self) -> Collector:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    def _answer(self, request: Request) -> tuple[int, bytes]:
        if request.path == "/v1/traces":
            export = ExportTraceServiceRequest.FromString(request.body)
            for resource_spans in export.resource_spans:
                service = next(a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name")
                for scope_spans in resource_spans.scope_spans:
                    self.spans += [(service, span) for span in scope_spans.spans]
        return 200, b""

    def named(self, service: str, name: str) -> list[Any]:
        return [span for who, span in list(self.spans) if who == service and span.name == name]


def attribute(span: Any, key: str) -> Any:
    for item in span.attributes:
        if item.key == key:
            value = item.value
            return getattr(value, value.WhichOneof("value"))
    return None


async def test_a_trace_links_a_publish_on_one_process_to_the_delivery_on_another(
        live_servers: Callable[..., Any], prefix: str, redis_url: str) -> None:
    with Collector() as collector:
        env = {"TRACING": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "50"}
        # A exports later than B, as happens under load: the receiver sees B's deliver span first
        a = live_servers(**{**env, "OTEL_BSP_SCHEDULE_DELAY": "1000"}, OTEL_SERVICE_NAME="server-a")
        b = live_servers(**env, OTEL_SERVICE_NAME="server-b")
        channel = f"repository:{uuid.uuid4().hex[:8]}"
        async with await WS.connect(b.ws_url, token(channels=["repository:*"]), channels=channel) as ws, \
                httpx.AsyncClient() as http:
            await ws.subscribed({"user:u1", "tenant:t1", channel})
            # over HTTP to A, delivered by B
            response = await http.post(f"{a.url}/v1/events", headers={**auth(service_token()), "traceparent": TRACEPARENT},
                                       json={"tenant": "t1", "channel": channel, "type": "test.event", "data": {"n": 1}})
            assert response.status_code == 202, response.text
            event_id = response.json()["id"]
            [frame] = await ws.events(1)
            assert frame["id"] == event_id and set(frame) == {"id", "channel", "type", "data", "ts"}

            def deliver_on_b(wanted: str) -> list[Any]:
                return [s for s in collector.named("server-b", "deliver") if attribute(s, "messaging.message.id") == wanted]

            [deliver] = await eventually(lambda: deliver_on_b(event_id), timeout=WAIT)  # type: ignore[misc]
            # each process exports on its own schedule: B's deliver span may arrive before A's publish span
            [publish] = await eventually(  # type: ignore[misc]
                lambda: [s for s in collector.named("server-a", "publish") if attribute(s, "messaging.message.id") == event_id],
                timeout=WAIT)
            assert publish.trace_id.hex() == TRACE_ID and publish.parent_span_id.hex() == PARENT_ID
            assert publish.kind == publish.SPAN_KIND_PRODUCER and deliver.kind == deliver.SPAN_KIND_CONSUMER
            [link] = deliver.links
            assert (link.trace_id, link.span_id) == (publish.trace_id, publish.span_id)
            assert attribute(deliver, "realtime.connections") == 1
            assert not [s for s in collector.named("server-a", "deliver") if attribute(s, "messaging.message.id") == event_id]

            # through the ingest stream (whichever process drains it), delivered by B
            ingest_parent = f"00-{uuid.uuid4().hex}-{PARENT_ID}-01"
            client = sync_redis.Redis.from_url(redis_url)
            worker_publish(client, "t1", channel, "test.event", {}, prefix=prefix, traceparent=ingest_parent)
            client.close()
            [frame] = await ws.events(1)
            [deliver] = await eventually(lambda: deliver_on_b(frame["id"]), timeout=WAIT)  # type: ignore[misc]
            [link] = deliver.links
            assert link.trace_id.hex() == ingest_parent.split("-")[1]
            deadline = time.monotonic() + WAIT
            while not (publishes := [s for service in ("server-a", "server-b") for s in collector.named(service, "publish")
                                     if s.span_id == link.span_id]):
                assert time.monotonic() < deadline, "no publish span for the ingest entry"
                await asyncio.sleep(0.05)
            assert attribute(publishes[0], "realtime.source") == "ingest" and publishes[0].parent_span_id.hex() == PARENT_ID


@pytest.mark.parametrize("value", ["", "00-zz", f"00-{TRACE_ID}-{PARENT_ID}", f"00-{'0' * 32}-{PARENT_ID}-01"])
async def test_a_bad_traceparent_header_is_a_new_trace_never_an_error(settings: Settings, value: str) -> None:
    async with traced_app(settings) as (_, client, exporter):
        response = await client.post("/v1/events", headers={**auth(service_token()), "traceparent": value},
                                     json={"tenant": "t1", "channel": "repository:r1", "type": "test.event", "data": {}})
        assert response.status_code == 202, response.text
        [publish] = spans(exporter, "publish")
        assert publish.parent is None


def test_the_publisher_package_passes_a_traceparent_on_both_paths() -> None:
    assert ingest_fields("t1", "job:j1", "test.event", {}, traceparent=TRACEPARENT)["traceparent"] == TRACEPARENT
    assert "traceparent" not in ingest_fields("t1", "job:j1", "test.event", {})
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/notifications":
            return httpx.Response(201, json={"id": "n1"})
        return httpx.Response(202, json={"id": "1-0"})

    with HttpPublisher("http://service", "tok", "t1", client=httpx.Client(transport=httpx.MockTransport(answer))) as events:
        events.publish("job:j1", "test.event", {}, traceparent=TRACEPARENT)
        events.publish("job:j1", "test.event", {})
        events.notify("u1", "mention", "traced", traceparent=TRACEPARENT)
    assert [r.headers.get("traceparent") for r in seen] == [TRACEPARENT, None, TRACEPARENT]

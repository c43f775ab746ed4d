"""Tracing with OpenTelemetry: a publish's span links every delivery of its event, on any process.

Off by default (TRACING=false): nothing here is imported by the hot path then, and OpenTelemetry's
SDK is never imported (the service runs without the `tracing` extra; FastAPI brings the API alone).

With TRACING=true each process has its own tracer provider (not the global one: FastAPI's own
request spans stay off) exporting with the standard variables: OTEL_TRACES_EXPORTER (`otlp`, the
default: OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, with
OTEL_EXPORTER_OTLP_HEADERS, ..._TIMEOUT, ..._COMPRESSION; `console`; `none`), OTEL_SERVICE_NAME
(default forge-realtime), OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_BSP_* (the batch).

- `publish` (kind producer): one per event published over HTTP (a child of the request's
  `traceparent`/`tracestate` headers, else a new trace) or drained from the ingest stream (a child
  of the entry's `traceparent` field). It covers the append to the log; its own context is stored
  with the event, as a field of the log entry (never in the JSON clients receive).
  A notification's event (app/notifications/outbox.py) is published after its commit, by its
  writer or later by the relay, maybe on another process: its caller's context is stored with the
  outbox row, so the publish span is that caller's child whoever publishes it (`source` outbox).
- `deliver` (kind consumer): one per event per process that had connections for it (never one
  per connection), when the event carries a sampled context. It links to the publish span rather
  than being its child: a publish fans out to any number of processes, each delivering on its own
  time after the publish ended, and links are how OpenTelemetry's messaging conventions join such
  consumers to a producer. It spans the batch of events the hub handed out together.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from app.errors import Conflict
from app.eventlog.base import Appended, Draft, Event, EventLog

if TYPE_CHECKING:  # never at run time: the SDK is imported only once tracing is on
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, SpanContext

    from app.settings import Settings

logger = logging.getLogger(__name__)

TRACEPARENT = "traceparent"  # the field of an ingest entry, and of a log entry, holding a W3C traceparent
TRACESTATE = "tracestate"  # an ingest entry's optional companion field (not stored in the log)
SERVICE_NAME = "forge-realtime"

# A caller's W3C context as received: (traceparent, tracestate), either None.
Parent = tuple[str | None, str | None]
NO_PARENT: Parent = (None, None)
# what is kept to be stored (an outbox row's columns hold these sizes): a traceparent of the W3C
# form (any version; a later one may append fields) and a tracestate of at most its 512 characters
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[\x21-\x7e]*)?")
TRACEPARENT_MAX = 128
TRACESTATE_MAX = 512
_TRACESTATE = re.compile(rf"[\x20-\x7e]{{1,{TRACESTATE_MAX}}}")


def parent(traceparent: str | None, tracestate: str | None) -> Parent:
    """A caller's context, to be stored and used later: anything not of the W3C form is dropped (it
    would start a new trace anyway), and a tracestate without a traceparent means nothing."""
    if not traceparent or len(traceparent) > TRACEPARENT_MAX or not _TRACEPARENT.fullmatch(traceparent):
        return NO_PARENT
    return traceparent, tracestate if tracestate and _TRACESTATE.fullmatch(tracestate) else None


class TracingUnavailable(RuntimeError):
    """TRACING=true without the `tracing` extra installed."""


def create(settings: Settings) -> Tracing | None:
    """The process's tracing, or None when TRACING is off (no OpenTelemetry import then)."""
    if not settings.tracing:
        return None
    try:
        return Tracing()
    except ImportError as exc:
        raise TracingUnavailable(f"TRACING=true needs the tracing extra (pip install 'forge-realtime[tracing]'): {exc}") from exc


class Tracing:
    """The spans of one process. `exporter` (tests): export each span at once to it instead of
    the exporter OTEL_TRACES_EXPORTER names, batched."""

    def __init__(self, exporter: SpanExporter | None = None) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        resource = Resource.create()
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):  # no OTEL_SERVICE_NAME
            resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
        self._provider = TracerProvider(resource=resource)
        if exporter is not None:
            self._provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            configured = _configured_exporter()
            if configured is not None:
                self._provider.add_span_processor(BatchSpanProcessor(configured))
        self._tracer = self._provider.get_tracer("app.tracing")
        self._propagator = TraceContextTextMapPropagator()
        self._trace = trace
        self._producer, self._consumer = trace.SpanKind.PRODUCER, trace.SpanKind.CONSUMER

    def shutdown(self) -> None:
        """Export what is left (blocking: call it off the event loop)."""
        self._provider.shutdown()

    # --- publish ----------------------------------------------------------------------------

    async def append(self, log: EventLog, draft: Draft, idempotency_key: str | None, *, source: str,
                     traceparent: str | None = None, tracestate: str | None = None) -> tuple[str, bool]:
        """`log.append` inside a publish span, the span's context stored with the event."""
        span, traced = self._start_publish(draft, source, traceparent, tracestate)
        try:
            outcome = await log.append(traced, idempotency_key)
        except BaseException as exc:
            self._end_publish(span, exc)
            raise
        self._end_publish(span, outcome)
        return outcome

    async def append_many(self, log: EventLog, items: Sequence[tuple[Draft, str | None]], *, source: str,
                          parents: Sequence[tuple[str | None, str | None]]) -> list[Appended]:
        """`log.append_many`, one publish span per item (a child of its (traceparent, tracestate))."""
        started = [self._start_publish(draft, source, *parent) for (draft, _), parent in zip(items, parents, strict=True)]
        try:
            outcomes = await log.append_many([(traced, key) for (_, traced), (_, key) in zip(started, items, strict=True)])
        except BaseException as exc:
            for span, _ in started:
                self._end_publish(span, exc)
            raise
        for (span, _), outcome in zip(started, outcomes, strict=True):
            self._end_publish(span, outcome)
        return outcomes

    def _start_publish(self, draft: Draft, source: str, traceparent: str | None,
                       tracestate: str | None) -> tuple[Span, Draft]:
        parent = None
        if traceparent:
            carrier = {TRACEPARENT: traceparent, TRACESTATE: tracestate} if tracestate else {TRACEPARENT: traceparent}
            parent = self._propagator.extract(carrier)  # an invalid value: no parent, a new trace
        span = self._tracer.start_span("publish", context=parent, kind=self._producer, attributes={
            "messaging.system": SERVICE_NAME, "messaging.operation.type": "send",
            "messaging.destination.name": draft.channel, "realtime.tenant": draft.tenant,
            "realtime.type": draft.type, "realtime.source": source})
        context = span.get_span_context()
        if not context.trace_flags.sampled:  # not recorded: deliveries are not traced either
            return span, draft
        stored = f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
        return span, dataclasses.replace(draft, traceparent=stored)

    def _end_publish(self, span: Span, outcome: Appended | BaseException) -> None:
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, Conflict):
                span.record_exception(outcome)
            span.set_status(self._trace.StatusCode.ERROR, type(outcome).__name__)
        else:
            event_id, created = outcome
            span.set_attribute("messaging.message.id", event_id)
            span.set_attribute("realtime.created", created)  # False: an idempotency key's repeat, nothing stored
        span.end()

    # --- deliver ----------------------------------------------------------------------------

    @staticmethod
    def clock() -> int:
        """Now, as spans count time (ns since the epoch)."""
        return time.time_ns()

    def delivered(self, batch: Sequence[Event], started: int, connections: Callable[[str, str], int]) -> None:
        """The hub handed `batch` to its connections from `started` (`clock()`) until now: one
        deliver span per event that carries a publish's context and had connections here."""
        ended = time.time_ns()
        for event in batch:
            if event.traceparent is None:
                continue
            count = connections(event.tenant, event.channel)
            if not count:
                continue
            publish = self._remote(event.traceparent)
            if publish is None:
                continue
            span = self._tracer.start_span(
                "deliver", kind=self._consumer, links=[self._trace.Link(publish)], start_time=started, attributes={
                    "messaging.system": SERVICE_NAME, "messaging.operation.type": "process",
                    "messaging.destination.name": event.channel, "messaging.message.id": event.id,
                    "realtime.tenant": event.tenant, "realtime.type": event.type, "realtime.connections": count})
            span.end(end_time=ended)

    def _remote(self, traceparent: str) -> SpanContext | None:
        context = self._trace.get_current_span(self._propagator.extract({TRACEPARENT: traceparent})).get_span_context()
        return context if context.is_valid and context.trace_flags.sampled else None


def _configured_exporter() -> Any:
    """The exporter OTEL_TRACES_EXPORTER names: otlp (default), console or none."""
    name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if name == "none":
        return None
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        logger.warning("OTEL_TRACES_EXPORTER=%s is not one of otlp, console, none: exporting with otlp", name)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()

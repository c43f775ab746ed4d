"""Publish through the worker ingest stream: one Redis Streams command a call.

    import redis
    from forge_publisher import Publisher

    events = Publisher(redis.Redis.from_url("redis://127.0.0.1:6379/0"), tenant="org_123")
    events.progress("a1", 42)                       # analysis:a1     analysis.progress
    events.job_status("j1", "running")              # job:j1          refactoring.status
    events.alert("warning", "Deploy at 18:00")      # tenant:org_123  system.alert
    events.publish("repository:r1", "repository.updated", {"sha": "abc"})

Each call is `XADD rt:ingest * tenant T channel C type X data <JSON> [idempotency_key K]`; any
running server process validates the entry and delivers it. What the service would refuse is
refused here first (`forge_publisher.errors`, `local=True`); what needs the service's state (the
order of typed events) it refuses itself, keeping the entry aside in `rt:ingest:rejected` with a
`reason`. The call returns the ingest entry's id (not the event's id, which the server assigns
when it appends).

Any client with redis-py's `xadd(name, fields)` will do: `redis.Redis`, a Sentinel's
`master_for(...)`, a pipeline (the XADD is queued: the call returns "" and `execute()` the ids);
`AsyncPublisher` takes `redis.asyncio.Redis`. Nothing of redis-py is imported unless `from_url`
is called.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

from forge_publisher import rules
from forge_publisher.events import CheckedEvent, TypedHelpers, check_event


class RedisClient(Protocol):
    """What the publisher uses of a redis-py client."""

    def xadd(self, name: Any, fields: Any, /) -> Any: ...


class AsyncRedisClient(Protocol):
    def xadd(self, name: Any, fields: Any, /) -> Awaitable[Any]: ...


def ingest_fields(tenant: str, channel: str, type_: str, data: Mapping[str, Any] | None = None,
                  idempotency_key: str | None = None, *,
                  max_event_bytes: int | None = rules.DEFAULT_MAX_EVENT_BYTES, traceparent: str | None = None) -> dict[str, str]:
    """The XADD field/value pairs of one event; raises what the service would refuse.

    `traceparent`: the worker's W3C trace context (e.g. OpenTelemetry's
    `propagate.inject(carrier)["traceparent"]`); with the service's TRACING on, the event's publish
    span is its child. Sent as given: the service ignores one it cannot read."""
    fields = _fields(check_event(tenant, channel, type_, data, idempotency_key=idempotency_key,
                                 max_event_bytes=max_event_bytes))
    if traceparent:
        fields["traceparent"] = traceparent
    return fields


def _fields(event: CheckedEvent) -> dict[str, str]:
    fields = {"tenant": event.tenant, "channel": event.channel, "type": event.type, "data": event.data.decode()}
    if event.idempotency_key is not None:
        fields["idempotency_key"] = event.idempotency_key
    return fields


def _entry_id(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return value if isinstance(value, str) else ""  # a pipeline queued it: its execute() has the id


class Publisher(TypedHelpers[str]):
    """Synchronous (`redis.Redis`). Every method returns the ingest entry id.

    `prefix`: the service's REDIS_PREFIX; `max_event_bytes`: its MAX_EVENT_BYTES (None: leave the
    size to the service)."""

    def __init__(self, client: RedisClient, tenant: str, *, prefix: str = rules.DEFAULT_PREFIX,
                 max_event_bytes: int | None = rules.DEFAULT_MAX_EVENT_BYTES) -> None:
        self.client, self.tenant, self.stream = client, tenant, rules.ingest_stream(prefix)
        self.max_event_bytes = max_event_bytes

    @classmethod
    def from_url(cls, url: str, tenant: str, *, prefix: str = rules.DEFAULT_PREFIX,
                 max_event_bytes: int | None = rules.DEFAULT_MAX_EVENT_BYTES) -> Publisher:
        """A publisher on a new `redis.Redis.from_url(url)` client."""
        import redis

        return cls(redis.Redis.from_url(url), tenant, prefix=prefix, max_event_bytes=max_event_bytes)

    def publish(self, channel: str, type_: str, data: Mapping[str, Any] | None = None, *,
                idempotency_key: str | None = None, traceparent: str | None = None) -> str:
        fields = ingest_fields(self.tenant, channel, type_, data, idempotency_key, max_event_bytes=self.max_event_bytes,
                               traceparent=traceparent)
        return _entry_id(self.client.xadd(self.stream, fields))


class AsyncPublisher(TypedHelpers[Awaitable[str]]):
    """Asynchronous (`redis.asyncio.Redis`). Every method returns the ingest entry id. Local checks
    raise when the method is called, before anything is awaited."""

    def __init__(self, client: AsyncRedisClient, tenant: str, *, prefix: str = rules.DEFAULT_PREFIX,
                 max_event_bytes: int | None = rules.DEFAULT_MAX_EVENT_BYTES) -> None:
        self.client, self.tenant, self.stream = client, tenant, rules.ingest_stream(prefix)
        self.max_event_bytes = max_event_bytes

    @classmethod
    def from_url(cls, url: str, tenant: str, *, prefix: str = rules.DEFAULT_PREFIX,
                 max_event_bytes: int | None = rules.DEFAULT_MAX_EVENT_BYTES) -> AsyncPublisher:
        """A publisher on a new `redis.asyncio.Redis.from_url(url)` client."""
        import redis.asyncio

        return cls(redis.asyncio.Redis.from_url(url), tenant, prefix=prefix, max_event_bytes=max_event_bytes)

    def publish(self, channel: str, type_: str, data: Mapping[str, Any] | None = None, *,
                idempotency_key: str | None = None, traceparent: str | None = None) -> Awaitable[str]:
        fields = ingest_fields(self.tenant, channel, type_, data, idempotency_key, max_event_bytes=self.max_event_bytes,
                               traceparent=traceparent)
        return self._send(fields)

    async def _send(self, fields: dict[str, str]) -> str:
        return _entry_id(await self.client.xadd(self.stream, fields))


def publish(client: RedisClient, tenant: str, channel: str, type_: str, data: Mapping[str, Any] | None = None, *,
            idempotency_key: str | None = None, prefix: str = rules.DEFAULT_PREFIX, traceparent: str | None = None) -> str:
    """One event, synchronously (the shortest form)."""
    return Publisher(client, tenant, prefix=prefix).publish(channel, type_, data, idempotency_key=idempotency_key,
                                                            traceparent=traceparent)


async def apublish(client: AsyncRedisClient, tenant: str, channel: str, type_: str, data: Mapping[str, Any] | None = None, *,
                   idempotency_key: str | None = None, prefix: str = rules.DEFAULT_PREFIX, traceparent: str | None = None) -> str:
    """One event, asynchronously."""
    return await AsyncPublisher(client, tenant, prefix=prefix).publish(channel, type_, data, idempotency_key=idempotency_key,
                                                                       traceparent=traceparent)

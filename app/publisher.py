"""Publish from a backend worker with nothing but the `redis` package.

    import redis
    from app.publisher import Publisher
    events = Publisher(redis.Redis.from_url("redis://127.0.0.1:6379/0"), tenant="org_123")
    events.progress("a1", 42)                       # analysis:a1  analysis.progress
    events.job_status("j1", "running")              # job:j1       refactoring.status
    events.alert("warning", "Deploy at 18:00")      # tenant:org_123 system.alert
    events.publish("repository:r1", "repository.updated", {"sha": "abc"})

Each call is one Redis Streams command (XADD rt:ingest ...); any running server process
validates the entry and delivers it. The helper checks what it can locally, with the server's
own rules (`app.rules`: names, typed events' data), so mistakes fail in the worker; ordering
(progress never backwards, job status only forward) and size are checked by the server, which
keeps refused entries aside in `rt:ingest:rejected`. `AsyncPublisher` is the same for
`redis.asyncio.Redis`.

Its only imports outside the standard library are `app.rules` (itself stdlib-only) and the
client you pass in: a standalone package can ship this file with a copy of rules.py.
"""

from __future__ import annotations

import json
from typing import Any

from app.rules import (
    ALERT_TYPE,
    ANALYSIS_NAMESPACE,
    JOB_NAMESPACE,
    JOB_STATUS_TYPE,
    JOB_STATUSES,
    PROGRESS_TYPE,
    SEVERITIES,
    is_channel,
    is_job_status,
    is_progress,
    is_severity,
    is_tenant,
    is_type,
    tenant_channel,
    typed_problem,
)


def ingest_fields(tenant: str, channel: str, type_: str, data: dict[str, Any],
                  idempotency_key: str | None = None) -> dict[str, str]:
    """The XADD field/value pairs for one event (raises ValueError on what the server would refuse)."""
    if not is_tenant(tenant):
        raise ValueError(f"invalid tenant {tenant!r}: expected 1-128 of [A-Za-z0-9_.@-]")
    if not is_channel(channel):
        raise ValueError(f"invalid channel {channel!r}: expected namespace:id")
    if not is_type(type_):
        raise ValueError(f"invalid event type {type_!r}")
    if not isinstance(data, dict):
        raise ValueError("data must be a dict (a JSON object)")
    problem = typed_problem(type_, data)
    if problem is not None:
        raise ValueError(problem)
    # allow_nan=False: NaN and Infinity are not JSON, the server could not read the entry (ValueError here)
    encoded = json.dumps(data, separators=(",", ":"), allow_nan=False)
    fields = {"tenant": tenant, "channel": channel, "type": type_, "data": encoded}
    if idempotency_key:
        fields["idempotency_key"] = idempotency_key
    return fields


def _progress(analysis_id: str, progress: float, extra: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    if not is_progress(progress):
        raise ValueError("progress must be a number from 0 to 100")
    return f"{ANALYSIS_NAMESPACE}:{analysis_id}", PROGRESS_TYPE, {"analysisId": analysis_id, "progress": progress, **extra}


def _job_status(job_id: str, status: str, extra: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    if not is_job_status(status):
        raise ValueError(f"status must be one of {JOB_STATUSES}")
    return f"{JOB_NAMESPACE}:{job_id}", JOB_STATUS_TYPE, {"jobId": job_id, "status": status, **extra}


def _alert(tenant: str, severity: str, message: str, extra: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    if not is_severity(severity):
        raise ValueError(f"severity must be one of {SEVERITIES}")
    return tenant_channel(tenant), ALERT_TYPE, {"severity": severity, "message": message, **extra}


def _entry_id(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Publisher:
    """Synchronous (redis.Redis). Every method returns the ingest entry id."""

    def __init__(self, client: Any, tenant: str, *, prefix: str = "rt") -> None:
        self.client, self.tenant, self.stream = client, tenant, f"{prefix}:ingest"

    def publish(self, channel: str, type_: str, data: dict[str, Any], *, idempotency_key: str | None = None) -> str:
        return _entry_id(self.client.xadd(self.stream, ingest_fields(self.tenant, channel, type_, data, idempotency_key)))

    def progress(self, analysis_id: str, progress: float, **extra: Any) -> str:
        return self.publish(*_progress(analysis_id, progress, extra))

    def job_status(self, job_id: str, status: str, **extra: Any) -> str:
        return self.publish(*_job_status(job_id, status, extra))

    def alert(self, severity: str, message: str, **extra: Any) -> str:
        return self.publish(*_alert(self.tenant, severity, message, extra))


class AsyncPublisher:
    """Asynchronous (redis.asyncio.Redis). Every method returns the ingest entry id."""

    def __init__(self, client: Any, tenant: str, *, prefix: str = "rt") -> None:
        self.client, self.tenant, self.stream = client, tenant, f"{prefix}:ingest"

    async def publish(self, channel: str, type_: str, data: dict[str, Any], *, idempotency_key: str | None = None) -> str:
        return _entry_id(await self.client.xadd(self.stream, ingest_fields(self.tenant, channel, type_, data, idempotency_key)))

    async def progress(self, analysis_id: str, progress: float, **extra: Any) -> str:
        return await self.publish(*_progress(analysis_id, progress, extra))

    async def job_status(self, job_id: str, status: str, **extra: Any) -> str:
        return await self.publish(*_job_status(job_id, status, extra))

    async def alert(self, severity: str, message: str, **extra: Any) -> str:
        return await self.publish(*_alert(self.tenant, severity, message, extra))


def publish(client: Any, tenant: str, channel: str, type_: str, data: dict[str, Any], *,
            idempotency_key: str | None = None, prefix: str = "rt") -> str:
    """One event, synchronously (the shortest form)."""
    return Publisher(client, tenant, prefix=prefix).publish(channel, type_, data, idempotency_key=idempotency_key)


async def apublish(client: Any, tenant: str, channel: str, type_: str, data: dict[str, Any], *,
                   idempotency_key: str | None = None, prefix: str = "rt") -> str:
    """One event, asynchronously."""
    return await AsyncPublisher(client, tenant, prefix=prefix).publish(channel, type_, data, idempotency_key=idempotency_key)

"""Publish from a backend worker with nothing but the `redis` package.

    import redis
    from app.publisher import Publisher
    events = Publisher(redis.Redis.from_url("redis://127.0.0.1:6379/0"), tenant="org_123")
    events.progress("a1", 42)                       # analysis:a1  analysis.progress
    events.job_status("j1", "running")              # job:j1       refactoring.status
    events.alert("warning", "Deploy at 18:00")      # tenant:org_123 system.alert
    events.publish("repository:r1", "repository.updated", {"sha": "abc"})

Each call is one Redis Streams command (XADD rt:ingest ...); any running server process
validates the entry and delivers it. The helper checks what it can locally, so mistakes fail in
the worker; ordering (progress never backwards, job status only forward) is checked by the
server, which keeps refused entries aside in `rt:ingest:rejected`. `AsyncPublisher` is the same
for `redis.asyncio.Redis`.
"""

from __future__ import annotations

import json
import re
from typing import Any

_CHANNEL = re.compile(r"^[a-z0-9_-]+:[A-Za-z0-9_.:@-]{1,128}$")
_TYPE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
JOB_STATUSES = ("queued", "running", "completed", "failed", "cancelled")
SEVERITIES = ("info", "warning", "critical")


def ingest_fields(tenant: str, channel: str, type_: str, data: dict[str, Any], idempotency_key: str | None = None) -> dict[str, str]:
    """The XADD field/value pairs for one event (raises ValueError on what the server would refuse)."""
    if not _CHANNEL.match(channel):
        raise ValueError(f"invalid channel {channel!r}: expected namespace:id")
    if not _TYPE.match(type_):
        raise ValueError(f"invalid event type {type_!r}")
    if not isinstance(data, dict):
        raise ValueError("data must be a dict (a JSON object)")
    fields = {"tenant": tenant, "channel": channel, "type": type_, "data": json.dumps(data, separators=(",", ":"))}
    if idempotency_key:
        fields["idempotency_key"] = idempotency_key
    return fields


def _progress(analysis_id: str, progress: float, extra: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    if isinstance(progress, bool) or not isinstance(progress, int | float) or not 0 <= progress <= 100:
        raise ValueError("progress must be a number from 0 to 100")
    return f"analysis:{analysis_id}", "analysis.progress", {"analysisId": analysis_id, "progress": progress, **extra}


def _job_status(job_id: str, status: str, extra: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    if status not in JOB_STATUSES:
        raise ValueError(f"status must be one of {JOB_STATUSES}")
    return f"job:{job_id}", "refactoring.status", {"jobId": job_id, "status": status, **extra}


def _alert(tenant: str, severity: str, message: str, extra: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}")
    return f"tenant:{tenant}", "system.alert", {"severity": severity, "message": message, **extra}


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


def publish(client: Any, tenant: str, channel: str, type_: str, data: dict[str, Any], *, idempotency_key: str | None = None, prefix: str = "rt") -> str:
    """One event, synchronously (the shortest form)."""
    return Publisher(client, tenant, prefix=prefix).publish(channel, type_, data, idempotency_key=idempotency_key)


async def apublish(client: Any, tenant: str, channel: str, type_: str, data: dict[str, Any], *, idempotency_key: str | None = None, prefix: str = "rt") -> str:
    """One event, asynchronously."""
    return await AsyncPublisher(client, tenant, prefix=prefix).publish(channel, type_, data, idempotency_key=idempotency_key)

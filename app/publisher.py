"""Publish from a backend worker with nothing but the `redis` package.

    import redis
    from app.publisher import publish
    publish(redis.Redis(), "org_123", "analysis:a1", "analysis.progress", {"analysisId": "a1", "progress": 42})

It is one Redis Streams command (XADD rt:ingest ...); any running server process validates the
entry and delivers it. The helper validates what it can locally so mistakes fail in the worker.
"""

from __future__ import annotations

import json
import re
from typing import Any

_CHANNEL = re.compile(r"^[a-z0-9_-]+:[A-Za-z0-9_.:@-]{1,128}$")
_TYPE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


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


def publish(client: Any, tenant: str, channel: str, type_: str, data: dict[str, Any], *, idempotency_key: str | None = None, prefix: str = "rt") -> str:
    """Synchronous (redis.Redis). Returns the ingest entry id."""
    entry = client.xadd(f"{prefix}:ingest", ingest_fields(tenant, channel, type_, data, idempotency_key))
    return entry.decode() if isinstance(entry, bytes) else entry


async def apublish(client: Any, tenant: str, channel: str, type_: str, data: dict[str, Any], *, idempotency_key: str | None = None, prefix: str = "rt") -> str:
    """Asynchronous (redis.asyncio.Redis). Returns the ingest entry id."""
    entry = await client.xadd(f"{prefix}:ingest", ingest_fields(tenant, channel, type_, data, idempotency_key))
    return entry.decode() if isinstance(entry, bytes) else entry

"""Publish events and notifications to the Forge real-time service from a backend worker.

Through the worker ingest stream (Redis; the `redis` package):

    import redis
    from forge_publisher import Publisher

    events = Publisher(redis.Redis.from_url("redis://127.0.0.1:6379/0"), tenant="org_123")
    events.progress("a1", 42)

or over HTTP with a service token (`pip install 'forge-realtime-publisher[http]'`):

    from forge_publisher import HttpPublisher

    with HttpPublisher("https://realtime.example", token=SERVICE_JWT, tenant="org_123") as events:
        events.job_status("j1", "running")
        events.notify("u1", "mention", "Ada mentioned you", "in #42", action_url="/pulls/42")

`AsyncPublisher` and `AsyncHttpPublisher` are the same for asyncio. The wire rules (names, the
typed events' values, sizes) are `forge_publisher.rules`, the very module the service checks
with; the errors, one per service error code, are `forge_publisher.errors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from forge_publisher import rules
from forge_publisher.errors import (
    BadChannel,
    BadRequest,
    Busy,
    Conflict,
    EventTooLarge,
    Forbidden,
    InternalError,
    InvalidEvent,
    InvalidRequest,
    NotFound,
    PublishError,
    RateLimited,
    TokenExpired,
    Unauthorized,
    Unavailable,
    Unrepresentable,
)
from forge_publisher.events import (
    Action,
    Event,
    Notification,
    alert_event,
    check_event,
    job_status_event,
    notification_body,
    progress_event,
)
from forge_publisher.ingest import AsyncPublisher, Publisher, apublish, ingest_fields, publish
from forge_publisher.rules import JobStatus, Severity

if TYPE_CHECKING:
    from forge_publisher.http import AsyncHttpPublisher, HttpPublisher

__version__ = "0.1.0"

__all__ = [
    "Action",
    "AsyncHttpPublisher",
    "AsyncPublisher",
    "BadChannel",
    "BadRequest",
    "Busy",
    "Conflict",
    "Event",
    "EventTooLarge",
    "Forbidden",
    "HttpPublisher",
    "InternalError",
    "InvalidEvent",
    "InvalidRequest",
    "JobStatus",
    "NotFound",
    "Notification",
    "PublishError",
    "Publisher",
    "RateLimited",
    "Severity",
    "TokenExpired",
    "Unauthorized",
    "Unavailable",
    "Unrepresentable",
    "__version__",
    "alert_event",
    "apublish",
    "check_event",
    "ingest_fields",
    "job_status_event",
    "notification_body",
    "progress_event",
    "publish",
    "rules",
]

_HTTP = ("HttpPublisher", "AsyncHttpPublisher")


def __getattr__(name: str) -> Any:
    """The HTTP publishers, imported when first named: only they need httpx (the `http` extra)."""
    if name in _HTTP:
        try:
            from forge_publisher import http
        except ModuleNotFoundError as exc:
            if exc.name != "httpx":
                raise
            raise ModuleNotFoundError(f"forge_publisher.{name} needs httpx: pip install 'forge-realtime-publisher[http]'",
                                      name="httpx") from exc
        return getattr(http, name)
    raise AttributeError(f"module 'forge_publisher' has no attribute {name!r}")

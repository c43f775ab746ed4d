"""The rules every publish obeys, whether it came over HTTP or through the Redis ingest stream."""

from __future__ import annotations

from typing import Any

import orjson

from app import metrics
from app.channels import check_channel, check_type
from app.core import typed
from app.errors import EventTooLarge, InvalidEvent, Unrepresentable
from app.eventlog.base import Draft
from app.rules import event_size, is_tenant, namespace


def prepare(
    tenant: Any,
    channel: Any,
    type_: Any,
    data: Any,
    *,
    max_event_bytes: int,
    state_namespaces: frozenset[str] = frozenset(),
) -> Draft:
    """Validate one event and encode its data once; raise a named error a client can act on.

    Channels of `state_namespaces` keep their latest event per type as live state.
    """
    if not is_tenant(tenant):
        raise InvalidEvent("tenant must be 1-128 of [A-Za-z0-9_.@-]")
    check_channel(channel)
    check_type(type_)
    if not isinstance(data, dict):
        raise InvalidEvent("data must be a JSON object")
    try:
        encoded = orjson.dumps(data)
    except orjson.JSONEncodeError as exc:  # what app.faithful checks on the way in; never a 500 if a caller did not
        raise Unrepresentable(f"data cannot be encoded as JSON: {exc}") from None
    size = event_size(channel, type_, encoded)  # the publisher package counts the same
    if size > max_event_bytes:  # counted on every publish path (HTTP, notifications, worker ingest)
        metrics.LIMIT_HITS.labels(limit="payload_size").inc()
        raise EventTooLarge(f"event is {size} bytes; the limit is {max_event_bytes}")
    order = typed.validate(type_, data)
    return Draft(tenant, channel, type_, encoded, order=order, stateful=namespace(channel) in state_namespaces)

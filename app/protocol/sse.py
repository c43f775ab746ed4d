"""The Server-Sent Events stream's own frames, besides the events (app.protocol.encode)."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from app.eventlog.base import Event
from app.protocol.encode import sse_event

RESET_FRAME = b"event: reset\ndata: {}\n\n"


def error_frame(code: str, message: str) -> bytes:
    """`event: error` with `{"code","message"}`: written just before the server ends the stream."""
    return b"event: error\ndata: %s\n\n" % orjson.dumps({"code": code, "message": message})


def chunk(events: Sequence[Event], reset: bool) -> bytes:
    """One write's worth: a reset (history was lost) first, then the events in order."""
    body = b"".join(sse_event(event) for event in events)
    return RESET_FRAME + body if reset else body

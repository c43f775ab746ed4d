"""Each event's wire forms, encoded once per process and shared by every connection.

The fan-out hands one Event object to every session of its channel; the first connection that
needs a form encodes it into `event.encoded` and the others reuse the same bytes. The event log
itself knows none of these formats.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from app.eventlog.base import Event
from app.rules import iso_ms


def envelope(event: Event) -> bytes:
    """The contract's envelope `{"id","channel","type","data","ts"[,"snapshot"]}` as compact JSON."""
    memo = event.encoded
    body: bytes | None = memo.get("json")
    if body is None:
        fields: dict[str, object] = {
            "id": event.id,
            "channel": event.channel,
            "type": event.type,
            "data": orjson.Fragment(event.data),
            "ts": iso_ms(event.ms),
        }
        if event.snapshot:
            fields["snapshot"] = True
        body = memo["json"] = orjson.dumps(fields)
    return body


def text(event: Event) -> str:
    """The envelope as text, for WebSocket text frames sent through ASGI."""
    memo = event.encoded
    value: str | None = memo.get("text")
    if value is None:
        value = memo["text"] = envelope(event).decode()
    return value


def ws_frame(event: Event) -> bytes:
    """The whole WebSocket text frame carrying the envelope: unmasked, unfragmented and
    uncompressed, as a server writes it (RFC 6455 section 5.2)."""
    memo = event.encoded
    frame: bytes | None = memo.get("frame")
    if frame is None:
        payload = envelope(event)
        size = len(payload)
        if size < 126:
            header = b"\x81" + bytes((size,))
        elif size < 1 << 16:
            header = b"\x81\x7e" + size.to_bytes(2, "big")
        else:
            header = b"\x81\x7f" + size.to_bytes(8, "big")
        frame = memo["frame"] = header + payload
    return frame


def sse_event(event: Event) -> bytes:
    """The Server-Sent Events frame: `id`, `event` (the type) and one `data` line, the envelope."""
    memo = event.encoded
    chunk: bytes | None = memo.get("sse")
    if chunk is None:
        chunk = memo["sse"] = b"id: %s\nevent: %s\ndata: %s\n\n" % (event.id.encode(), event.type.encode(), envelope(event))
    return chunk


def poll_answer(events: Iterable[Event], cursor: str, reset: bool) -> bytes:
    """A long-poll's JSON answer, built from the envelopes' bytes (nothing re-serialized)."""
    return b'{"events":[%s],"cursor":"%s","reset":%s}' % (
        b",".join(envelope(event) for event in events),
        cursor.encode(),
        b"true" if reset else b"false",
    )

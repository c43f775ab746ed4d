"""What a push carries to the service worker, kept inside one aes128gcm record.

RFC 8291 allows one 4096-byte record: 86 bytes of header, a 16-byte tag and a 1-byte delimiter
leave 3,993 bytes of plaintext. pywebpush does not check; a longer plaintext becomes two records,
which push services refuse.
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_PLAINTEXT = 3993
_FIELDS = ("id", "type", "category", "title", "message", "action_url", "created_at", "data")
_ELLIPSIS = "…"


def build(notification: dict[str, Any]) -> str:
    """The notification's display fields as JSON; too long: `data` goes, then the message is cut."""
    doc = {key: notification.get(key) for key in _FIELDS}
    encoded = orjson.dumps(doc)
    if len(encoded) > MAX_PLAINTEXT:
        doc.pop("data")
        doc["truncated"] = True
        encoded = orjson.dumps(doc)
    while len(encoded) > MAX_PLAINTEXT and doc["message"]:
        message = doc["message"].removesuffix(_ELLIPSIS).encode()
        keep = max(len(message) - (len(encoded) - MAX_PLAINTEXT) - 8, 0)
        doc["message"] = message[:keep].decode(errors="ignore") + (_ELLIPSIS if keep else "")
        encoded = orjson.dumps(doc)
    if len(encoded) > MAX_PLAINTEXT:
        raise ValueError(f"push payload is {len(encoded)} bytes even without its message")
    return encoded.decode()

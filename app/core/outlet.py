"""What a transport offers the session it serves, given when the session is made.

The core never names a transport: it calls these. `write` is the fast path (python-websockets
and centrifuge both separate "write this now" from the connection's logic): while a session is
parked, a live event goes straight to the client through it, with no queue and no task wake-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from app.eventlog.base import Event


class CloseReason(Enum):
    """Why the core ends a connection from a callback (the transport picks the wire form)."""

    SLOW_CONSUMER = "slow_consumer"  # more than MAX_BACKLOG events waiting
    FAILED = "failed"  # delivering to it raised: the hub dropped it


@dataclass(frozen=True, slots=True)
class Outlet:
    """`write(event)` writes a live event now if the transport can without waiting (False: not
    written, the session queues it); `close(reason)` ends the connection at once. Either may be
    None: then events are queued, and the consumer learns of the end from `next_batch`."""

    write: Callable[[Event], bool] | None = None
    close: Callable[[CloseReason], None] | None = None


QUEUED = Outlet()
"""For a transport that reads everything from `next_batch` (long-polling)."""

"""The process-wide "draining" signal: set when SIGTERM arrives, before uvicorn waits for connections.

uvicorn, on SIGTERM, stops accepting, closes WebSockets with 1012 and then waits (up to its
graceful-shutdown timeout, DRAIN_SECONDS here) for the other connections to finish; the app's
lifespan shutdown runs only after that. A long-poll waiting for events (up to POLL_MAX_TIMEOUT)
or an SSE stream (forever) would hold the process that long. So `app.cli` hooks uvicorn's signal
handler and calls `Drain.begin()` at signal time: long-polls answer at once (empty, with their
cursor), SSE streams end, /readyz answers 503; every client resumes on another process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


class Drain:
    """Set once, never cleared: this process is going away. Listeners are plain callables run on
    the event loop when it begins (registering one costs a set insertion, nothing per event)."""

    def __init__(self) -> None:
        self.active = False
        self._listeners: set[Callable[[], None]] = set()

    @property
    def listeners(self) -> int:
        """Streams and waiting polls that will be told (for the log line, and for tests)."""
        return len(self._listeners)

    def begin(self) -> None:
        """Start draining (idempotent). Call on the event loop's thread; from a signal handler use
        `begin_soon`."""
        if self.active:
            return
        self.active = True
        logger.info("draining: %d streams and waiting polls told to end", len(self._listeners))
        for listener in list(self._listeners):
            listener()

    def begin_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """From a signal handler: a signal may interrupt the loop anywhere, so the listeners run as
        a callback of the loop instead (thread-safe scheduling also wakes a loop blocked in select)."""
        loop.call_soon_threadsafe(self.begin)

    @contextmanager
    def listening(self, listener: Callable[[], None]) -> Iterator[None]:
        """Run `listener` if draining begins while inside the block. Not when it already has: the
        caller checks `active` first and decides (a poll answers at once, a stream ends)."""
        self._listeners.add(listener)
        try:
            yield
        finally:
            self._listeners.discard(listener)

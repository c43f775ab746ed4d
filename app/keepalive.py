"""Keep-alives for every connection of a process from one timer, not one per connection.

A WebSocket ping (or an SSE comment) every interval keeps proxies and load balancers from closing
an idle connection and lets the kernel notice a peer that is gone (a write that is never
acknowledged). uvicorn's pings and sse-starlette's ping task arm a timer per connection, and each
fires on its own: at 100,000 idle connections that is thousands of wake-ups a second. Here the
connections sit on a wheel of one slot per tick; each tick pings one slot's connections with a
frame encoded once, so every connection is pinged once per interval and the work is spread evenly.
A connection written to since its last turn is skipped (the transports' `keepalive`): any frame
does a ping's work, and under traffic most pings were writes of their own, as costly as a
delivery's. So no connection is silent for two intervals, and a busy one is never pinged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from itertools import count

logger = logging.getLogger(__name__)

WS_PING = b"\x89\x00"  # a server's WebSocket ping (FIN, opcode 9, unmasked, no payload)
SSE_PING = b": ping\n\n"  # an SSE comment, which EventSource ignores

Ping = Callable[[], object]  # writes the connection's keep-alive; anything it returns is ignored


class Keepalive:
    def __init__(self, interval: float, *, tick: float = 1.0) -> None:
        self.interval = interval
        self.tick = min(tick, interval) if interval > 0 else tick
        self._slots: list[dict[int, Ping]] = [{} for _ in range(max(1, round(interval / self.tick)))]
        self._ids = count()
        self._task: asyncio.Task[None] | None = None

    def add(self, ping: Ping) -> int:
        """Ping from now on (`ping` must not block); returns the handle `discard` takes."""
        handle = next(self._ids)
        self._slots[handle % len(self._slots)][handle] = ping
        return handle

    def discard(self, handle: int) -> None:
        self._slots[handle % len(self._slots)].pop(handle, None)

    def __len__(self) -> int:
        return sum(len(slot) for slot in self._slots)

    async def start(self) -> None:
        if self.interval > 0:
            self._task = asyncio.create_task(self._run(), name="keepalive")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def sweep(self, slot: int) -> None:
        """Ping one slot's connections; one that raises is logged and dropped, the others go on."""
        pings = self._slots[slot % len(self._slots)]
        for handle, ping in tuple(pings.items()):
            try:
                ping()
            except Exception:
                logger.exception("a keep-alive write failed; no more keep-alives for that connection")
                pings.pop(handle, None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for tick in count(1):
            await asyncio.sleep(max(start + tick * self.tick - loop.time(), 0))
            self.sweep(tick)

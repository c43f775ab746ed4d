"""Where the log stands (head and floor), read once for all the resumes of a moment.

Every resume needs the log's head (what was published before it is due, so a poll right after an
acknowledged publish sees it) and its floor (a cursor below it lost history). In a reconnect
storm thousands of resumes ask at once; each asking Redis on its own made a storm's set-up cost
grow with its size. Here a resume waits for the next read sent after it asked, so what it gets
is as fresh as its own read would have been, and all who asked while one read was on its way
share the next: one read per round trip, whatever the number of resumes.
"""

from __future__ import annotations

import asyncio

from app.eventlog.base import EventLog

Bounds = tuple[str, str]  # (head, floor)


class SharedBounds:
    def __init__(self, log: EventLog, partition: int = 0) -> None:
        self._log = log
        self._partition = partition  # a partitioned log's bounds are each partition's
        self._next: asyncio.Future[Bounds] | None = None  # the read not sent yet, and who waits for it
        self._reader: asyncio.Task[None] | None = None

    async def read(self) -> Bounds:
        """`(head, floor)` as read after this call began; raises what the engine raised."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            self._next.add_done_callback(_consume)  # every waiter may have gone: no "never retrieved"
            if self._reader is None:
                self._reader = asyncio.get_running_loop().create_task(self._read_while_asked(), name="log-bounds")
        return await asyncio.shield(self._next)  # one waiter cancelled leaves the read to the others

    async def _read_while_asked(self) -> None:
        try:
            while (asked := self._next) is not None:
                self._next = None  # who asks from now on waits for the next read
                try:
                    asked.set_result(await self._log.bounds(self._partition))
                except asyncio.CancelledError:  # the process is stopping: nobody is left waiting
                    asked.cancel()
                    if self._next is not None:
                        self._next.cancel()
                        self._next = None
                    raise
                except Exception as exc:  # each waiter handles it (a resume closes with 1013)
                    asked.set_exception(exc)
        finally:
            self._reader = None


def _consume(future: asyncio.Future[Bounds]) -> None:
    if not future.cancelled():
        future.exception()

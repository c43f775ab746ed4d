"""What every loop that must outlive a Redis outage needs: a doubling retry delay, and a way to
notice a cancellation that redis-py swallowed (seen on Python 3.11 when it lands while a
connection is being set up), so such loops still stop when asked."""

from __future__ import annotations

import asyncio


def cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Backoff:
    """0.1 s doubling to 5 s between failed attempts; back to 0.1 s after a success."""

    FIRST, LAST = 0.1, 5.0

    def __init__(self) -> None:
        self.delay = self.FIRST

    def reset(self) -> None:
        self.delay = self.FIRST

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.LAST)

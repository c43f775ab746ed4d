"""app/core/bounds.py: the resumes of a moment share one read of the log's head and floor, and
none gets a read that was sent before it asked (read-your-writes)."""

from __future__ import annotations

import asyncio

import pytest

from app.core.bounds import SharedBounds
from app.eventlog.memory import MemoryEventLog


class GatedLog(MemoryEventLog):
    """Each bounds() read waits for the test to let it through, and is numbered."""

    def __init__(self) -> None:
        super().__init__(max_events=1000, retention_seconds=3600, idempotency_seconds=60)
        self.reads = 0
        self.gate = asyncio.Event()
        self.fail_next: Exception | None = None

    async def bounds(self, partition: int = 0) -> tuple[str, str]:
        self.reads += 1
        number = self.reads
        await self.gate.wait()
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        return f"{number}-0", "0-0"


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_resumes_that_ask_together_share_one_read() -> None:
    log = GatedLog()
    shared = SharedBounds(log)
    first = [asyncio.create_task(shared.read()) for _ in range(50)]
    await settle()
    assert log.reads == 1  # one read on its way for all fifty
    log.gate.set()
    assert {await t for t in first} == {("1-0", "0-0")}


async def test_who_asks_while_a_read_is_on_its_way_waits_for_the_next_one() -> None:
    """A read sent before a resume asked may predate a publish acknowledged before it asked."""
    log = GatedLog()
    shared = SharedBounds(log)
    early = asyncio.create_task(shared.read())
    await settle()
    late = [asyncio.create_task(shared.read()) for _ in range(20)]  # the first read is in flight
    await settle()
    assert log.reads == 1
    log.gate.set()
    assert await early == ("1-0", "0-0")
    assert {await t for t in late} == {("2-0", "0-0")}
    assert log.reads == 2  # twenty-one resumes, two reads


async def test_a_failed_read_reaches_each_of_its_waiters_and_the_next_read_is_made() -> None:
    log = GatedLog()
    shared = SharedBounds(log)
    log.fail_next = ConnectionError("Redis away")
    waiting = [asyncio.create_task(shared.read()) for _ in range(3)]
    await settle()
    log.gate.set()
    for task in waiting:
        with pytest.raises(ConnectionError, match="Redis away"):
            await task
    assert await shared.read() == ("2-0", "0-0")


async def test_a_waiter_that_goes_away_leaves_the_read_to_the_others() -> None:
    log = GatedLog()
    shared = SharedBounds(log)
    leaving, staying = asyncio.create_task(shared.read()), asyncio.create_task(shared.read())
    await settle()
    leaving.cancel()  # its client closed the connection during the read
    await settle()
    log.gate.set()
    assert await staying == ("1-0", "0-0")
    assert leaving.cancelled()


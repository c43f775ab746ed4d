"""One timer pings every connection once per interval, spread over the interval's ticks."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from app.transports.keepalive import Keepalive


def test_each_connection_is_pinged_once_per_interval_and_the_slots_are_even() -> None:
    wheel = Keepalive(interval=10, tick=1)
    pinged: Counter[int] = Counter()
    handles = [wheel.add(lambda i=i: pinged.update([i])) for i in range(1000)]
    sizes = []
    for tick in range(10):
        before = sum(pinged.values())
        wheel.sweep(tick)
        sizes.append(sum(pinged.values()) - before)
    assert pinged == Counter(range(1000))  # everyone once, nobody twice
    assert max(sizes) - min(sizes) <= 1, sizes  # the work is spread over the interval
    for h in handles[:500]:
        wheel.discard(h)
    pinged.clear()
    for tick in range(10):
        wheel.sweep(tick)
    assert pinged == Counter(range(500, 1000))
    assert len(wheel) == 500


def test_a_ping_that_raises_is_dropped_and_the_others_still_get_theirs() -> None:
    wheel = Keepalive(interval=1, tick=1)
    got: list[int] = []

    def broken() -> None:
        raise RuntimeError("socket gone")

    wheel.add(lambda: got.append(1))
    wheel.add(broken)
    wheel.add(lambda: got.append(3))
    wheel.sweep(0)
    assert got == [1, 3] and len(wheel) == 2
    wheel.sweep(0)
    assert got == [1, 3, 1, 3]


async def test_the_running_wheel_pings_on_its_own() -> None:
    wheel = Keepalive(interval=0.2, tick=0.05)
    pinged = asyncio.Event()
    wheel.add(pinged.set)
    await wheel.start()
    try:
        await asyncio.wait_for(pinged.wait(), 2)
    finally:
        await wheel.stop()


@pytest.mark.parametrize("interval", [0, -1])
async def test_an_interval_of_zero_never_starts_a_timer(interval: float) -> None:
    wheel = Keepalive(interval=interval)
    await wheel.start()
    assert wheel._task is None
    await wheel.stop()

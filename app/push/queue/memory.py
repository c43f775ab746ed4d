"""The embedded push queue: one process, in memory (pushes waiting here end with the process)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Sequence

from app.push.queue.base import Delivery, PushJob, PushQueue

_PUT_IDS_PRUNE_AT = 100_000  # remembered job ids past which the expired ones are forgotten


class MemoryPushQueue(PushQueue):
    def __init__(self, *, claim_idle_ms: int) -> None:
        self._claim_idle = claim_idle_ms / 1000
        self._ready: deque[PushJob] = deque()
        self._delayed: list[tuple[float, int, PushJob]] = []  # heap of (due, tie-break, job)
        self._taken: dict[str, tuple[PushJob, float]] = {}  # receipt -> (job, taken at)
        self._receipts = itertools.count(1)
        self._changed = asyncio.Event()
        self._put_ids: dict[str, float] = {}  # job id -> until when a repeated put is ignored


    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def put(self, jobs: Sequence[PushJob]) -> None:
        now = time.monotonic()
        if len(self._put_ids) > _PUT_IDS_PRUNE_AT:
            self._put_ids = {job_id: until for job_id, until in self._put_ids.items() if until > now}
        for job in jobs:
            if self._put_ids.get(job.id, 0.0) > now:
                continue
            self._put_ids[job.id] = now + max(job.ttl, 60)
            self._ready.append(job)
        self._changed.set()

    async def take(self, count: int, block_seconds: float) -> list[Delivery]:
        deadline = time.monotonic() + block_seconds
        while True:
            now = time.monotonic()
            while self._delayed and self._delayed[0][0] <= now:
                self._ready.append(heapq.heappop(self._delayed)[2])
            jobs = self._abandoned(now, count)
            while len(jobs) < count and self._ready:
                jobs.append(self._ready.popleft())
            if jobs or now >= deadline:
                return [self._hand_out(job, now) for job in jobs]
            wake = min([deadline, *(due for due, _, _ in self._delayed[:1]),
                        *(taken + self._claim_idle for _, taken in self._taken.values())])
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(wake - now, 0.001))
            except TimeoutError:
                continue  # something became due, or the wait is over: look again

    async def done(self, delivery: Delivery) -> None:
        self._taken.pop(delivery.receipt, None)

    async def retry(self, delivery: Delivery, delay_seconds: float) -> None:
        if self._taken.pop(delivery.receipt, None) is None:
            return  # already handed to another worker after going idle: that one owns it now
        due = time.monotonic() + delay_seconds
        heapq.heappush(self._delayed, (due, next(self._receipts), delivery.job.next_attempt()))
        self._changed.set()

    def _abandoned(self, now: float, count: int) -> list[PushJob]:
        """Jobs a worker took and left unsettled past the claim time (it died or hung)."""
        stale = [r for r, (_, taken) in self._taken.items() if now - taken >= self._claim_idle][:count]
        return [self._taken.pop(receipt)[0] for receipt in stale]

    def _hand_out(self, job: PushJob, now: float) -> Delivery:
        receipt = str(next(self._receipts))
        self._taken[receipt] = (job, now)
        return Delivery(job, receipt)

"""The background task that drains the push queue in every process (started in the app lifespan).

Each job ends in exactly one of: done (delivered, or given up and counted), retried later (429,
5xx, network: backoff, or the push service's Retry-After), or its subscription deleted (404/410).
401/403 mean our VAPID setup is wrong, not the subscription: alerted (log + metric), not deleted.
Nothing is settled before it happened, so a worker that dies mid-batch loses nothing: the queue
hands its jobs to another after the claim time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import metrics
from app.push import subscriptions
from app.push.queue.base import Delivery, PushQueue
from app.push.sender import Outcome, PushSender
from app.retry import Backoff, cancelling

logger = logging.getLogger(__name__)

TAKE_BLOCK_SECONDS = 1.0


class PushWorker:
    def __init__(
        self,
        queue: PushQueue,
        sender: PushSender,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        concurrency: int,
        max_attempts: int,
        retry_base_seconds: float,
        retry_max_seconds: float,
    ) -> None:
        self.queue = queue
        self.sender = sender
        self.sessionmaker = sessionmaker
        self._concurrency = concurrency
        self._max_attempts = max_attempts
        self._retry_base = retry_base_seconds
        self._retry_max = retry_max_seconds
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="push-worker")

    async def stop(self) -> None:
        """Stop taking and sending; what was in flight stays in the queue for another worker."""
        tasks = [t for t in (self._task, *self._sending) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            if cancelling():
                raise asyncio.CancelledError
            free = self._concurrency - len(self._sending)
            if free <= 0:
                await asyncio.wait(self._sending, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                deliveries = await self.queue.take(free, TAKE_BLOCK_SECONDS)
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the queue's engine is down: wait, then ask again (jobs stay queued)
                if cancelling():
                    raise asyncio.CancelledError from exc
                logger.exception("push queue unavailable; retrying in %.1fs", backoff.delay)
                await backoff.wait()
                continue
            for delivery in deliveries:
                task = asyncio.create_task(self.handle(delivery))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)

    async def handle(self, delivery: Delivery) -> None:
        """Send one job and settle it. Any failure leaves it to a retry, never to silence."""
        job = delivery.job
        where = _origin(job.endpoint)
        try:
            left = job.seconds_left(time.time())
            if left <= 0:  # it waited longer than its TTL (every worker was down): out of date, not sent
                logger.warning("push %s to %s expired before it could be sent (attempt %d); dropped", job.id, where,
                               job.attempt + 1)
                metrics.PUSH_RESULTS.labels(result="failed").inc()
                await self.queue.done(delivery)
                return
            outcome = await self.sender.send(job, ttl=math.ceil(left))
            if outcome.result == "gone":
                async with self.sessionmaker() as db, db.begin():
                    await subscriptions.remove_dead(db, job.subscription_id, job.endpoint)
                logger.info("push subscription %s is gone (%s): deleted", job.subscription_id, outcome.status)
            elif outcome.result == "vapid_rejected":
                logger.error("push service %s refused our VAPID credentials (%s): check VAPID_PRIVATE_KEY and "
                             "VAPID_SUBJECT; subscription %s kept", where, outcome.status, job.subscription_id)
            elif outcome.result == "rejected":
                logger.error("push to %s refused (%s), dropped: %s", where, outcome.status, outcome.detail)
            elif outcome.result == "retry":
                await self._retry(delivery, outcome)
                return
            metrics.PUSH_RESULTS.labels(result=outcome.result).inc()
            await self.queue.done(delivery)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("push %s to %s failed; will retry", job.id, where)
            try:
                await self._retry(delivery, Outcome("retry", detail="error"))
            except Exception:
                logger.exception("push %s stays pending; a worker takes it over after the claim time", job.id)

    async def _retry(self, delivery: Delivery, outcome: Outcome) -> None:
        job = delivery.job
        attempts = job.attempt + 1
        delay = outcome.retry_after if outcome.retry_after is not None else self.backoff(job.attempt)
        expires_in = job.seconds_left(time.time())
        if attempts >= self._max_attempts or delay > expires_in:
            reason = "attempts exhausted" if attempts >= self._max_attempts else "it would expire first"
            logger.warning("push %s to %s given up after %d attempts (%s; last: %s %s)", job.id, _origin(job.endpoint),
                           attempts, reason, outcome.status, outcome.detail)
            metrics.PUSH_RESULTS.labels(result="failed").inc()
            await self.queue.done(delivery)
            return
        metrics.PUSH_RESULTS.labels(result="retry").inc()
        await self.queue.retry(delivery, delay)

    def backoff(self, attempt: int) -> float:
        """Exponential with jitter (half to full), so retries of many pushes do not come in waves."""
        ceiling = min(self._retry_base * 2**attempt, self._retry_max)
        return ceiling * random.uniform(0.5, 1.0)


def _origin(endpoint: str) -> str:
    """Endpoints are capability URLs: logs name the push service, never the whole URL."""
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"

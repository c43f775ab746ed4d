"""The push queue interface: pushes wait here, off the request path, until a worker sends them.

At-least-once: a taken job stays the queue's until `done` or `retry`; one a worker took and never
settled (it died) is handed out again once it has been idle for the claim time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import orjson


@dataclass(frozen=True, slots=True)
class PushJob:
    """One push to one browser subscription, complete: sending it needs no database."""

    id: str
    subscription_id: str
    endpoint: str
    p256dh: str
    auth: str
    payload: str  # plaintext JSON, already within the one-record limit
    ttl: int
    urgency: str
    created_ms: int
    attempt: int = 0

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> PushJob:
        return cls(**orjson.loads(raw))

    def next_attempt(self) -> PushJob:
        return replace(self, attempt=self.attempt + 1)

    def seconds_left(self, now: float) -> float:
        """How long the push is still worth delivering (its TTL counts from when it was queued)."""
        return self.created_ms / 1000 + self.ttl - now


@dataclass(frozen=True, slots=True)
class Delivery:
    """A job handed to one worker; `receipt` names it to the queue until it is settled."""

    job: PushJob
    receipt: str


class PushQueue(ABC):
    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def put(self, jobs: Sequence[PushJob]) -> None:
        """Queue the jobs; a job id put before (within its TTL) is not queued again, so whoever
        retries a put after a failure (the outbox relay) cannot push twice."""

    @abstractmethod
    async def take(self, count: int, block_seconds: float) -> list[Delivery]:
        """Up to `count` jobs: abandoned ones first, then new ones, waiting up to `block_seconds`."""

    @abstractmethod
    async def done(self, delivery: Delivery) -> None:
        """Settled (sent, or given up): never handed out again."""

    @abstractmethod
    async def retry(self, delivery: Delivery, delay_seconds: float) -> None:
        """Settle this delivery and hand the job out again, as its next attempt, after the delay."""

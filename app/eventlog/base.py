"""The event log interface: what the subscription core needs from an engine, nothing more.

Every event gets an id `<ms>-<seq>` (a Redis Streams id) that strictly increases across its
partition. A log may be split by tenant into partitions (REDIS_PARTITIONS); every channel of a
tenant is in one partition, so one cursor still orders everything a user can see, whichever
channels it spans. Head, floor and bounds are a partition's; the tail yields every partition's
events, each partition in its order.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from app.errors import BadCursor, Conflict

_CURSOR = re.compile(r"^(\d{1,19})-(\d{1,19})$")
ZERO = "0-0"


def parse_cursor(value: str) -> tuple[int, int]:
    """`<ms>-<seq>` as a sortable pair; anything else is a client error, never a 500."""
    match = _CURSOR.match(value)
    if not match:
        raise BadCursor(f"not a valid cursor: {value[:40]!r}")
    return int(match.group(1)), int(match.group(2))


def cursor_max(*cursors: str) -> str:
    return max(cursors, key=parse_cursor)


def cursor_from_ms(ms: int) -> str:
    return f"{max(ms, 0)}-0"


@dataclass(slots=True)
class Event:
    """One published event, as the log stores it. The log knows no wire format: `encoded` is a
    per-process memo that the wire encoders (app.protocol.encode) fill, so each form is encoded
    once and shared by every connection that receives this object."""

    id: str
    tenant: str
    channel: str
    type: str
    data: bytes  # compact JSON, validated on the way in
    snapshot: bool = False
    # the W3C traceparent of its publish span (app.tracing), stored beside the event, never sent to clients
    traceparent: str | None = field(default=None, repr=False, compare=False)
    # each form in its own type (bytes; str for text frames): the encoders read it into typed names
    encoded: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _key: tuple[int, int] | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> tuple[int, int]:
        """The id as a sortable pair, parsed once (every session compares it)."""
        if self._key is None:
            self._key = parse_cursor(self.id)
        return self._key

    @property
    def ms(self) -> int:
        """When the log accepted it (the id's millisecond part)."""
        return self.key[0]


@dataclass(frozen=True, slots=True)
class Order:
    """Where a typed event stands in its channel's sequence: a lower rank, or any other value
    after a terminal one, is refused (409). Made by app.core.typed; enforced by the engines."""

    rank: float
    value: str
    terminal: bool = False


@dataclass(slots=True, frozen=True)
class Draft:
    """An event before the log gives it an id (already validated).

    `order` (typed events) is checked against the channel's last accepted one of the same type;
    `stateful` (or an order) keeps the event as the channel's live state for its type.
    `traceparent` (TRACING on): the publish span's W3C context, stored with the event for the
    delivering processes' spans to link to (app.tracing).
    """

    tenant: str
    channel: str
    type: str
    data: bytes
    order: Order | None = None
    stateful: bool = False
    traceparent: str | None = None

    @property
    def keeps_state(self) -> bool:
        return self.stateful or self.order is not None


class HistoryLost(Exception):
    """Raised by `tail` when the log may have lost entries it had accepted (a failover to a
    replica that had not received them, a Redis that lost its data): the tail's consumer (the
    hub) tells every live connection `reset`, then tails on from where it was. The engine has
    already moved its floor above the lost part, so cursors from before it resume with a reset."""


Appended = tuple[str, bool] | Conflict
"""One outcome of `append_many`: (id, created), or the Conflict `append` would have raised."""


class EventLog(ABC):
    """One append-only log (or one per partition), indexed per (tenant, channel) so a resume reads
    only what it needs."""

    partitions: int = 1

    def partition(self, tenant: str) -> int:
        """The partition holding every channel of `tenant` (0 with one partition)."""
        return 0

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Raise when the engine is unreachable (readiness)."""

    @abstractmethod
    async def append(self, draft: Draft, idempotency_key: str | None = None) -> tuple[str, bool]:
        """Store an event; returns (id, created). A known idempotency key returns the first id.

        Raises Conflict when the draft's order goes backwards (or out of a terminal state).
        """

    async def append_many(self, items: Sequence[tuple[Draft, str | None]]) -> list[Appended]:
        """Append (draft, idempotency_key) pairs in order, each exactly as `append` would.

        For the ingest, which stores a batch at once: an engine may do it in one round trip. Each
        outcome stands alone: (id, created), or the Conflict that item would have raised. Any
        other error is raised; the items before it are stored, those after it may be (retry with
        idempotency keys).
        """
        results: list[Appended] = []
        for draft, idempotency_key in items:
            try:
                results.append(await self.append(draft, idempotency_key))
            except Conflict as exc:
                results.append(exc)
        return results

    @abstractmethod
    async def snapshot(self, tenant: str, channel: str) -> list[Event]:
        """The channel's live state: its latest kept event of each type, flagged as snapshots."""

    @abstractmethod
    async def read(self, tenant: str, channel: str, after: str, until: str, limit: int) -> list[Event]:
        """Events of one channel with after < id <= until, oldest first, at most `limit`."""

    @abstractmethod
    async def head(self, partition: int = 0) -> str:
        """The newest id in the (partition's) log (ZERO when empty)."""

    @abstractmethod
    async def floor(self, partition: int = 0) -> str:
        """The oldest cursor the (partition's) log still fully covers: a cursor below it has lost history."""

    async def bounds(self, partition: int = 0) -> tuple[str, str]:
        """`(head, floor)` of a partition, what a resume needs; an engine may read both in one round trip."""
        return await self.head(partition), await self.floor(partition)

    async def heads(self) -> list[str]:
        """Every partition's head, in partition order: where a tail of all of them starts."""
        return [await self.head(partition) for partition in range(self.partitions)]

    @abstractmethod
    def tail(self, after: str | Sequence[str]) -> AsyncIterator[list[Event]]:
        """Every event appended after `after` (one cursor for every partition, or one per
        partition), each partition in order, as batches (each batch of one partition), forever;
        raises HistoryLost when the log may have lost entries since (call it again to go on)."""

    @abstractmethod
    async def get_cursor(self, tenant: str, user: str, client_id: str) -> str | None: ...

    @abstractmethod
    async def set_cursor(self, tenant: str, user: str, client_id: str, cursor: str) -> None: ...


def out_of_order(draft: Draft, last: Order | None) -> bool:
    """A typed event may not go below the last accepted rank, nor leave a terminal value."""
    order = draft.order
    if order is None or last is None:
        return False
    return order.rank < last.rank or (last.terminal and order.value != last.value)


def conflict(draft: Draft, last_value: str) -> Conflict:
    return Conflict(f"{draft.type} {draft.order.value if draft.order else ''!s} would move backwards from {last_value}",
                    channel=draft.channel)


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)

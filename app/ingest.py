"""Workers publish with one Redis command; every server process drains that stream together.

    XADD rt:ingest * tenant org_123 channel analysis:a1 type analysis.progress data '{"progress":42}'

(optional fields: idempotency_key; traceparent and tracestate, the W3C trace context its publish
span is a child of when TRACING is on: app/tracing.py). The processes share one consumer group,
and one of them at a time drains it (a lease in Redis, renewed every read; another takes over within LEASE_MS when
it stops): batches read by two processes at once reach the log in whichever order they finish,
which reorders a worker's events and makes the typed ones (progress) look like moves backwards.
It drains in batches: every entry of a batch is validated with the same rules as HTTP publishing (its
`data` parsed exactly and checked by app.faithful, as an HTTP body is), the valid
ones are appended to the log in one round trip (`EventLog.append_many`, in entry order), then the
whole batch is acknowledged and deleted in another. Malformed entries never reach a client: they
are counted and kept aside in `rt:ingest:rejected` for an operator. An entry left pending by a
process that died is claimed by another after INGEST_CLAIM_IDLE_MS; its idempotency key (the
entry id unless the worker gave one) makes the retry publish exactly once. Key names: app/keys.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from app import faithful, metrics
from app.core.publish import prepare
from app.errors import Conflict, ServiceError
from app.eventlog.base import Draft, EventLog
from app.keys import INGEST_GROUP, Keys
from app.redis_client import StreamEntry, StreamReply
from app.retry import Backoff, cancelling
from app.tracing import TRACEPARENT, TRACESTATE, Tracing

logger = logging.getLogger(__name__)

GROUP = INGEST_GROUP
BATCH = 500  # entries read, validated and appended at once
LEASE_MS = 5000  # a drainer that stops renewing (dead, or its loop stalled this long) is replaced

# 2: taken, 1: renewed (ours already), 0: another consumer holds it
_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 2 end
return 0
"""
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
REJECTED_MAXLEN = 100_000

Entry = StreamEntry  # a stream entry: its id and fields


class Ingest:
    def __init__(
        self,
        redis: aioredis.Redis,
        event_log: EventLog,
        *,
        keys: Keys,
        max_event_bytes: int,
        claim_idle_ms: int,
        state_namespaces: frozenset[str] = frozenset(),
        tracing: Tracing | None = None,
    ) -> None:
        self.redis = redis
        self.tracing = tracing  # TRACING: a publish span per entry, a child of its `traceparent` field
        self.log = event_log
        self.stream = keys.ingest
        self.rejected = keys.ingest_rejected
        self.lease = keys.ingest_lease
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self._max_event_bytes = max_event_bytes
        self._claim_idle_ms = claim_idle_ms
        self._state_namespaces = state_namespaces
        self._task: asyncio.Task[None] | None = None
        self._batch: asyncio.Task[None] | None = None  # entries read, being stored
        self._holding = False  # this process drains now (it held the lease at its last renewal)

    async def start(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._task = asyncio.create_task(self._run(), name="ingest")

    async def stop(self) -> None:
        """Finish storing the batch already read (cancelling it would leave its entries to be
        reclaimed later with later ids, reordering a worker's events), stop reading, and give the
        lease up so that another process drains at once."""
        if self._batch is not None:
            await asyncio.wait({self._batch}, timeout=10)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            if self._holding:  # what the loop read as it was stopped (a reply cut off by the cancel) goes first
                await self._reclaim(min_idle_ms=0)
            await self.redis.eval(_RELEASE, 1, self.lease, self.consumer)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:  # it expires by itself
            logger.warning("ingest lease not released (%s); it expires in %d ms", exc, LEASE_MS)
        self._holding = False

    async def _run(self) -> None:
        backoff = Backoff()
        loop = asyncio.get_running_loop()
        # an entry is reclaimable only after claim_idle_ms: looking more often than a few times per
        # period finds nothing and costs a round trip per batch (a third of a quiet stream's CPU)
        reclaim_every = min(self._claim_idle_ms / 4000, 5.0)
        reclaim_at = 0.0
        failed = False  # the last turn failed: what it read (still pending, ours) goes again first
        while True:
            if cancelling():
                raise asyncio.CancelledError
            try:
                held = await self.redis.eval(_LEASE, 1, self.lease, self.consumer, LEASE_MS)
                self._holding = bool(held)
                if not held:  # another process drains: wait to take over if it stops
                    for state in ("unread", "pending"):
                        metrics.INGEST_BACKLOG.labels(state=state).set(0)
                    await asyncio.sleep(LEASE_MS / 3000)
                    continue
                if held == 2:  # taken over: what the last drainer read and did not store comes first
                    await self._reclaim(min_idle_ms=LEASE_MS)
                    reclaim_at = loop.time() + reclaim_every
                if failed:  # e.g. an append not replicated in time (NotReplicated): again now, not after the claim time
                    await self._reclaim(min_idle_ms=0)
                    failed = False
                if loop.time() >= reclaim_at:
                    await self._reclaim()
                    await self._measure_backlog()
                    reclaim_at = loop.time() + reclaim_every
                response = cast(StreamReply | None,
                                await self.redis.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=BATCH, block=1000))
                for _stream, entries in response or ():
                    await self._store(entries)
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # the stream was deleted (or Redis lost it): set it up again
                    await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
                    continue
                logger.exception("ingest failed; retrying in %.1fs", backoff.delay)
                await backoff.wait()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if cancelling():
                    raise asyncio.CancelledError from exc
                failed = self._holding
                logger.warning("ingest: Redis unreachable, retrying in %.1fs: %s", backoff.delay, exc)
                await backoff.wait()

    async def _store(self, entries: list[Entry]) -> None:
        """Handle a batch shielded: a shutdown lets the entries already read reach the log in order."""
        self._batch = asyncio.ensure_future(self.handle(entries))
        try:
            await asyncio.shield(self._batch)
        finally:
            self._batch = None if self._batch.done() else self._batch

    async def _measure_backlog(self) -> None:
        """How far behind the drain is (what the 100,000 run's latency was made of, unseen by the
        publish->dispatch histogram, which starts at the log)."""
        for group in await self.redis.xinfo_groups(self.stream):
            name = group.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == GROUP:
                metrics.INGEST_BACKLOG.labels(state="unread").set(group.get("lag") or 0)
                metrics.INGEST_BACKLOG.labels(state="pending").set(group.get("pending") or 0)

    async def _reclaim(self, min_idle_ms: int | None = None) -> None:
        """Take over entries a consumer (a dead one, or this one's failed batch) read and never
        acknowledged, oldest first, until none is left idle that long."""
        start = "0-0"
        while True:
            start_next, entries, _deleted = await self.redis.xautoclaim(
                self.stream, GROUP, self.consumer, min_idle_time=self._claim_idle_ms if min_idle_ms is None else min_idle_ms,
                start_id=start, count=BATCH)
            entries = [(entry_id, fields) for entry_id, fields in entries if fields]
            if entries:
                await self._store(entries)
            start = start_next.decode() if isinstance(start_next, bytes) else str(start_next)
            if start == "0-0":
                return

    async def handle(self, entries: list[Entry]) -> None:
        """Validate a batch, append its valid entries in one call, acknowledge all of it in one more.

        Any entry may be handled again (a reclaim, a retry): its idempotency key stores it once.
        """
        if not entries:
            return
        drafts: list[tuple[int, Draft, str]] = []  # (position in the batch, draft, idempotency key)
        refused: dict[int, Exception] = {}
        for n, (entry_id, fields) in enumerate(entries):
            try:
                draft, key = self._prepare(entry_id, fields)
            except (ServiceError, json.JSONDecodeError, UnicodeDecodeError, KeyError) as exc:
                refused[n] = exc
                continue
            drafts.append((n, draft, key))
        items = [(draft, key) for _, draft, key in drafts]
        if self.tracing is None:
            results = await self.log.append_many(items)
        else:
            parents = [(_optional(entries[n][1], TRACEPARENT), _optional(entries[n][1], TRACESTATE)) for n, _, _ in drafts]
            results = await self.tracing.append_many(self.log, items, source="ingest", parents=parents)
        created = 0
        for (n, _, _), result in zip(drafts, results, strict=True):
            if isinstance(result, Conflict):  # e.g. progress moving backwards: refused like any bad entry
                refused[n] = result
            else:
                created += result[1]
        metrics.PUBLISHED.labels(source="ingest").inc(created)
        ids = [entry_id for entry_id, _ in entries]
        async with self.redis.pipeline(transaction=True) as pipe:  # a retry never keeps one aside twice
            for n in sorted(refused):
                entry_id, fields = entries[n]
                pipe.xadd(self.rejected, self._set_aside(entry_id, fields, refused[n]), maxlen=REJECTED_MAXLEN, approximate=True)
            pipe.xack(self.stream, GROUP, *ids)
            pipe.xdel(self.stream, *ids)
            await pipe.execute()

    def _prepare(self, entry_id: bytes, fields: dict[bytes, bytes]) -> tuple[Draft, str]:
        draft = prepare(
            _text(fields, b"tenant"),
            _text(fields, b"channel"),
            _text(fields, b"type"),
            # exact (an integer beyond 64 bits stays one, to be refused) and checked where the HTTP body has it
            faithful.loads(fields[b"data"], path="$.data", depth=2) if b"data" in fields else {},
            max_event_bytes=self._max_event_bytes,
            state_namespaces=self._state_namespaces,
        )
        key = fields.get(b"idempotency_key")
        if not key:
            return draft, f"ingest:{entry_id.decode()}"
        idempotency_key = key.decode()
        faithful.check(idempotency_key, path="$.idempotency_key")
        return draft, idempotency_key

    def _set_aside(self, entry_id: bytes, fields: dict[bytes, bytes], exc: Exception) -> dict[FieldT, EncodableT]:
        """The original entry with why it was refused, for an operator (counted and logged)."""
        reason = exc.message if isinstance(exc, ServiceError) else f"{type(exc).__name__}: {exc}"
        metrics.MALFORMED.labels(source="ingest").inc()
        logger.warning("rejected ingest entry %s: %s", entry_id.decode(), reason)
        # copied into XADD's field type (a dict's key type cannot widen in place)
        aside: dict[FieldT, EncodableT] = {name: value for name, value in fields.items()}
        aside[b"reason"] = reason.encode()
        aside[b"entry_id"] = entry_id
        return aside


def _text(fields: dict[bytes, bytes], name: bytes) -> str:
    value = fields.get(name)
    if value is None:
        raise KeyError(f"missing field {name.decode()!r}")
    return value.decode()


def _optional(fields: dict[bytes, bytes], name: str) -> str | None:
    """A field only tracing reads: absent, empty or not text, it is no context (never a refusal)."""
    value = fields.get(name.encode())
    return value.decode(errors="replace") if value else None

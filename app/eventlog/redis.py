"""The Redis Streams engine: many processes, one log.

Its keys (`<prefix>:log`, the per-channel index streams `<prefix>:ch:<tenant>:<channel>`, live state,
idempotency keys, cursors and the origin) are laid out in app/keys.py. The Redis client is handed
in (app/redis_client.py) and closed by its owner, not by the log.

One Lua script appends to both streams atomically, so the index never disagrees with the log
and a channel never trims below the log's oldest entry (the gap check stays exact).

Partitions (REDIS_PARTITIONS > 1, app/keys.py): each tenant's channels live in one partition, a
log stream with its origin, indexes, live state and idempotency keys under one hash tag, so every
append stays one single-slot script (on a Cluster too). The tail follows every partition, each
with a blocking XREAD of its own (one task each, so on its own pooled connection): XREAD of several
streams must be single-slot on a Cluster, so partitions cannot share one read even on one node,
and a blocking read ties up its connection, so one per partition it is. Batches are merged as they
come: a session sees one tenant, so its order is its partition's.

REDIS_WAIT_REPLICAS > 0: every append is followed, in the same pipeline and so on the same
connection, by `WAIT <replicas> <REDIS_WAIT_TIMEOUT_MS>`; fewer acknowledgements raise
NotReplicated (stored on the primary, not promised). A repeated idempotency key rewrites its key
(same value, same expiry) so that WAIT covers the first append, made on another connection.

A failover, or a Redis that lost its data, may lose accepted entries (replication is
asynchronous). The pool's HistoryWatch notices a new history on the first connection that reaches
it, before anything is sent there, and calls `_history_changed`: when entries may be lost, the
origin moves up to now (cursors from before resume with a reset) and the tail raises HistoryLost
(the hub resets its live connections).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ClusterDownError, NoScriptError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app import metrics
from app.errors import Conflict
from app.eventlog.base import (
    ZERO,
    Appended,
    Draft,
    Event,
    EventLog,
    HistoryLost,
    conflict,
    cursor_from_ms,
    cursor_max,
    parse_cursor,
)
from app.eventlog.layout import LayoutGuard
from app.keys import Keys
from app.redis_client import (
    CLUSTER_AWAY,
    Fields,
    HistoryChange,
    NotReplicated,
    StreamEntry,
    StreamReply,
    is_cluster,
    pool_of,
    raw_command,
)
from app.retry import Backoff, cancelling

logger = logging.getLogger(__name__)

_APPEND = """
if ARGV[8] == '1' then
  local prior = redis.call('GET', KEYS[3])
  if prior then
    if ARGV[13] == '1' then redis.call('SET', KEYS[3], prior, 'KEEPTTL') end
    return {prior, 0}
  end
end
if ARGV[10] ~= '' then
  local last = redis.call('HMGET', KEYS[4], ARGV[3] .. '|r', ARGV[3] .. '|v', ARGV[3] .. '|t')
  if last[1] and (tonumber(ARGV[10]) < tonumber(last[1]) or (last[3] == '1' and ARGV[11] ~= last[2])) then
    return {'conflict', last[2]}
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id
if ARGV[14] ~= '' then  -- the publish span's context (TRACING), in the log only: the tail's deliveries link to it
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*',
    'tenant', ARGV[1], 'channel', ARGV[2], 'type', ARGV[3], 'data', ARGV[4], 'traceparent', ARGV[14])
else
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*',
    'tenant', ARGV[1], 'channel', ARGV[2], 'type', ARGV[3], 'data', ARGV[4])
end
redis.call('XTRIM', KEYS[1], 'MINID', '~', now - tonumber(ARGV[6]))
local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1][1]
redis.call('XADD', KEYS[2], 'MINID', '~', oldest, id, 'type', ARGV[3], 'data', ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
if ARGV[9] == '1' then
  redis.call('HSET', KEYS[4], ARGV[3], id, ARGV[3] .. '|d', ARGV[4])
  if ARGV[10] ~= '' then
    redis.call('HSET', KEYS[4], ARGV[3] .. '|r', ARGV[10], ARGV[3] .. '|v', ARGV[11], ARGV[3] .. '|t', ARGV[12])
  end
  redis.call('PEXPIRE', KEYS[4], ARGV[6])
end
if ARGV[8] == '1' then redis.call('SET', KEYS[3], id, 'EX', ARGV[7]) end
return {id, 1}
"""

# the log's birth: strictly below every id assigned after it (an id of this very millisecond is
# `<ms>-0`); answers it with Redis's clock, in ms
_ORIGIN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], (now - 1) .. '-0', 'NX')
return {redis.call('GET', KEYS[1]), now}
"""


# seconds a Cluster partition's reader keeps checking its partition after coming back from an error
_RECHECK_SECONDS = 10.0

# what the tail waits out and retries: the engine away (a Cluster's slot without a primary, too)
_RETRIED: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError, *CLUSTER_AWAY)

ScriptCall = tuple[list[str], list[str | bytes | int]]  # the append script's keys and arguments

# a history that may have lost entries: the origin moves up to now (it only ever moves up; an
# origin is always `<ms>-0`), so every cursor from before is below the floor; answers the origin
_LOST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local origin = redis.call('GET', KEYS[1])
local ms = origin and tonumber(string.match(origin, '^(%d+)-'))
if ms and ms >= now - 1 then return origin end
redis.call('SET', KEYS[1], (now - 1) .. '-0')
return (now - 1) .. '-0'
"""


class RedisEventLog(EventLog):
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        keys: Keys,
        max_events: int,
        retention_seconds: int,
        idempotency_seconds: int,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 500,
    ) -> None:
        self.redis = redis  # shared with the other parts; its owner closes it
        self.keys = keys
        self.partitions = keys.partitions
        self._max_events = max_events
        self._retention_ms = retention_seconds * 1000
        self._idempotency_seconds = idempotency_seconds
        self._wait = (wait_replicas, wait_timeout_ms) if wait_replicas > 0 else None
        self._append = self.redis.register_script(_APPEND)
        self.losses = 0  # histories that may have lost entries, seen by this process's connections
        # On a Cluster (no HistoryWatch there): per partition, the highest id this process appended
        # or tailed, and the origin it last read; a partition's reader checks both when it comes
        # back from an error (a failover, a node restarted), see `_check_partition`
        self._cluster = is_cluster(redis)
        self._seen: list[tuple[int, int]] = [(0, 0)] * self.partitions
        self._origins: list[str | None] = [None] * self.partitions
        self._told = 0  # how many of them a tail has raised HistoryLost for
        self._layout = LayoutGuard(redis, keys)  # no process of another partition count alongside
        pool = pool_of(redis)
        if pool is not None and pool.history is not None:
            pool.history.listen(self._history_changed)

    async def _history_changed(self, connection: AbstractConnection, change: HistoryChange) -> None:
        """A connection being set up reached another history (app.redis_client.HistoryWatch): when
        it may lack entries this log accepted, move the origin up, on that connection, before it
        serves anything; then the tail raises HistoryLost."""
        if not change.lost:
            logger.warning("Redis failed over to a replica; every append waited for %d replica(s), so no "
                           "acknowledged event is lost", self._wait[0] if self._wait else 0)
            return
        origin: Any = None
        for partition in range(self.partitions):  # all of them share this one Redis (no watch on a Cluster)
            origin = await raw_command(connection, "EVAL", _LOST, 1, self.keys.origin_of(partition))
        self.losses += 1
        metrics.ENGINE_FAILURES.labels(kind="history_lost").inc()
        logger.warning("the event log may have lost entries (%s, replication id %s -> %s): cursors before %s resume "
                       "with a reset, live connections are reset", change.kind, change.before.replid[:8],
                       change.after.replid[:8], origin.decode() if isinstance(origin, bytes) else origin)

    def partition(self, tenant: str) -> int:
        return self.keys.partition(tenant)

    async def start(self) -> None:
        await self._layout.start()
        # each partition's birth, before its first event
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition in range(self.partitions):
                pipe.eval(_ORIGIN, 1, self.keys.origin_of(partition))
            await pipe.execute()

    async def close(self) -> None:
        await self._layout.stop()  # the Redis client is not the log's: whoever made it closes it

    async def ping(self) -> None:
        await self.redis.ping()

    async def append(self, draft: Draft, idempotency_key: str | None = None) -> tuple[str, bool]:
        keys, args = self._script_call(draft, idempotency_key)
        if self._wait is None:
            result = _outcome(draft, await self._append(keys=keys, args=args))
        else:  # the script and WAIT in one pipeline: WAIT counts the replicas that have this write
            [reply] = await self._append_all([(keys, args)])
            result = _outcome(draft, reply)
        if isinstance(result, Conflict):
            raise result
        if self._cluster:
            self._saw(draft.tenant, result[0])
        return result

    async def append_many(self, items: Sequence[tuple[Draft, str | None]]) -> list[Appended]:
        """One pipeline of script calls, one round trip: each runs alone and in order in Redis,
        so every item behaves exactly as its own `append` (and ids follow the items' order)."""
        if not items:
            return []
        replies = await self._append_all([self._script_call(draft, key) for draft, key in items])
        outcomes = [_outcome(draft, reply) for (draft, _), reply in zip(items, replies, strict=True)]
        if self._cluster:
            for (draft, _), outcome in zip(items, outcomes, strict=True):
                if not isinstance(outcome, Conflict):
                    self._saw(draft.tenant, outcome[0])
        return outcomes

    def _saw(self, tenant: str, event_id: str) -> None:
        partition = self.keys.partition(tenant)
        self._seen[partition] = max(self._seen[partition], parse_cursor(event_id))

    async def _check_partition(self, partition: int) -> None:
        """On a Cluster, after a partition's reader lost its node: did the partition lose entries?

        Its stream's last id below one this process appended or read means the node now serving
        it (a promoted replica, a node restarted empty) lacks them: the origin moves up (old
        cursors reset) and HistoryLost is raised (live connections reset). An origin moved by
        another process (which saw such a loss) is raised here too. What no live process had
        appended or read cannot be seen (a replica promoted after the one process that wrote
        the entries died with its primary)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xinfo_stream(self.keys.log_of(partition))
            pipe.get(self.keys.origin_of(partition))
            info, origin = await pipe.execute(raise_on_error=False)
        if isinstance(origin, Exception):
            raise origin
        if isinstance(info, aioredis.ResponseError):  # no stream: whatever it held is gone
            last = ZERO
        elif isinstance(info, Exception):
            raise info
        else:
            raw = cast(dict[str, Any], info).get("last-generated-id", b"0-0")
            last = raw.decode() if isinstance(raw, bytes) else str(raw)
        known, current = self._origins[partition], origin.decode() if isinstance(origin, bytes) else origin
        lost = parse_cursor(last) < self._seen[partition]
        if lost:
            current = cast(bytes, await self.redis.eval(_LOST, 1, self.keys.origin_of(partition))).decode()
            self._seen[partition] = parse_cursor(last)
            metrics.ENGINE_FAILURES.labels(kind="history_lost").inc()
            logger.warning("partition %d lost entries (its stream ends at %s, before what this process had seen): "
                           "cursors before %s resume with a reset, live connections are reset", partition, last, current)
        self._origins[partition] = current
        if lost or (known is not None and current != known):
            self.losses += 1

    async def _append_all(self, calls: list[ScriptCall]) -> list[Any]:
        """The script's replies to `calls`, run in order in one pipeline (with WAIT after them when
        asked); raises the first error, or NotReplicated."""
        replies, acknowledged = await self._evalsha_all(calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # Redis does not know the script yet (or lost it in a restart): those did not run
            await self.redis.script_load(self._append.script)
            again, acknowledged_again = await self._evalsha_all([calls[i] for i in missing])
            acknowledged = min(acknowledged, acknowledged_again)  # maybe two connections: each WAIT covers its own
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        if self._wait is not None and acknowledged < self._wait[0]:
            wanted, timeout_ms = self._wait
            ids = [reply[0].decode() for reply in replies if reply[0] != b"conflict"]
            metrics.ENGINE_FAILURES.labels(kind="not_replicated").inc()
            raise NotReplicated(f"stored on the primary, but {acknowledged} of the {wanted} replica(s) asked "
                                f"(REDIS_WAIT_REPLICAS) acknowledged it within {timeout_ms} ms; retry with the same "
                                "idempotency key", ids=ids, acknowledged=acknowledged, wanted=wanted)
        return replies

    async def _evalsha_all(self, calls: list[ScriptCall]) -> tuple[list[Any], int]:
        """One round trip: the script calls, then WAIT when asked; (replies, replicas that
        acknowledged every write of this connection so far: 0 without WAIT).

        WAIT counts the replicas that have what its own connection wrote. One Redis: the pipeline
        is one connection. A Cluster pipeline runs each node's commands on one connection of that
        node, so each primary written to gets a WAIT aimed at it (it has no key to route by); the
        fewest acknowledgements count. A script redirected meanwhile (MOVED, a failover) ran on
        another connection that no WAIT covered: the batch counts as unacknowledged (a retry with
        the same key is a write on the new primary, which its WAIT then covers)."""
        primaries = self._primaries_of(calls)
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                # execute_command: a Cluster pipeline refuses its evalsha() method, never the command (single-slot)
                pipe.execute_command("EVALSHA", self._append.sha, len(keys), *keys, *args)
            if self._wait is not None:
                for node in primaries:
                    pipe.execute_command("WAIT", *self._wait, **({} if node is None else {"target_nodes": node}))
            replies = await pipe.execute(raise_on_error=False)
        if self._wait is None:
            return replies, 0
        replies, waits = replies[:len(calls)], replies[len(calls):]
        for reply in waits:
            if isinstance(reply, (RedisConnectionError, RedisTimeoutError)) or (
                    isinstance(reply, Exception) and primaries == [None]):
                raise reply
        moved = self._cluster and [node.name for node in self._primaries_of(calls)] != [n.name for n in primaries]
        if moved or any(isinstance(reply, Exception) for reply in waits):  # on a Cluster: a node demoted meanwhile
            return replies, 0
        return replies, min(int(reply) for reply in waits)

    def _primaries_of(self, calls: list[ScriptCall]) -> list[Any]:
        """The Cluster nodes serving the calls' slots (each call is single-slot: its first key
        says), in a fixed order; [None] on one Redis (the pipeline's one connection)."""
        if not self._cluster:
            return [None]
        nodes = {node.name: node for node in (self._primary_of(keys[0]) for keys, _ in calls)}
        return [nodes[name] for name in sorted(nodes)]

    def _primary_of(self, key: str) -> ClusterNode:
        """On a Cluster, the node serving `key`'s slot, as the client's slot map says."""
        node = cast(RedisCluster, self.redis).get_node_from_key(key)
        if node is None:  # the slot's primary is gone and none promoted yet: as a command would fail
            raise ClusterDownError(f"no primary serves the slot of {key}")
        return node

    def _script_call(self, draft: Draft, idempotency_key: str | None) -> ScriptCall:
        """The append script's keys and arguments for one draft."""
        k = self.keys
        partition = k.partition(draft.tenant)
        idem = k.idempotency(draft.tenant, idempotency_key) if idempotency_key else k.no_idempotency_of(partition)
        order = draft.order
        keys = [k.log_of(partition), k.channel(draft.tenant, draft.channel), idem, k.state(draft.tenant, draft.channel)]
        args: list[str | bytes | int] = [
            draft.tenant,
            draft.channel,
            draft.type,
            draft.data,
            self._max_events,
            self._retention_ms,
            self._idempotency_seconds,
            "1" if idempotency_key else "0",
            "1" if draft.keeps_state else "0",
            "" if order is None else repr(order.rank),
            "" if order is None else order.value,
            "1" if order is not None and order.terminal else "0",
            "1" if self._wait is not None else "0",  # a repeated key is a write, so that WAIT covers it
            draft.traceparent or "",
        ]
        return keys, args

    async def snapshot(self, tenant: str, channel: str) -> list[Event]:
        fields = cast(Fields, await self.redis.hgetall(self.keys.state(tenant, channel)))
        events = [
            Event(value.decode(), tenant, channel, name.decode(), fields[name + b"|d"], snapshot=True)
            for name, value in fields.items()
            if b"|" not in name and name + b"|d" in fields
        ]
        return sorted(events, key=lambda e: e.key)

    async def read(self, tenant: str, channel: str, after: str, until: str, limit: int) -> list[Event]:
        key = self.keys.channel(tenant, channel)
        entries = cast(list[StreamEntry], await self.redis.xrange(key, min=f"({after}", max=until, count=limit))
        return [Event(eid.decode(), tenant, channel, f[b"type"].decode(), f[b"data"]) for eid, f in entries]

    async def head(self, partition: int = 0) -> str:
        return _newest_id(await self.redis.xrevrange(self.keys.log_of(partition), count=1))

    async def heads(self) -> list[str]:
        if self.partitions == 1:
            return [await self.head()]
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition in range(self.partitions):
                pipe.xrevrange(self.keys.log_of(partition), count=1)
            return [_newest_id(reply) for reply in await pipe.execute()]

    async def floor(self, partition: int = 0) -> str:
        """Every resume asks, so it is one round trip: the origin (re-created, from Redis's clock,
        if Redis lost its data) and the log's trim state, pipelined."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.eval(_ORIGIN, 1, self.keys.origin_of(partition))
            pipe.xinfo_stream(self.keys.log_of(partition))
            reply, info = await pipe.execute(raise_on_error=False)
        return self._floor_of(reply, info)

    async def bounds(self, partition: int = 0) -> tuple[str, str]:
        """Head and floor in one round trip (the head read first, as `head()` then `floor()`).

        After a history loss the origin is above the newest entry until the next append: the head
        is the origin then, so a cursor the lost part had given (above the newest entry left) is
        below both and resumes with a reset."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xrevrange(self.keys.log_of(partition), count=1)
            pipe.eval(_ORIGIN, 1, self.keys.origin_of(partition))
            pipe.xinfo_stream(self.keys.log_of(partition))
            newest, reply, info = await pipe.execute(raise_on_error=False)
        if isinstance(newest, Exception):
            raise newest
        floor = self._floor_of(reply, info)
        head = _newest_id(newest)
        if head != ZERO:
            origin = cast(list[Any], reply)[0].decode()
            if parse_cursor(origin) > parse_cursor(head):
                head = origin
        return head, floor

    def _floor_of(self, reply: object, info: object) -> str:
        """The floor from the origin script's reply and XINFO STREAM's (an error for a missing key)."""
        if isinstance(reply, Exception):
            raise reply
        origin, now_ms = cast(list[Any], reply)
        if isinstance(info, aioredis.ResponseError):  # no such key: nothing was ever trimmed
            deleted = ZERO
        elif isinstance(info, Exception):
            raise info
        else:
            stream = cast(dict[str, Any], info)
            deleted = stream.get("max-deleted-entry-id", b"0-0")
            deleted = deleted.decode() if isinstance(deleted, bytes) else str(deleted)
            first = stream.get("first-entry")
            if first and stream.get("entries-added", 0) > stream.get("length", 0):
                # MAXLEN/MINID trimming does not move max-deleted-entry-id (only XDEL does): once
                # entries were removed, whatever preceded the oldest one left may be gone
                deleted = cursor_max(deleted, first[0].decode())
        return cursor_max(origin.decode(), deleted, cursor_from_ms(now_ms - self._retention_ms))

    async def tail(self, after: str | Sequence[str]) -> AsyncIterator[list[Event]]:
        positions = [after] * self.partitions if isinstance(after, str) else list(after)
        if len(positions) != self.partitions:
            raise ValueError(f"tail: {len(positions)} positions for {self.partitions} partitions")
        if self.partitions == 1:
            async for batch in self._tail_partition(0, positions[0], quiet=False):
                yield batch
            return
        # one reader per partition, merged as their batches come (a bounded queue: a slow consumer
        # holds the readers back, it does not pile events up)
        queue: asyncio.Queue[list[Event] | BaseException] = asyncio.Queue(maxsize=2 * self.partitions)

        async def pump(partition: int) -> None:
            try:
                async for batch in self._tail_partition(partition, positions[partition], quiet=True):
                    await queue.put(batch)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # HistoryLost or a failure: the merged tail raises it
                await queue.put(exc)

        readers = [asyncio.create_task(pump(p), name=f"log-tail-p{p}") for p in range(self.partitions)]
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item:
                    yield item
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _tail_partition(self, partition: int, position: str, *, quiet: bool) -> AsyncIterator[list[Event]]:
        """One partition's entries after `position`, forever; `quiet`: an empty batch after each
        read that found nothing, so the merged tail notices a loss while nothing is published."""
        log_key = self.keys.log_of(partition)
        backoff = Backoff()
        # on a Cluster: when the reader starts, and for a while after each error (another process
        # may find the loss, and move the origin, only after this one came back)
        check = self._cluster
        recheck_until = 0.0
        while True:
            if cancelling():
                raise asyncio.CancelledError
            try:
                if check or (recheck_until and time.monotonic() < recheck_until):
                    # (what this process appended or read: not `position`, which a caller may give
                    # for every partition at once)
                    await self._check_partition(partition)
                    check = False
                response = await self._read(log_key, position)
            except _RETRIED as exc:
                if cancelling():
                    raise asyncio.CancelledError from exc
                logger.warning("event log unreachable, retrying in %.1fs: %s", backoff.delay, exc)
                check = self._cluster
                recheck_until = time.monotonic() + _RECHECK_SECONDS if self._cluster else 0.0
                await backoff.wait()
                continue
            if self.losses != self._told:  # what was read comes from a history that may lack entries
                self._told = self.losses  # once per loss, by the tail that notices it (the app runs one: the hub's)
                raise HistoryLost(f"the event log may have lost entries after {position}")
            backoff.reset()
            if not response:
                if quiet:
                    yield []
                continue
            entries = response[0][1]
            position = entries[-1][0].decode()
            if self._cluster:
                self._seen[partition] = max(self._seen[partition], parse_cursor(position))
            batch = []
            for eid, fields in entries:
                event = _decode(eid, fields)
                if event is not None and ((partition == 0 and self.partitions == 1) or self._belongs(event, partition)):
                    batch.append(event)
            if batch:
                yield batch

    async def _read(self, log_key: str, position: str) -> StreamReply:
        """One blocking read of a partition's stream. On a Cluster aimed at the node serving its
        slot: XREAD's keys are movable, so redis-py would otherwise ask a node `COMMAND GETKEYS`
        before every read (a round trip, always to the same node). A redirect is still followed."""
        if not self._cluster:
            return cast(StreamReply, await self.redis.xread({log_key: position}, count=1000, block=1000))
        return cast(StreamReply, await cast(RedisCluster, self.redis).execute_command(
            "XREAD", "COUNT", 1000, "BLOCK", 1000, "STREAMS", log_key, position, target_nodes=self._primary_of(log_key)))

    def _belongs(self, event: Event, partition: int) -> bool:
        """An entry written around the script into another tenant's partition is malformed: the hub
        keeps one position per partition, and a session's cursor must stay in its partition."""
        if self.keys.partition(event.tenant) == partition:
            return True
        metrics.MALFORMED.labels(source="log").inc()
        logger.warning("skipped log entry %s of tenant %r in partition %d", event.id, event.tenant, partition)
        return False

    async def get_cursor(self, tenant: str, user: str, client_id: str) -> str | None:
        value = cast(bytes | None, await self.redis.hget(self.keys.cursor(tenant, user), client_id))
        return value.decode() if value else None

    async def set_cursor(self, tenant: str, user: str, client_id: str, cursor: str) -> None:
        key = self.keys.cursor(tenant, user)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, client_id, cursor)
            pipe.pexpire(key, self._retention_ms)
            await pipe.execute()



def _outcome(draft: Draft, reply: list[Any]) -> tuple[str, bool] | Conflict:
    """The script's reply: {id, created}, or {'conflict', the last accepted value}."""
    event_id, created = reply
    if event_id == b"conflict":
        return conflict(draft, created.decode())
    return event_id.decode(), bool(created)


def _decode(eid: bytes, fields: dict[bytes, bytes]) -> Event | None:
    """An entry written around the append script (by hand, say) may be malformed: count it, skip it."""
    try:
        data = fields[b"data"]
        orjson.loads(data)
        traceparent = fields.get(b"traceparent")  # only where tracing was on at the publish
        return Event(eid.decode(), fields[b"tenant"].decode(), fields[b"channel"].decode(), fields[b"type"].decode(), data,
                     traceparent=traceparent.decode(errors="replace") if traceparent is not None else None)
    except (KeyError, UnicodeDecodeError, orjson.JSONDecodeError):
        metrics.MALFORMED.labels(source="log").inc()
        logger.warning("skipped malformed log entry %s", eid.decode(errors="replace"))
        return None


def _newest_id(reply: object) -> str:
    """The id in `XREVRANGE log + - COUNT 1`'s reply: the head (ZERO for an empty log)."""
    newest = cast(list[StreamEntry], reply)
    return newest[0][0].decode() if newest else ZERO

"""Every Redis key this service reads or writes, in one place.

All keys start with REDIS_PREFIX (`rt` by default); several deployments can share one Redis under
different prefixes. The layout (existing data depends on these exact strings):

Event log (app/eventlog/redis.py)
- `rt:log`: the global stream every process tails for live delivery.
- `rt:ch:<tenant>:<channel>`: a per-channel index stream holding the same ids, so a resume reads
  only the user's own channels (cost grows with what it missed, not with the log's traffic).
- `rt:state:<tenant>:<channel>`: live state, a hash of the latest event of each type (and, for
  typed events, its rank), checked and written in the same script as the append.
- `rt:idem:<tenant>:<key>`: idempotency keys (IDEMPOTENCY_SECONDS, 24 h by default); the append
  script is always handed a third key, `rt:idem:-`, which it never touches without a key.
- `rt:cursor:<tenant>:<user>`: a hash of that user's server-side cursors, one field per client_id.
- `rt:origin`: when this log began, so a Redis that lost its data yields a reset.
- `rt:layouts`: the REDIS_PARTITIONS count of each running process (a hash field `<count>|<process>`,
  until when, renewed every 2 s), so a process of another count refuses to start (app/eventlog/layout.py).

Ingest (app/ingest.py; workers write it with the publisher package, clients/python)
- `rt:ingest`: the stream workers XADD to, read by every process in the consumer group `realtime`.
- `rt:ingest:rejected`: refused entries kept aside for an operator, with a `reason` field.
- `rt:ingest:lease`: the consumer that drains the stream now (one at a time keeps a worker's order).

Presence (app/presence/redis.py)
- `rt:presence:<tenant>:<channel>`: a sorted set of `<user>|<connection>` scored by expiry time.
- `rt:presence:<tenant>:<channel>:since`: a hash of when each of those members joined.
- `rt:presence:index`: the set of `<tenant>|<channel>` that have members, for the expiry sweep.

Web Push queue (app/push/queue/redis.py)
- `rt:push`: the job stream, consumer group `push`.
- `rt:push:delayed`: a sorted set of jobs waiting for their retry, scored by when they are due.
- `rt:push:put:<job id>`: a job already queued (kept for the push's TTL), so that putting it
  again (the outbox relay retrying a batch) queues nothing.

Tickets (app/auth.py)
- `rt:ticket:<ticket>`: a one-time ticket's principal (TICKET_TTL_SECONDS).

Partitions (REDIS_PARTITIONS > 1, or any Redis Cluster URL: the "tagged" layout)
- The log is split by tenant into REDIS_PARTITIONS partitions (`partition_of`: CRC-32 of the tenant,
  modulo the count, so every process agrees). Every key of partition N of C carries the hash tag
  `{p<N>/<C>}`: `rt:{p3/8}:log`, `rt:{p3/8}:origin`, `rt:{p3/8}:idem:-`, `rt:{p3/8}:ch:<tenant>:<channel>`,
  `rt:{p3/8}:state:...`, `rt:{p3/8}:idem:<tenant>:<key>`, and presence `rt:{p3/8}:presence:...`
  (an index per partition). So each append script and each presence batch is single-slot, and a
  Cluster spreads partitions over its primaries. The count is in the tag: another count is another
  set of keys, with origins of its own, so every cursor of the old layout resets.
- The ingest and push streams keep their names (workers XADD to `rt:ingest`); their companions
  take the stream's name as hash tag, so they share its slot: `{rt:ingest}:rejected`,
  `{rt:ingest}:lease`, `{rt:push}:delayed`, `{rt:push}:put:<job id>`.
- Cursors and tickets are one key per command: unchanged.
With one partition on one Redis (the default) none of this applies: the names above, unchanged.
"""

from __future__ import annotations

import zlib

from app.rules import ingest_stream

INGEST_GROUP = "realtime"  # the consumer group every process reads `<prefix>:ingest` in
PUSH_GROUP = "push"  # the consumer group every process's push worker reads `<prefix>:push` in


class Keys:
    """The key names under one prefix: fixed keys as attributes, the others built by methods."""

    __slots__ = ("_tags", "ingest", "ingest_lease", "ingest_rejected", "layouts", "log", "no_idempotency", "origin", "partitions",
                 "prefix", "presence_index", "push", "push_delayed", "push_put", "tagged")

    def __init__(self, prefix: str = "rt", *, partitions: int = 1, tagged: bool | None = None) -> None:
        """`partitions`: REDIS_PARTITIONS; `tagged`: the hash-tagged layout (always with more than
        one partition; with one, only on a Cluster). Untagged is today's layout, byte for byte."""
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        if tagged is None:
            tagged = partitions > 1
        if partitions > 1 and not tagged:
            raise ValueError("more than one partition needs the tagged layout")
        self.prefix, self.partitions, self.tagged = prefix, partitions, tagged
        # the start of every partitioned key: `rt:{p3/8}` (tagged), `rt` (untagged: one partition)
        self._tags = [f"{prefix}:{{p{n}/{partitions}}}" for n in range(partitions)] if tagged else [prefix]
        self.log = self.log_of(0)  # partition 0's: the only one by default
        self.origin = self.origin_of(0)
        self.no_idempotency = self.no_idempotency_of(0)
        self.ingest = ingest_stream(prefix)  # the one key workers write: a wire rule
        self.presence_index = self.presence_index_of(0)
        self.push = f"{prefix}:push"
        self.layouts = f"{prefix}:layouts"  # one for every layout: what it guards is the choice between them
        if tagged:  # in the stream's slot: a key without braces hashes whole, `{name}` hashes `name`
            self.ingest_rejected = f"{{{self.ingest}}}:rejected"
            self.ingest_lease = f"{{{self.ingest}}}:lease"
            self.push_delayed = f"{{{self.push}}}:delayed"
            self.push_put = f"{{{self.push}}}:put:"
        else:
            self.ingest_rejected = f"{prefix}:ingest:rejected"
            self.ingest_lease = f"{prefix}:ingest:lease"
            self.push_delayed = f"{prefix}:push:delayed"
            self.push_put = f"{prefix}:push:put:"

    def __repr__(self) -> str:
        return f"Keys({self.prefix!r})"

    def partition(self, tenant: str) -> int:
        return partition_of(tenant, self.partitions)

    def _of(self, tenant: str) -> str:
        return self._tags[partition_of(tenant, self.partitions)]

    def log_of(self, partition: int) -> str:
        return f"{self._tags[partition]}:log"

    def origin_of(self, partition: int) -> str:
        return f"{self._tags[partition]}:origin"

    def no_idempotency_of(self, partition: int) -> str:
        return f"{self._tags[partition]}:idem:-"

    def presence_index_of(self, partition: int) -> str:
        return f"{self._tags[partition]}:presence:index"

    def channel(self, tenant: str, channel: str) -> str:
        return f"{self._of(tenant)}:ch:{tenant}:{channel}"

    def state(self, tenant: str, channel: str) -> str:
        return f"{self._of(tenant)}:state:{tenant}:{channel}"

    def idempotency(self, tenant: str, key: str) -> str:
        return f"{self._of(tenant)}:idem:{tenant}:{key}"

    def cursor(self, tenant: str, user: str) -> str:
        """The hash of a user's cursors; each client_id is a field of it, not a key of its own."""
        return f"{self.prefix}:cursor:{tenant}:{user}"

    def ticket(self, ticket: str) -> str:
        return f"{self.prefix}:ticket:{ticket}"

    def presence(self, tenant: str, channel: str) -> str:
        return f"{self._of(tenant)}:presence:{tenant}:{channel}"

    def presence_since(self, tenant: str, channel: str) -> str:
        return f"{self._of(tenant)}:presence:{tenant}:{channel}:since"


def partition_of(tenant: str, partitions: int) -> int:
    """The partition a tenant's channels live in: stable across processes, restarts and Python
    versions (CRC-32, not `hash()`, which is salted per process)."""
    return zlib.crc32(tenant.encode()) % partitions if partitions > 1 else 0

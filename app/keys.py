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
"""

from __future__ import annotations

from app.rules import ingest_stream

INGEST_GROUP = "realtime"  # the consumer group every process reads `<prefix>:ingest` in
PUSH_GROUP = "push"  # the consumer group every process's push worker reads `<prefix>:push` in


class Keys:
    """The key names under one prefix: fixed keys as attributes, the others built by methods."""

    __slots__ = ("ingest", "ingest_lease", "ingest_rejected", "log", "no_idempotency", "origin", "prefix", "presence_index",
                 "push", "push_delayed", "push_put")

    def __init__(self, prefix: str = "rt") -> None:
        self.prefix = prefix
        self.log = f"{prefix}:log"
        self.origin = f"{prefix}:origin"
        self.no_idempotency = f"{prefix}:idem:-"
        self.ingest = ingest_stream(prefix)  # the one key workers write: a wire rule
        self.ingest_rejected = f"{prefix}:ingest:rejected"
        self.ingest_lease = f"{prefix}:ingest:lease"
        self.presence_index = f"{prefix}:presence:index"
        self.push = f"{prefix}:push"
        self.push_delayed = f"{prefix}:push:delayed"
        self.push_put = f"{prefix}:push:put:"

    def __repr__(self) -> str:
        return f"Keys({self.prefix!r})"

    def channel(self, tenant: str, channel: str) -> str:
        return f"{self.prefix}:ch:{tenant}:{channel}"

    def state(self, tenant: str, channel: str) -> str:
        return f"{self.prefix}:state:{tenant}:{channel}"

    def idempotency(self, tenant: str, key: str) -> str:
        return f"{self.prefix}:idem:{tenant}:{key}"

    def cursor(self, tenant: str, user: str) -> str:
        """The hash of a user's cursors; each client_id is a field of it, not a key of its own."""
        return f"{self.prefix}:cursor:{tenant}:{user}"

    def ticket(self, ticket: str) -> str:
        return f"{self.prefix}:ticket:{ticket}"

    def presence(self, tenant: str, channel: str) -> str:
        return f"{self.prefix}:presence:{tenant}:{channel}"

    def presence_since(self, tenant: str, channel: str) -> str:
        return f"{self.prefix}:presence:{tenant}:{channel}:since"

"""The process's one Redis client, made at start-up and handed to every part that uses Redis
(event log, ingest, presence, push queue, tickets); the lifespan closes it after all of them.

Its pool is bounded (REDIS_MAX_CONNECTIONS) and blocking: a caller that finds every connection
busy waits up to REDIS_POOL_TIMEOUT for one, then gets `PoolExhausted` (counted as the limit
`redis_pool`), which clients hear as `busy`, not as an engine that is unreachable. Connections
left idle past REDIS_POOL_IDLE_SECONDS are closed by one periodic task per process (`PoolReaper`),
so a burst does not leave the pool at its peak size for good (redis-py never shrinks a pool).

REDIS_URL is `redis://`, `rediss://` or `unix://` (one address: redis-py's `from_url`), or
`redis+sentinel://[user:password@]host:port[,host:port...]/<service>[/<db>][?sentinel_password=...]`:
the pool then asks those Sentinels for the primary of `<service>` whenever it opens a connection,
so after a failover every new connection reaches the new primary (`SentinelPool`: redis-py's
SentinelConnectionPool on our blocking pool, so the bound, the named PoolExhausted, the reaper and
the metrics are the same on both).

`redis+cluster://[user:password@]host:port[,host:port...][/]` is a Redis Cluster: redis-py's
asyncio RedisCluster (it follows MOVED/ASK and refreshes its slot map when a node fails), with
REDIS_MAX_CONNECTIONS connections per node. Its per-node pools do not block: a node whose
connections are all lent out fails the call at once (`MaxConnectionsError`, told `busy` like
PoolExhausted); there is no idle reaper and no HistoryWatch on it (see the README).

Every connection the pool opens first asks its server `INFO replication` (`HistoryWatch`): a
connection that reached a replica is refused (the service needs the primary), and one whose
primary has another replication id than the last one this process knew tells the event log
that the data's history changed (a failover, a restart), before any command is sent on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import (
    ClusterDownError,
    MaxConnectionsError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app import metrics
from app.errors import Busy, ServiceError, Unavailable
from app.keys import Keys
from app.settings import Settings

logger = logging.getLogger(__name__)

# What replies are. redis-py types each one as `bytes | str` (often with `| None` or `Any`),
# whatever the client's decode_responses; this client never decodes, so they are bytes. Readers
# `cast` a reply to one of these where they take it: the one gap in redis-py's types we bridge.
Fields = dict[bytes, bytes]
StreamEntry = tuple[bytes, Fields]  # XRANGE, XREVRANGE, XAUTOCLAIM: (id, fields)
StreamReply = list[tuple[bytes, list[StreamEntry]]]  # XREAD, XREADGROUP: (stream, entries) per stream

# Seconds a client is told to wait: the engine unreachable (a restart, a failover: usually quick),
# or busy (this process's pool exhausted, or Redis answering too slowly: load, which a crowd retrying
# at once would only prolong; clients add their own jitter).
UNREACHABLE_RETRY_AFTER = 1
BUSY_RETRY_AFTER = 2

# redis-py's words when BlockingConnectionPool's wait for a free connection runs out
_NO_CONNECTION = "No connection available."


class PoolExhausted(RedisConnectionError):
    """Every connection of this process's pool stayed busy for REDIS_POOL_TIMEOUT. A subclass of
    redis-py's ConnectionError, so code that retries on a lost connection (the hub's tail, ingest)
    retries on this too; clients are told `busy`, not `unavailable`."""


class NotPrimary(RedisConnectionError):
    """The server a new connection reached is not a primary (a replica, or a primary being
    demoted): the connection is closed unused and the command fails as if the server were away
    (`unavailable`). Under Sentinel the next connection asks the Sentinels again."""


class NotReplicated(ServiceError, RedisConnectionError):
    """REDIS_WAIT_REPLICAS: an append was stored on the primary, but fewer replicas than asked
    acknowledged it within REDIS_WAIT_TIMEOUT_MS. Not acknowledged, so not promised: a failover now
    may lose it. 503 + Retry-After; the publisher retries with the same idempotency key (which
    then returns the first id once it is replicated; without a key a retry publishes it twice).

    Also a redis-py ConnectionError, so every loop that retries a lost connection retries this
    too (the ingest, the outbox relay, presence)."""

    status, code = 503, "not_replicated"

    def __init__(self, message: str, *, ids: list[str], acknowledged: int, wanted: int) -> None:
        super().__init__(message, retry_after=UNREACHABLE_RETRY_AFTER)
        self.ids = ids  # what was stored on the primary (the first id of a repeated idempotency key)
        self.acknowledged, self.wanted = acknowledged, wanted


# --------------------------------------------------------------------------------------------
# which history of the data a connection reached
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Replication:
    """What `INFO replication` says of a server: its role, and the replication id and offset
    that name its history of the data. A primary keeps its id while it lives; a replica promoted
    (and a primary restarted from its own persistence) takes a new one and keeps the old one as
    `replid2`, holding the old history up to `second_offset - 1`; a primary restarted empty has a
    new id and no `replid2`."""

    role: str
    replid: str
    replid2: str
    offset: int
    second_offset: int

    @classmethod
    def parse(cls, info: bytes | str) -> Replication:
        text = info.decode() if isinstance(info, bytes) else str(info)
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))
        return cls(role=fields.get("role", "").strip(), replid=fields.get("master_replid", "").strip(),
                   replid2=fields.get("master_replid2", "").strip(),
                   offset=int(fields.get("master_repl_offset", "0") or 0),
                   second_offset=int(fields.get("second_repl_offset", "-1") or -1))


@dataclass(frozen=True, slots=True)
class HistoryChange:
    """This process's connections now reach another history than before (`HistoryWatch`).

    `lost`: writes the old primary acknowledged may be missing from the new one. Always for a new
    history (a Redis restarted empty, or a primary this process never followed) and for one that
    forked before an offset this process saw; for a continuation (a replica promoted) unless every
    append waited for a replica (REDIS_WAIT_REPLICAS), since replication is asynchronous."""

    before: Replication
    after: Replication
    kind: str  # "failover" (a continuation of the old history) or "new" (no link to it)
    lost: bool


def history_change(before: Replication, after: Replication, wait_replicas: int) -> HistoryChange | None:
    """How `after` relates to `before`; None when it is the same history."""
    if after.replid == before.replid:
        return None
    if before.replid and after.replid2 == before.replid:
        # the new primary holds the old history up to second_offset - 1: an offset this process saw
        # beyond that is a write it certainly lacks; otherwise only WAIT says nothing acknowledged is
        forked_early = before.offset > after.second_offset - 1
        return HistoryChange(before, after, "failover", lost=forked_early or wait_replicas <= 0)
    return HistoryChange(before, after, "new", lost=True)


HistoryListener = Callable[[AbstractConnection, HistoryChange], Awaitable[None]]


async def raw_command(connection: AbstractConnection, *args: Any) -> Any:
    """One command on a connection being set up (before the pool lends it): its raw reply."""
    await connection.send_command(*args)
    return await connection.read_response()


class HistoryWatch:
    """One per pool: checks each connection the pool opens before anything is sent on it.

    A connection to a server that is not a primary is refused (NotPrimary). A primary with another
    replication id than the one this process last knew is a changed history: the listeners (the
    event log) are awaited on that very connection before it is used, one change at a time, so no
    command of this process reaches the new history before the change is recorded. The first
    connection only learns the id (a change while no process of the service ran is not seen).
    A server that refuses INFO (an ACL, a proxy) turns the watch off, with a warning."""

    def __init__(self, wait_replicas: int = 0) -> None:
        self.wait_replicas = wait_replicas
        self.known: Replication | None = None
        self.enabled = True
        self._listeners: list[HistoryListener] = []
        self._lock = asyncio.Lock()

    def listen(self, listener: HistoryListener) -> None:
        self._listeners.append(listener)

    async def check(self, connection: AbstractConnection) -> None:
        if not self.enabled:
            return
        try:
            now = Replication.parse(await raw_command(connection, "INFO", "replication"))
        except ResponseError as exc:
            self.enabled = False
            logger.warning("Redis refused INFO replication (%s): failovers and lost data are not detected", exc)
            return
        if now.role != "master":
            where = f"{getattr(connection, 'host', '?')}:{getattr(connection, 'port', '?')}"
            raise NotPrimary(f"{where} is a {now.role or 'non-primary'}, not the primary")
        if self._same(now):
            return
        async with self._lock:
            before = self.known
            if before is not None and before.replid == now.replid:
                self._same(now)  # another connection saw this history first and told the listeners
                return
            if before is not None:
                change = history_change(before, now, self.wait_replicas)
                if change is not None:
                    logger.warning("Redis history changed (%s: replication id %s -> %s%s)", change.kind, before.replid[:8],
                                   now.replid[:8], "; acknowledged writes may be lost" if change.lost else "")
                    for listener in self._listeners:
                        try:
                            await listener(connection, change)
                        except RedisError as exc:  # the next connection tries again; meanwhile the engine is away
                            if isinstance(exc, RedisConnectionError):
                                raise
                            raise RedisConnectionError(f"recording a changed Redis history failed: {exc}") from exc
            self.known = now

    def _same(self, now: Replication) -> bool:
        known = self.known
        if known is None or known.replid != now.replid:
            return False
        if now.offset > known.offset:
            self.known = now  # the furthest offset seen of this history: a fork before it lost writes
        return True


class Pool(aioredis.BlockingConnectionPool):
    """redis-py's blocking pool, plus: a named error when the wait runs out, the time each idle
    connection was released (for the reaper), the counts the metrics show, and the history check
    of each connection it opens (`history`, when given)."""

    def __init__(self, **kwargs: Any) -> None:
        self.history: HistoryWatch | None = kwargs.pop("history", None)
        super().__init__(**kwargs)
        self._idle_since: weakref.WeakKeyDictionary[AbstractConnection, float] = weakref.WeakKeyDictionary()

    def make_connection(self) -> AbstractConnection:
        connection: AbstractConnection = super().make_connection()
        if self.history is not None:
            connection.register_connect_callback(self._connected)  # on every (re)connect of it
        return connection

    async def _connected(self, connection: AbstractConnection) -> None:
        assert self.history is not None
        try:
            await self.history.check(connection)
        except BaseException:
            await connection.disconnect()  # redis-py leaves a connection whose callback raised connected
            raise

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        try:
            connection: AbstractConnection = await super().get_connection()
        except RedisConnectionError as exc:
            if type(exc) is RedisConnectionError and exc.args == (_NO_CONNECTION,):
                metrics.LIMIT_HITS.labels(limit="redis_pool").inc()
                raise PoolExhausted(f"no Redis connection came free within {self.timeout:g} s "
                                    f"(REDIS_MAX_CONNECTIONS={self.max_connections} all busy)") from exc
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        self._idle_since[connection] = time.monotonic()
        await super().release(connection)

    @property
    def size(self) -> int:
        """Connections this pool holds (idle and in use); each is a TCP connection once used."""
        return len(self._available_connections) + len(self._in_use_connections)

    @property
    def in_use(self) -> int:
        return len(self._in_use_connections)

    async def reap(self, idle_seconds: float, keep_idle: int) -> int:
        """Disconnect and drop the idle connections released more than `idle_seconds` ago, keeping
        at least `keep_idle` idle ones (the most recently used). Returns how many were closed.

        Idle connections are a stack (released onto the end, taken from the end), so the oldest
        are at the front and the working set of a quiet process stays at the end, untouched."""
        cutoff = time.monotonic() - idle_seconds
        doomed: list[AbstractConnection] = []
        async with self._condition:  # get_connection and release change the lists under it
            available = self._available_connections
            while len(available) > keep_idle and self._idle_since.get(available[0], cutoff) <= cutoff:
                doomed.append(available.pop(0))
        for connection in doomed:
            self._idle_since.pop(connection, None)
            with contextlib.suppress(Exception):  # a connection already broken is as good as closed
                await connection.disconnect()
        return len(doomed)


class SentinelPool(SentinelConnectionPool, Pool):
    """Our blocking pool whose connections are redis-py's SentinelManagedConnection: each one,
    when it connects, asks the Sentinels for the primary's address (and the pool closes its idle
    connections when that address changed); one whose primary was demoted (READONLY) disconnects
    and fails as a lost connection, so the next attempt finds the new primary. The Sentinel
    clients are closed with the pool."""

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self.sentinel_manager.aclose()


SENTINEL_SCHEME = "redis+sentinel://"
SENTINEL_PORT = 26379
SENTINEL_TIMEOUT = 1.0  # seconds a Sentinel has to answer where the primary is, before the next one is asked


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """`redis+sentinel://[user:password@]host[:port][,host[:port]...]/<service>[/<db>]`
    `[?sentinel_password=...&sentinel_username=...]`: the user and password are the data nodes'
    (the primary's and replicas'); the Sentinels' own go in the query. Port 26379 by default."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    @classmethod
    def parse(cls, url: str) -> SentinelURL:
        if not url.startswith(SENTINEL_SCHEME):
            raise ValueError(f"a Sentinel URL starts with {SENTINEL_SCHEME}")
        parts = urlsplit(url)
        username, password, hosts = _credentials_and_hosts(parts.netloc)
        sentinels = tuple(_host_port(host) for host in hosts)
        path = [unquote(p) for p in parts.path.split("/") if p]
        if not sentinels or not path or len(path) > 2:
            raise ValueError("REDIS_URL: redis+sentinel://[user:password@]host:port[,host:port...]/<service>[/<db>]")
        if len(path) == 2 and not path[1].isdigit():
            raise ValueError(f"REDIS_URL: the database number must be a number, not {path[1]!r}")
        query = {name: values[-1] for name, values in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = set(query) - {"sentinel_password", "sentinel_username"}
        if unknown:
            raise ValueError(f"REDIS_URL: unknown Sentinel URL option(s) {sorted(unknown)}; known: sentinel_password, "
                             "sentinel_username")
        return cls(sentinels, path[0], int(path[1]) if len(path) == 2 else 0, username, password,
                   query.get("sentinel_username") or None, query.get("sentinel_password") or None)


CLUSTER_SCHEME = "redis+cluster://"
CLUSTER_PORT = 6379

# what a Cluster answers while a slot has no primary (a failover under way): the engine is away
CLUSTER_AWAY: tuple[type[BaseException], ...] = (ClusterDownError, TryAgainError, RedisClusterException)


def is_cluster_url(url: str | None) -> bool:
    return bool(url) and str(url).startswith(CLUSTER_SCHEME)


@dataclass(frozen=True, slots=True)
class ClusterURL:
    """`redis+cluster://[user:password@]host[:port][,host[:port]...][/]`: any of the cluster's
    nodes (redis-py asks the first that answers for the slot map, then finds the others itself);
    port 6379 by default. A cluster has one database: no `/<db>`."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> ClusterURL:
        if not url.startswith(CLUSTER_SCHEME):
            raise ValueError(f"a Cluster URL starts with {CLUSTER_SCHEME}")
        parts = urlsplit(url)
        username, password, hosts = _credentials_and_hosts(parts.netloc)
        nodes = tuple(_host_port(host, CLUSTER_PORT) for host in hosts)
        if not nodes or parts.path.strip("/") or parts.query:
            raise ValueError("REDIS_URL: redis+cluster://[user:password@]host:port[,host:port...] (no database, no options)")
        return cls(nodes, username, password)


def _credentials_and_hosts(netloc: str) -> tuple[str | None, str | None, list[str]]:
    """`[user:password@]host[:port][,host[:port]...]`: (user, password, the hosts), unquoted."""
    userinfo, _, hosts = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    return username, password, [host for host in hosts.split(",") if host]


def _host_port(text: str, default_port: int = SENTINEL_PORT) -> tuple[str, int]:
    host, port = text, default_port
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif ":" in text:
        host, _, number = text.rpartition(":")
        port = int(number)
    if not host:
        raise ValueError(f"REDIS_URL: no host in {text!r}")
    return host, port


def create_redis(settings: Settings) -> aioredis.Redis | None:
    """A client on one pool of REDIS_MAX_CONNECTIONS connections to REDIS_URL; None without REDIS_URL.

    The pool blocks: under a burst of requests a caller waits (up to REDIS_POOL_TIMEOUT) for a
    connection instead of failing. A command waits REDIS_SOCKET_TIMEOUT for its reply (longer than
    the blocking reads of the tail, ingest and push worker, 1 s). Nothing connects until the first
    command. The client owns its pool, so `aclose()` disconnects every connection (and, under
    Sentinel, the Sentinel clients).
    """
    if not settings.redis_url:
        return None
    if is_cluster_url(settings.redis_url):
        return create_cluster(settings)
    options: dict[str, Any] = dict(
        max_connections=settings.redis_max_connections, timeout=settings.redis_pool_timeout,
        socket_timeout=settings.redis_socket_timeout, health_check_interval=30,
        history=HistoryWatch(settings.redis_wait_replicas))
    if settings.redis_url.startswith(SENTINEL_SCHEME):
        url = SentinelURL.parse(settings.redis_url)
        # the Sentinels answer at once or not at all: a dead one must not hold up finding the primary
        sentinel_options = {"socket_timeout": SENTINEL_TIMEOUT, "socket_connect_timeout": SENTINEL_TIMEOUT,
                            "username": url.sentinel_username, "password": url.sentinel_password}
        sentinel = Sentinel(list(url.sentinels), sentinel_kwargs=sentinel_options)
        pool: Pool = SentinelPool(url.service, sentinel, is_master=True, db=url.db, username=url.username,
                                  password=url.password, **options)
    else:
        pool = Pool.from_url(settings.redis_url, **options)
    return aioredis.Redis.from_pool(pool)


class ClusterConnection(Connection):
    """redis-py's cluster connection, plus: a write on a transport the server closed (a node
    killed: uvloop raises RuntimeError, not OSError), or on a connection another task has just
    disconnected (the client dropping a dead node's connections: redis-py then finds its writer
    gone, an AttributeError), is a lost connection, so the cluster client refreshes its slot map
    and retries as for any ConnectionError, and callers see `unavailable` (never a 500)."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except RuntimeError as exc:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"connection to {self.host}:{self.port} lost: {exc}") from exc
        except AttributeError as exc:
            if self._writer is not None:  # not the disconnect race: a bug, raised as it is
                raise
            raise RedisConnectionError(f"connection to {self.host}:{self.port} closed while sending") from exc


def create_cluster(settings: Settings) -> aioredis.Redis:
    """A RedisCluster on REDIS_URL's nodes. Typed as the plain client every part takes: the commands
    they send (single-slot scripts, single-key commands, pipelines of those) are the same calls."""
    assert settings.redis_url is not None
    url = ClusterURL.parse(settings.redis_url)
    cluster = RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in url.nodes],
                           username=url.username, password=url.password,
                           max_connections=settings.redis_max_connections,
                           socket_timeout=settings.redis_socket_timeout,
                           socket_connect_timeout=min(settings.redis_socket_timeout, 2.0),
                           health_check_interval=30)
    # every node's connections, the startup nodes' and those the slot map adds later (nothing has
    # connected yet: RedisCluster connects on its first command)
    cluster.nodes_manager.connection_kwargs["connection_class"] = ClusterConnection
    for node in cluster.nodes_manager.startup_nodes.values():
        node.connection_class = ClusterConnection
    return cast(aioredis.Redis, cluster)


def is_cluster(redis: object) -> bool:
    return isinstance(redis, RedisCluster)


def pool_of(redis: aioredis.Redis) -> Pool | None:
    pool = getattr(redis, "connection_pool", None)  # a RedisCluster has a pool per node, none of ours
    return pool if isinstance(pool, Pool) else None


class PoolReaper:
    """One task per process: every so often closes the pool's connections idle longer than
    REDIS_POOL_IDLE_SECONDS beyond REDIS_POOL_MIN_IDLE, and exports the pool's size."""

    def __init__(self, pool: Pool, *, idle_seconds: float, keep_idle: int) -> None:
        self.pool, self.idle_seconds, self.keep_idle = pool, idle_seconds, keep_idle
        # often enough that a connection goes at most half its idle time late; at most every 30 s
        self.every = min(max(idle_seconds / 2, 0.05), 30.0) if idle_seconds > 0 else 30.0
        self._task: asyncio.Task[None] | None = None

    def tick(self) -> None:
        metrics.REDIS_POOL.labels(state="in_use").set(self.pool.in_use)
        metrics.REDIS_POOL.labels(state="idle").set(self.pool.size - self.pool.in_use)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                if self.idle_seconds > 0:
                    closed = await self.pool.reap(self.idle_seconds, self.keep_idle)
                    if closed:
                        metrics.REDIS_POOL_REAPED.inc(closed)
                        logger.debug("closed %d idle Redis connections; pool now %d", closed, self.pool.size)
                self.tick()
            except Exception:  # never let the pool's upkeep die quietly
                logger.exception("Redis pool upkeep failed")

    async def start(self) -> None:
        self.tick()
        self._task = asyncio.create_task(self._run(), name="redis-pool-reaper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def engine_failure(exc: BaseException) -> ServiceError | None:
    """What a failed Redis call means for a client, counted by kind in
    `realtime_engine_failures_total{kind}`; None when `exc` is not an engine failure.

    - pool exhausted (this process had no free connection in time) and a timeout (Redis, or
      something on the way, did not answer in time): `busy` 503, retry after BUSY_RETRY_AFTER s;
    - any other lost or refused connection: `unavailable` 503, retry after UNREACHABLE_RETRY_AFTER s.
    """
    error: ServiceError
    if isinstance(exc, NotReplicated):
        return exc  # counted where it is raised (app.eventlog.redis)
    if isinstance(exc, (PoolExhausted, MaxConnectionsError)):
        kind, error = "pool_exhausted", Busy(
            "the server has no free connection to its event log engine; retry shortly", retry_after=BUSY_RETRY_AFTER)
    elif isinstance(exc, (RedisTimeoutError, TimeoutError)):
        kind, error = "timeout", Busy(
            "the event log engine is answering too slowly; retry shortly", retry_after=BUSY_RETRY_AFTER)
    elif isinstance(exc, (RedisConnectionError, *CLUSTER_AWAY)):
        kind, error = "unreachable", Unavailable(
            "the event log engine is unreachable; retry shortly", retry_after=UNREACHABLE_RETRY_AFTER)
    else:
        return None
    metrics.ENGINE_FAILURES.labels(kind=kind).inc()
    return error


def keys_for(settings: Settings) -> Keys:
    """The key layout of these settings: hash-tagged with more than one partition or on a Cluster
    (every multi-key script and transaction single-slot), else today's names (app/keys.py)."""
    return Keys(settings.redis_prefix, partitions=settings.redis_partitions,
                tagged=settings.redis_partitions > 1 or is_cluster_url(settings.redis_url))

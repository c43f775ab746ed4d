"""REDIS_URL=redis+cluster://... with REDIS_PARTITIONS > 1 (issue 14, the Cluster slice), on a
six-node cluster the suite starts itself (tests/redis_servers.py: three primaries, three replicas).

- The URL form and the partitioned key layout (no servers).
- The event log's contract suite (tests/test_eventlog.py) on the cluster URL with 4 partitions,
  plus what is the cluster's own: partitions spread over the primaries, a batch of appends is one
  write per node, a partition that lost its keys resets its old cursors.
- A live server on the cluster: WebSocket and SSE receive what is published (HTTP and the worker
  ingest stream), a resume replays, tenants spread over partitions never meet, tickets, presence,
  idempotency and the Web Push queue work.
- Changing REDIS_PARTITIONS: an old cursor resets (never a silent gap).
- Failovers with counts: a primary SIGKILLed under load (its replica takes over; the same
  WebSockets keep receiving; an acknowledged event that did not arrive came before a reset), and a
  loss made certain (the replica stopped and cut off while five events are acknowledged, then
  promoted without them: the connected client and a resuming one are told reset).

Every wait is for a condition with a deadline (the deadline only turns a hang into a failure).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from forge_publisher import Publisher
from redis.asyncio.cluster import RedisCluster
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.cluster import key_slot

from app.eventlog.base import ZERO, EventLog, now_ms, parse_cursor
from app.keys import Keys, partition_of
from app.redis_client import ClusterURL, NotReplicated, create_redis, keys_for, pool_of
from app.settings import Settings
from tests.conftest import LiveServer, auth, eventually, service_token, token
from tests.notify_support import push_and_outbox_through
from tests.redis_servers import ClusterSet
from tests.test_eventlog import (  # noqa: F401  (fixtures and the contract suite, collected here on the cluster)
    draft,
    log,
    make_log,
    redis_log,
    take,
    test_append_many_follows_a_single_append_and_is_tailed_in_item_order,
    test_append_many_gives_each_item_what_append_would,
    test_append_many_repeats_are_idempotent_within_and_across_batches,
    test_append_returns_strictly_increasing_ids,
    test_cursors_are_per_tenant_user_and_client,
    test_event_json_and_sse_match_the_contract,
    test_floor_moves_past_trimmed_history,
    test_head_is_zero_when_empty_then_the_newest_id,
    test_idempotency_key_returns_the_first_id_and_stores_nothing,
    test_read_returns_one_tenant_channel_with_bounds_and_limit,
    test_redis_append_many_loads_its_script_when_redis_lacks_it,
    test_redis_tail_skips_a_malformed_entry,
    test_same_channel_name_in_two_tenants_never_mixes,
    test_tail_yields_later_appends_in_order,
)
from tests.test_transports_live import SSE, WAIT, Closed, is_presence, poll, poll_ok, publish, ws_open

PARTITIONS = 4

# --------------------------------------------------------------------------------------------
# the servers, and the fixtures the contract suite takes, pointed at them
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSet]:
    """One cluster for this module (tests use prefixes of their own)."""
    with ClusterSet(tmp_path_factory.mktemp("cluster") / "nodes") as servers:
        yield servers


@pytest.fixture
def engine_name() -> str:
    return "redis"  # the contract suite's Redis engine, here on the cluster


@pytest.fixture
def redis_url(cluster: ClusterSet) -> str:
    return cluster.url()


@pytest.fixture
def make_settings(tmp_path: Path, prefix: str) -> Callable[..., Settings]:
    """The suite's settings, with REDIS_PARTITIONS=4 unless a test says otherwise."""
    from tests.conftest import TEST_SECRET

    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {"data_dir": tmp_path, "jwt_secret": TEST_SECRET, "redis_prefix": prefix,
                                     "redis_url": None, "database_url": None, "redis_partitions": PARTITIONS}
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return build


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(WAIT * 2, connect=5.0), trust_env=False) as client:
        yield client


def tenants_by_partition(partitions: int = PARTITIONS, per_partition: int = 1) -> list[str]:
    """Tenant names that fill every partition (`per_partition` each), in partition order."""
    found: dict[int, list[str]] = {}
    for n in range(10_000):
        name = f"org_{n}"
        bucket = found.setdefault(partition_of(name, partitions), [])
        if len(bucket) < per_partition:
            bucket.append(name)
        if len(found) == partitions and all(len(b) == per_partition for b in found.values()):
            break
    return [name for p in range(partitions) for name in found[p]]


# --------------------------------------------------------------------------------------------
# the URL and the layout (no servers)
# --------------------------------------------------------------------------------------------


def test_the_cluster_url_form() -> None:
    url = ClusterURL.parse("redis+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2,[::1]:7001/")
    assert url == ClusterURL(nodes=(("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7001)), username="app",
                             password="s@cret")
    assert ClusterURL.parse("redis+cluster://h:1") == ClusterURL(nodes=(("h", 1),))
    for bad in ("redis+cluster://", "redis+cluster://h:1/0", "redis+cluster://h:1?x=1", "redis://h"):
        with pytest.raises(ValueError):
            ClusterURL.parse(bad)


def test_partitioned_keys_share_one_slot_per_partition_and_name_their_count() -> None:
    keys = Keys("rt", partitions=8)
    tenant = "org_123"
    p = keys.partition(tenant)
    assert p == partition_of(tenant, 8) and 0 <= p < 8
    appended = [keys.log_of(p), keys.channel(tenant, "analysis:a1"), keys.idempotency(tenant, "k"),
                keys.no_idempotency_of(p), keys.state(tenant, "analysis:a1"), keys.origin_of(p)]
    assert appended[0] == f"rt:{{p{p}/8}}:log"
    assert len({key_slot(k.encode()) for k in appended}) == 1  # the append script is single-slot
    presence = [keys.presence_index_of(p), keys.presence(tenant, "repository:r"), keys.presence_since(tenant, "repository:r")]
    assert len({key_slot(k.encode()) for k in presence}) == 1
    # the ingest and push streams keep their names (workers XADD rt:ingest); companions share their slots
    assert keys.ingest == "rt:ingest" and keys.push == "rt:push"
    assert key_slot(keys.ingest.encode()) == key_slot(keys.ingest_rejected.encode()) == key_slot(keys.ingest_lease.encode())
    assert key_slot(keys.push.encode()) == key_slot(keys.push_delayed.encode()) == key_slot(f"{keys.push_put}x".encode())
    # another count is another set of keys: no key of one layout is one of the other
    assert not set(appended) & {Keys("rt", partitions=4).log_of(n) for n in range(4)}
    # the default is today's layout, untouched
    assert (Keys().log, Keys().channel("t", "a:b"), Keys().ingest_rejected) == ("rt:log", "rt:ch:t:a:b", "rt:ingest:rejected")


def test_the_settings_choose_the_layout(make_settings: Callable[..., Settings]) -> None:
    assert not keys_for(make_settings(redis_partitions=1, redis_url="redis://h")).tagged
    assert keys_for(make_settings(redis_partitions=1, redis_url="redis+cluster://h:1")).tagged  # Cluster: always tags
    assert keys_for(make_settings(redis_partitions=3, redis_url="redis://h")).partitions == 3
    assert make_settings(redis_url="redis+cluster://h:1", redis_wait_replicas=1).redis_wait_replicas == 1


# --------------------------------------------------------------------------------------------
# the log on the cluster, beyond the contract suite
# --------------------------------------------------------------------------------------------


async def test_the_cluster_client_and_partitions_spread_over_the_primaries(
        cluster: ClusterSet, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis_url=cluster.url(), redis_partitions=16)
    redis = create_redis(settings)
    assert isinstance(redis, RedisCluster) and pool_of(redis) is None
    try:
        keys = keys_for(settings)
        owners = {cluster.port_of_slot(key_slot(keys.log_of(p).encode())) for p in range(16)}
        assert len(owners) == 3, owners  # 16 partitions land on every primary
        assert sorted(owners) == sorted(cluster.primaries())
        assert await redis.ping()
    finally:
        await redis.aclose()


async def test_a_batch_of_appends_is_one_write_per_node(redis_log: EventLog, monkeypatch: pytest.MonkeyPatch) -> None:
    from redis.asyncio.connection import AbstractConnection

    log = redis_log
    tenants = tenants_by_partition()
    for tenant in tenants:
        await log.append(draft(tenant, "user:u1", {"warm": True}))
    writes = 0
    real_send = AbstractConnection.send_packed_command

    async def counting_send(self: AbstractConnection, command: object, check_health: bool = True) -> None:
        nonlocal writes
        writes += 1
        await real_send(self, command, check_health)  # type: ignore[arg-type]

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting_send)
    items = [(draft(tenants[i % len(tenants)], "user:u1", {"i": i}), None) for i in range(200)]
    results = await log.append_many(items)
    monkeypatch.undo()
    assert writes <= 3  # one per primary holding a partition
    # ids are a partition's: two tenants of two partitions may get the same one, a tenant never twice
    assert len({(d.tenant, r[0]) for (d, _), r in zip(items, results, strict=True)}) == 200  # type: ignore[index]


async def test_the_tail_reads_each_partition_on_its_node_without_asking_for_its_keys(
        redis_log: EventLog, monkeypatch: pytest.MonkeyPatch) -> None:
    """XREAD's keys are movable: unaimed, redis-py asks a node `COMMAND GETKEYS` before every read."""
    from redis.asyncio.connection import AbstractConnection

    log = redis_log
    tenants = tenants_by_partition()
    sent: list[bytes] = []
    real_send = AbstractConnection.send_packed_command

    async def recording_send(self: AbstractConnection, command: object, check_health: bool = True) -> None:
        parts = command if isinstance(command, list) else [command]
        sent.append(b"".join(bytes(part) for part in parts))  # type: ignore[arg-type]
        await real_send(self, command, check_health)  # type: ignore[arg-type]

    monkeypatch.setattr(AbstractConnection, "send_packed_command", recording_send)
    stream = log.tail(await log.heads())
    try:
        ids = [(await log.append(draft(tenant, "repository:r", {"t": tenant})))[0] for tenant in tenants]
        got = await take(stream, len(tenants))
    finally:
        await stream.aclose()
        monkeypatch.undo()
    assert sorted(e.id for e in got) == sorted(ids)
    assert sum(b"XREAD" in command for command in sent) >= len(tenants)
    assert not [command for command in sent if b"GETKEYS" in command]


async def test_each_partition_has_its_own_head_floor_and_tail(redis_log: EventLog) -> None:
    log = redis_log
    tenants = tenants_by_partition()
    starts = await log.heads()
    assert starts == [ZERO] * PARTITIONS
    ids = {tenant: (await log.append(draft(tenant, "repository:r", {"t": tenant})))[0] for tenant in tenants}
    for tenant in tenants:
        p = log.partition(tenant)
        assert await log.head(p) == ids[tenant]
        head, floor = await log.bounds(p)
        assert head == ids[tenant] and parse_cursor(floor) <= parse_cursor(ids[tenant])
    stream = log.tail(starts)
    try:
        got = await take(stream, len(tenants))
    finally:
        await stream.aclose()
    assert sorted(e.id for e in got) == sorted(ids.values())
    assert {e.tenant: e.id for e in got} == ids


async def test_a_partition_that_lost_its_keys_resets_its_old_cursors(redis_log: EventLog) -> None:
    log = redis_log
    lost, kept = tenants_by_partition()[:2]
    old, _ = await log.append(draft(lost, "user:u1", {"i": 1}))
    other, _ = await log.append(draft(kept, "user:u1", {"i": 1}))
    p = log.partition(lost)
    assert parse_cursor(old) >= parse_cursor(await log.floor(p))
    await eventually(lambda: now_ms() > parse_cursor(old)[0] + 1)
    redis: Any = log.redis  # type: ignore[attr-defined]
    keys: Keys = log.keys  # type: ignore[attr-defined]
    for key in (keys.log_of(p), keys.origin_of(p), keys.channel(lost, "user:u1")):  # that partition's node lost them
        await redis.delete(key)
    assert parse_cursor(old) < parse_cursor(await log.floor(p))  # a reset, never a silent gap
    q = log.partition(kept)
    assert parse_cursor(other) >= parse_cursor(await log.floor(q))  # the other partition lost nothing


# --------------------------------------------------------------------------------------------
# REDIS_WAIT_REPLICAS on the cluster: each primary written to waits for its replica
# --------------------------------------------------------------------------------------------


def stored_on(port: int, key: str) -> set[str]:
    """The ids of the stream `key` on the node at `port` (a replica answers reads of its slots
    when asked READONLY)."""
    import redis as sync_redis

    node = sync_redis.Redis(port=port, socket_timeout=5)
    try:
        node.execute_command("READONLY")
        return {entry_id.decode() for entry_id, _ in node.xrange(key)}  # type: ignore[union-attr]
    finally:
        node.close()


async def test_appends_wait_for_the_replica_of_every_primary_they_wrote_to(
        make_log: Callable[..., Any], cluster: ClusterSet) -> None:
    log: EventLog = await make_log(redis_wait_replicas=1, redis_wait_timeout_ms=2000)
    keys: Keys = log.keys  # type: ignore[attr-defined]
    tenants = tenants_by_partition()
    results = await log.append_many([(draft(tenant, "user:u1", {"t": tenant}), f"w-{tenant}") for tenant in tenants])
    primaries = {cluster.port_of_slot(key_slot(keys.log_of(log.partition(t)).encode())) for t in tenants}
    assert len(primaries) >= 2, primaries  # the batch wrote to several primaries, each with its own WAIT
    for tenant, (event_id, created) in zip(tenants, results, strict=True):  # type: ignore[misc]
        assert created
        key = keys.log_of(log.partition(tenant))
        replica = cluster.replica_of(cluster.port_of_slot(key_slot(key.encode())))
        assert event_id in stored_on(replica, key), (tenant, "acknowledged, so on its primary's replica already")


async def test_a_paused_replica_is_not_replicated_for_its_primary_only(
        make_log: Callable[..., Any], cluster: ClusterSet, counted: Callable[..., None]) -> None:
    """The replica of one primary stopped (SIGSTOP): an append to that primary's partition is
    stored but not acknowledged (503 not_replicated), and so is a batch that includes one; an append
    to another primary is acknowledged; once the replica is back, the retry with the same key
    answers the same id, acknowledged."""
    log: EventLog = await make_log(redis_wait_replicas=1, redis_wait_timeout_ms=300)
    keys: Keys = log.keys  # type: ignore[attr-defined]
    tenants = tenants_by_partition()

    def primary_of(tenant: str) -> int:
        return cluster.port_of_slot(key_slot(keys.log_of(log.partition(tenant)).encode()))

    stalled = tenants[0]
    other = next(t for t in tenants if primary_of(t) != primary_of(stalled))
    await log.append_many([(draft(t, "user:u1", {"warm": True}), None) for t in (stalled, other)])
    replica = cluster.nodes[cluster.replica_of(primary_of(stalled))]
    replica.pause()
    refusals = 0
    try:
        with pytest.raises(NotReplicated) as refused:
            await log.append(draft(stalled, "user:u1", {"n": 1}), "k1")
        refusals += 1
        [stored] = refused.value.ids
        assert (refused.value.status, refused.value.code) == (503, "not_replicated")
        elsewhere, created = await log.append(draft(other, "user:u1", {"n": 1}), "k1")  # another primary: acknowledged
        assert created
        with pytest.raises(NotReplicated) as batch:
            await log.append_many([(draft(other, "user:u1", {"n": 2}), "k2"), (draft(stalled, "user:u1", {"n": 1}), "k1")])
        refusals += 1
        assert batch.value.ids[1] == stored
    finally:
        replica.resume()
    assert await log.append(draft(stalled, "user:u1", {"n": 1}), "k1") == (stored, False)
    assert await log.append(draft(other, "user:u1", {"n": 1}), "k1") == (elsewhere, False)
    await asyncio.to_thread(cluster.wait_settled)
    counted("cluster replica paused", not_replicated=refusals, stored_once=1, acknowledged_on_the_other_primary=1)


# --------------------------------------------------------------------------------------------
# a live server on the cluster
# --------------------------------------------------------------------------------------------


async def test_a_live_server_on_the_cluster_delivers_each_tenant_its_own_over_every_partition(
        live_servers: Callable[..., LiveServer], cluster: ClusterSet, prefix: str, http: httpx.AsyncClient) -> None:
    """Two processes on the cluster with 4 partitions, one tenant in each partition: WebSocket and
    SSE clients of every tenant receive what is published through either process (HTTP, and a
    worker's XADD to the ingest stream), their own tenant's only, in order; a poll resumes."""
    env = {"REDIS_URL": cluster.url(), "REDIS_PARTITIONS": str(PARTITIONS)}
    a, b = live_servers(redis=False, **env), live_servers(redis=False, **env)
    tenants = tenants_by_partition()
    cursors = {t: (await poll_ok(http, a, token("u1", t), timeout=0))["cursor"] for t in tenants}
    sockets = {t: await ws_open(b, "u1", t) for t in tenants}
    streams = {t: SSE(http, a, token("u1", t), since=cursors[t]) for t in tenants}
    worker = SyncRedisCluster(host="127.0.0.1", port=next(iter(cluster.nodes)), socket_timeout=2)
    try:
        for stream in streams.values():
            await stream.__aenter__()
            assert stream.response.status_code == 200
        published: dict[str, list[str]] = {t: [] for t in tenants}
        for n in range(3):
            for i, tenant in enumerate(tenants):
                server = (a, b)[(n + i) % 2]
                published[tenant].append(await publish(http, server, f"tenant:{tenant}", {"n": n, "t": tenant},
                                                       tenant=tenant))
        for tenant in tenants:  # a worker with the publisher package, on redis-py's own cluster client
            Publisher(worker, tenant=tenant, prefix=prefix).publish(f"tenant:{tenant}", "test.event", {"n": 3, "t": tenant})
        for tenant in tenants:
            ws_got = await sockets[tenant].events(4)
            sse_got = await streams[tenant].events(4)
            for got in (ws_got, sse_got):
                assert [e["data"] for e in got] == [{"n": n, "t": tenant} for n in range(4)], (tenant, got)
                assert [e["id"] for e in got[:3]] == published[tenant]
                assert all(parse_cursor(x["id"]) < parse_cursor(y["id"]) for x, y in itertools.pairwise(got))
            # a resume from the first event replays the rest, on the other process
            answer = await poll_ok(http, b, token("u1", tenant), since=ws_got[0]["id"], timeout=5)
            assert not answer["reset"] and [e["data"]["n"] for e in answer["events"] if not is_presence(e)] == [1, 2, 3]
    finally:
        worker.close()
        for stream in streams.values():
            await stream.__aexit__()
        for ws in sockets.values():
            await ws.aclose()


async def test_tickets_presence_idempotency_and_state_on_the_cluster(
        live_servers: Callable[..., LiveServer], cluster: ClusterSet, http: httpx.AsyncClient) -> None:
    server = live_servers(redis=False, REDIS_URL=cluster.url(), REDIS_PARTITIONS=str(PARTITIONS))
    for tenant in tenants_by_partition()[:2]:  # presence of two partitions, each in its own slot
        watcher = await ws_open(server, "u2", tenant, channels=["repository:r1"])
        ticket = (await http.post(f"{server.url}/v1/tickets",
                                  headers=auth(token("u1", tenant, channels=["repository:*"])))).json()
        async with watcher, await ws_open(server, "u1", tenant, channels=["repository:r1"], ticket=ticket["ticket"]) as ws:
            async def present(tenant: str = tenant) -> bool:
                response = await http.get(f"{server.url}/v1/presence/repository:r1",
                                          headers=auth(token("u3", tenant, channels=["repository:*"])))
                return sorted(u["user_id"] for u in response.json()["users"]) == ["u1", "u2"]

            await eventually(present, WAIT)
            join = await watcher.next()
            assert join["type"] == "presence.join" and join["data"] == {"user_id": "u1"}, join
            body = {"tenant": tenant, "channel": "repository:r1", "type": "test.event", "data": {"n": 1},
                    "idempotency_key": "once"}
            first = await http.post(f"{server.url}/v1/events", json=body, headers=auth(service_token(tenant)))
            second = await http.post(f"{server.url}/v1/events", json=body, headers=auth(service_token(tenant)))
            assert first.status_code == second.status_code == 202 and first.json() == second.json()
            for client in (ws, watcher):
                [got] = await client.events(1)
                assert got["id"] == first.json()["id"]
        # live state: the latest progress is a snapshot for a client that comes without a cursor
        await publish(http, server, "analysis:a1", {"analysisId": "a1", "progress": 40}, tenant=tenant,
                      type_="analysis.progress")
        answer = (await poll(http, server, token("u1", tenant, channels=["analysis:*"]), channels="analysis:a1",
                             timeout=0)).json()
        assert [(e["data"]["progress"], e.get("snapshot")) for e in answer["events"]] == [(40, True)], answer


async def test_changing_the_partition_count_resets_an_old_cursor(
        live_servers: Callable[..., LiveServer], cluster: ClusterSet, http: httpx.AsyncClient) -> None:
    """A cursor of one layout is never resumed in another: whatever its value, the new layout's
    partitions began after it (their own origins), so it resumes with a reset, then goes on live."""
    old = live_servers(redis=False, REDIS_URL=cluster.url(), REDIS_PARTITIONS="4")
    tenant = "org_moving"
    cursor = await publish(http, old, f"tenant:{tenant}", {"n": 1}, tenant=tenant)
    assert not (await poll_ok(http, old, token("u1", tenant), since=cursor, timeout=0))["reset"]
    old.stop()
    for partitions in ("2", "1"):
        new = live_servers(redis=False, REDIS_URL=cluster.url(), REDIS_PARTITIONS=partitions)
        answer = await poll_ok(http, new, token("u1", tenant), since=cursor, timeout=0)
        assert answer["reset"] is True, answer
        published = await publish(http, new, f"tenant:{tenant}", {"n": 2}, tenant=tenant)
        later = await poll_ok(http, new, token("u1", tenant), since=answer["cursor"], timeout=5)
        assert [e["id"] for e in later["events"]] == [published] and not later["reset"]
        new.stop()


async def test_the_push_queue_and_the_outbox_on_the_cluster(cluster: ClusterSet, make_settings: Callable[..., Settings],
                                                            tmp_path: Path) -> None:
    await push_and_outbox_through(cluster.url(), make_settings, tmp_path, wait=WAIT)


# --------------------------------------------------------------------------------------------
# a primary killed while clients are connected and events flow
# --------------------------------------------------------------------------------------------

TOTAL, KILL_AT = 60, 20


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[ClusterSet]:
    """A cluster of the test's own, to fail over."""
    with ClusterSet(tmp_path / "cluster") as servers:
        yield servers


class Watcher:
    """A WebSocket client that keeps every frame, in order, until told to stop."""

    def __init__(self, ws: Any) -> None:
        self.ws, self.frames = ws, []  # type: ignore[var-annotated]
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            frame = await self.ws.frames.get()
            self.frames.append(frame)
            if isinstance(frame, Closed):
                return

    @property
    def events(self) -> list[dict]:
        return [f for f in self.frames if isinstance(f, dict) and "op" not in f and not is_presence(f) and not f.get("snapshot")]

    @property
    def resets(self) -> int:
        return sum(1 for f in self.frames if f == {"op": "reset"})

    def first_after_last_reset(self) -> tuple[int, int] | None:
        last = max((i for i, f in enumerate(self.frames) if f == {"op": "reset"}), default=-1)
        ids = [parse_cursor(f["id"]) for f in self.frames[last + 1:] if isinstance(f, dict) and "op" not in f
               and not is_presence(f) and not f.get("snapshot")]
        return min(ids, default=None)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def slot_of_tenant(tenant: str, partitions: int = PARTITIONS, prefix: str = "rt") -> int:
    return key_slot(Keys(prefix, partitions=partitions).log_of(partition_of(tenant, partitions)).encode())


@pytest.mark.parametrize("wait_replicas", [0, 1], ids=["no-wait", "wait-1"])
async def test_a_cluster_primary_killed_under_load_clients_keep_receiving_and_a_loss_is_a_reset(
        fresh_cluster: ClusterSet, live_servers: Callable[..., LiveServer], prefix: str, http: httpx.AsyncClient,
        counted: Callable[..., None], wait_replicas: int) -> None:
    """TOTAL publishes for a tenant, each with its idempotency key and retried on a 503; the primary
    serving its partition SIGKILLed after KILL_AT; its replica takes over. The same WebSocket (and
    a client of a tenant on another primary) keeps receiving; an acknowledged event that did not
    arrive came before a reset the client got, never a silent gap. With REDIS_WAIT_REPLICAS=1 no
    acknowledged event is missing at all: each one was on the replica that took over."""
    servers = fresh_cluster
    server = live_servers(redis=False, REDIS_URL=servers.url(), REDIS_PARTITIONS=str(PARTITIONS),
                          REDIS_WAIT_REPLICAS=str(wait_replicas))
    tenants = tenants_by_partition()
    slot = slot_of_tenant(tenants[0], prefix=prefix)
    victim = servers.port_of_slot(slot)
    bystander = next(t for t in tenants if servers.port_of_slot(slot_of_tenant(t, prefix=prefix)) != victim)
    watchers = {t: Watcher(await ws_open(server, "u1", t)) for t in (tenants[0], bystander)}
    acknowledged: dict[str, list[str]] = {t: [] for t in watchers}
    refused: Counter[str] = Counter()
    failover: dict[str, Any] = {}

    async def fail_over() -> None:
        started = time.monotonic()
        await asyncio.to_thread(servers.nodes[victim].kill)
        failover["new"] = await asyncio.to_thread(servers.wait_failover, slot, victim)
        failover["seconds"] = round(time.monotonic() - started, 1)
        if wait_replicas:
            # the promoted replica has no replica of its own: its appends are stored but not
            # acknowledged (503 not_replicated, retried with their keys) until the killed node,
            # restarted (empty), rejoins as its replica
            await eventually(lambda: refused["not_replicated"] >= 2, WAIT * 2)
            await asyncio.to_thread(servers.nodes[victim].start)
            await asyncio.to_thread(servers.wait_settled)

    failing: asyncio.Task[None] | None = None
    try:
        for n in range(TOTAL):
            if n == KILL_AT:
                failing = asyncio.create_task(fail_over())
            for tenant in watchers:
                body = {"tenant": tenant, "channel": "user:u1", "type": "test.event", "data": {"n": n},
                        "idempotency_key": f"fo-{n}"}
                deadline = time.monotonic() + 60
                while True:
                    response = await http.post(f"{server.url}/v1/events", json=body, headers=auth(service_token(tenant)))
                    if response.status_code == 202:
                        acknowledged[tenant].append(response.json()["id"])
                        break
                    assert response.status_code == 503, response.text  # never a 500, never a hang
                    refused[response.json()["code"]] += 1
                    assert time.monotonic() < deadline, f"publish {n} not acknowledged within 60 s: {dict(refused)}"
                    await asyncio.sleep(0.1)
        assert failing is not None
        await asyncio.wait_for(failing, WAIT * 4)
        for tenant, watcher in watchers.items():
            await eventually(lambda w=watcher, t=tenant: acknowledged[t][-1] in {e["id"] for e in w.events}, WAIT * 2)
    finally:
        if failing is not None and not failing.done():
            failing.cancel()
        for watcher in watchers.values():
            await watcher.stop()
            await watcher.ws.aclose()
    counts: dict[str, Any] = {}
    for tenant, watcher in watchers.items():
        delivered = [e["id"] for e in watcher.events]
        missing = [i for i in acknowledged[tenant] if i not in set(delivered)]
        assert not any(isinstance(f, Closed) for f in watcher.frames), "the WebSocket stayed open"
        assert [i for i in acknowledged[tenant] if Counter(delivered)[i] > 1] == []
        first_after = watcher.first_after_last_reset()
        # whatever acknowledged event did not arrive was published before a reset the client got
        assert not missing or (watcher.resets and all(first_after is None or parse_cursor(i) < first_after
                                                      for i in missing)), (missing, watcher.resets)
        if wait_replicas:
            assert missing == [], "with WAIT every acknowledged publish reaches the client"
        role = "failed over" if tenant == tenants[0] else "other primary"
        counts.update({f"{role}: acknowledged": len(acknowledged[tenant]), f"{role}: delivered": len(delivered),
                       f"{role}: missing": len(missing), f"{role}: resets": watcher.resets})
    counted(f"cluster primary killed, WAIT {wait_replicas}", published=TOTAL * 2, refused_503=sum(refused.values()),
            **{f"refused_{code}": n for code, n in refused.items()},
            failover_seconds=failover.get("seconds", -1), **counts)


async def test_events_a_cluster_failover_lost_reach_no_client_silently(
        fresh_cluster: ClusterSet, live_servers: Callable[..., LiveServer], prefix: str, http: httpx.AsyncClient,
        counted: Callable[..., None]) -> None:
    """A loss made certain: the partition's replica stopped (SIGSTOP) and its link cut by the primary
    (CLIENT KILL), five publishes acknowledged by the primary alone (the client has them live), the
    primary SIGKILLed, the replica resumed and promoted without them. The connected client is told
    `reset` after them and goes on live; a client resuming from before them is told `reset` too."""
    servers = fresh_cluster
    server = live_servers(redis=False, REDIS_URL=servers.url(), REDIS_PARTITIONS=str(PARTITIONS))
    tenant = tenants_by_partition()[0]
    slot = slot_of_tenant(tenant, prefix=prefix)
    primary = servers.port_of_slot(slot)
    replica = servers.replica_of(primary)
    watcher = Watcher(await ws_open(server, "u1", tenant))
    try:
        before = await publish(http, server, "user:u1", {"n": 0}, tenant=tenant)
        await eventually(lambda: before in {e["id"] for e in watcher.events}, WAIT)
        await asyncio.to_thread(lambda: servers.nodes[replica].pause())
        client = servers.nodes[primary].client()
        try:
            client.execute_command("CLIENT", "KILL", "TYPE", "replica")
        finally:
            client.close()
        lost = [await publish(http, server, "user:u1", {"n": n}, tenant=tenant) for n in range(1, 6)]
        await eventually(lambda: set(lost) <= {e["id"] for e in watcher.events}, WAIT)  # had them live
        servers.nodes[primary].kill()
        servers.nodes[replica].resume()
        await asyncio.to_thread(servers.wait_failover, slot, primary)
        await eventually(lambda: watcher.resets >= 1, WAIT * 2)
        deadline = time.monotonic() + 30
        while True:  # the first publish after the failover (a 503 while the slot moves)
            response = await http.post(f"{server.url}/v1/events", headers=auth(service_token(tenant)),
                                       json={"tenant": tenant, "channel": "user:u1", "type": "test.event", "data": {"n": 6}})
            if response.status_code == 202:
                after = response.json()["id"]
                break
            assert response.status_code == 503 and time.monotonic() < deadline, response.text
            await asyncio.sleep(0.1)
        await eventually(lambda: after in {e["id"] for e in watcher.events}, WAIT)
        reset_at = watcher.frames.index({"op": "reset"})
        ids_before_reset = [f["id"] for f in watcher.frames[:reset_at] if isinstance(f, dict) and "id" in f]
        assert set(lost) <= set(ids_before_reset), "the lost events came before the reset"
        assert not any(isinstance(f, Closed) for f in watcher.frames), "the WebSocket stayed open"
        resumed = await poll_ok(http, server, token("u1", tenant), since=before, timeout=0)
        assert resumed["reset"] is True, resumed
    finally:
        await watcher.stop()
        await watcher.ws.aclose()
    counted("cluster failover, loss made certain", acknowledged_lost=len(lost), resets_live_ws=watcher.resets,
            resumed_with_reset=1, silent_gaps=0)

"""REDIS_URL=redis+sentinel://... (issue 14, the Sentinel slice), on a Sentinel set the suite starts
itself (tests/redis_servers.py: one primary, one replica, three Sentinels).

- The URL form, and how a change of the primary's history is judged (no servers).
- The event log's contract suite (tests/test_eventlog.py) on the Sentinel URL, unchanged.
- REDIS_WAIT_REPLICAS: appends wait for replicas on the same connection; too few is the named
  503 `not_replicated`, and a repeated idempotency key waits for the first append's copy too.
- A live server on the Sentinel URL: WebSocket delivery, tickets, idempotency, presence, the
  worker ingest (published with forge_publisher on redis-py's own Sentinel client) and the Web
  Push queue.
- Failovers under load, counted (published against delivered): the primary SIGKILLed while a
  client is connected and events are published through the server; the replica takes over, the
  server follows, the same WebSocket keeps receiving. With REDIS_WAIT_REPLICAS=1 every
  acknowledged publish (202) arrives exactly once; without it, whatever was acknowledged and did
  not arrive comes before a `{"op":"reset"}` the client gets, never a silent gap.

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
import redis as sync_redis
from forge_publisher import Publisher
from redis.sentinel import Sentinel as SyncSentinel

from app.core.publish import prepare
from app.eventlog.base import ZERO, EventLog
from app.redis_client import (
    NotPrimary,
    NotReplicated,
    Replication,
    SentinelPool,
    SentinelURL,
    create_redis,
    history_change,
    pool_of,
)
from app.settings import Settings
from tests.conftest import LiveServer, auth, eventually, running_app, service_token, token
from tests.notify_support import push_and_outbox_through
from tests.redis_servers import SERVICE, SentinelSet
from tests.test_eventlog import (  # noqa: F401  (fixtures and the contract suite, collected here on Sentinel)
    log,
    make_log,
    redis_log,
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
    test_redis_append_many_is_one_round_trip,
    test_redis_append_many_loads_its_script_when_redis_lacks_it,
    test_redis_losing_its_data_turns_old_cursors_into_resets,
    test_redis_tail_skips_a_malformed_entry,
    test_same_channel_name_in_two_tenants_never_mixes,
    test_tail_yields_later_appends_in_order,
)
from tests.test_transports_live import SSE, WAIT, Closed, is_presence, poll, publish, ws_open

# --------------------------------------------------------------------------------------------
# the servers, and the fixtures the contract suite takes, pointed at them
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """One set for the tests that do not fail it over (they use prefixes of their own)."""
    with SentinelSet(tmp_path_factory.mktemp("sentinel") / "set") as servers:
        yield servers


@pytest.fixture
def fresh_set(tmp_path: Path) -> Iterator[SentinelSet]:
    """A set of the test's own, to fail over."""
    with SentinelSet(tmp_path / "sentinel-set") as servers:
        yield servers


@pytest.fixture
def engine_name() -> str:
    return "redis"  # the contract suite's Redis engine, here through Sentinel


@pytest.fixture
def redis_url(sentinel_set: SentinelSet) -> str:
    return sentinel_set.url()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(WAIT * 2, connect=5.0), trust_env=False) as client:
        yield client


def draft(n: int, channel: str = "user:u1", tenant: str = "t1") -> Any:
    return prepare(tenant, channel, "test.event", {"n": n}, max_event_bytes=65536)


# --------------------------------------------------------------------------------------------
# the URL, and what counts as a changed history (no servers)
# --------------------------------------------------------------------------------------------


def test_the_sentinel_url_form() -> None:
    url = SentinelURL.parse("redis+sentinel://app:s%40cret@10.0.0.1:26379,10.0.0.2,[::1]:26380/forge/2"
                            "?sentinel_password=watch&sentinel_username=sentinel")
    assert url == SentinelURL(sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380)), service="forge", db=2,
                              username="app", password="s@cret", sentinel_username="sentinel", sentinel_password="watch")
    assert SentinelURL.parse("redis+sentinel://h:1/mymaster") == SentinelURL(sentinels=(("h", 1),), service="mymaster")
    assert SentinelURL.parse("redis+sentinel://:pw@h/m").password == "pw"
    for bad in ("redis+sentinel://h:1", "redis+sentinel:///m", "redis+sentinel://h/m/zero", "redis+sentinel://h/m/0/1",
                "redis+sentinel://h/m?socket_timeout=1", "redis://h/0"):
        with pytest.raises(ValueError):
            SentinelURL.parse(bad)


def test_which_changes_of_the_primary_may_have_lost_acknowledged_writes() -> None:
    old = Replication("master", replid="a" * 40, replid2="0" * 40, offset=1000, second_offset=-1)
    assert history_change(old, Replication("master", "a" * 40, "0" * 40, 5000, -1), 0) is None  # the same primary
    promoted = Replication("master", replid="b" * 40, replid2="a" * 40, offset=1200, second_offset=1101)
    # a replica promoted: replication is asynchronous, so only WAIT says nothing acknowledged was lost
    assert history_change(old, promoted, wait_replicas=0).lost  # type: ignore[union-attr]
    assert not history_change(old, promoted, wait_replicas=1).lost  # type: ignore[union-attr]
    # ... unless it forked before an offset this process saw the old primary at
    early = Replication("master", replid="b" * 40, replid2="a" * 40, offset=1200, second_offset=900)
    assert history_change(old, early, wait_replicas=1).lost  # type: ignore[union-attr]
    # a Redis restarted empty (or any primary with no link to the old history)
    fresh = Replication("master", replid="c" * 40, replid2="0" * 40, offset=0, second_offset=-1)
    change = history_change(old, fresh, wait_replicas=1)
    assert change is not None and change.kind == "new" and change.lost


# --------------------------------------------------------------------------------------------
# the client: a pool that finds the primary, follows it and refuses replicas
# --------------------------------------------------------------------------------------------


async def test_the_sentinel_client_is_our_bounded_pool_on_the_primary(
        sentinel_set: SentinelSet, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis_url=sentinel_set.url(), redis_max_connections=4, redis_pool_timeout=0.5)
    redis = create_redis(settings)
    assert redis is not None
    try:
        pool = pool_of(redis)
        assert isinstance(pool, SentinelPool) and pool.max_connections == 4
        assert await redis.ping()
        primary = sentinel_set.primary_port()
        assert (await redis.connection_pool.get_master_address())[1] == primary  # type: ignore[attr-defined]
        assert (await redis.info("server"))["tcp_port"] == primary
        # bounded and blocking, with the named error, as on one Redis
        held = [await pool.get_connection() for _ in range(4)]
        from app.redis_client import PoolExhausted

        with pytest.raises(PoolExhausted):
            await pool.get_connection()
        for connection in held:
            await pool.release(connection)
        assert pool.size == 4 and pool.in_use == 0
        assert await pool.reap(0, keep_idle=1) == 3  # the reaper closes idle connections as on one Redis
        assert await redis.ping()
    finally:
        await redis.aclose()


async def test_a_connection_to_a_replica_is_refused(sentinel_set: SentinelSet, make_settings: Callable[..., Settings]) -> None:
    """Through a proxy or a stale address a connection may land on a replica: refused unused
    (as an unreachable engine), never read from (a tail there would lag) nor written to."""
    primary = sentinel_set.primary_port()
    [replica] = [port for port in sentinel_set.nodes if port != primary]
    redis = create_redis(make_settings(redis_url=f"redis://127.0.0.1:{replica}/0"))
    assert redis is not None
    try:
        with pytest.raises(NotPrimary):
            await redis.xread({"nothing": "0-0"}, block=10)
    finally:
        await redis.aclose()


# --------------------------------------------------------------------------------------------
# REDIS_WAIT_REPLICAS
# --------------------------------------------------------------------------------------------


async def test_appends_wait_for_replicas_when_asked(make_log: Callable[..., Any], sentinel_set: SentinelSet) -> None:
    log: EventLog = await make_log(redis_wait_replicas=1, redis_wait_timeout_ms=2000)
    first, created = await log.append(draft(1), "k1")
    assert created
    assert await log.append(draft(1), "k1") == (first, False)
    results = await log.append_many([(draft(i), f"m{i}") for i in range(5)] + [(draft(1), "k1")])
    assert results[-1] == (first, False) and all(r[1] for r in results[:-1])  # type: ignore[index]
    # what was acknowledged is on the replica already
    primary = sentinel_set.primary_port()
    [replica_port] = [port for port in sentinel_set.nodes if port != primary]
    replica = sync_redis.Redis(port=replica_port)
    try:
        stored = {entry_id.decode() for entry_id, _ in replica.xrange(log.keys.log)}  # type: ignore[attr-defined, union-attr]
    finally:
        replica.close()
    assert {first, *(r[0] for r in results)} <= stored  # type: ignore[index]


async def test_too_few_replicas_is_not_replicated_and_a_retry_waits_for_the_first_copy(
        make_log: Callable[..., Any], sentinel_set: SentinelSet, counted: Callable[..., None]) -> None:
    """The replica stopped (SIGSTOP): an append is stored on the primary but not acknowledged;
    retried with its key it answers the same id, and stays unacknowledged until the replica has
    the first append (a repeated key is a write, so WAIT covers it: without that, WAIT on the
    retry's connection would count nothing new and acknowledge an append no replica has)."""
    log: EventLog = await make_log(redis_wait_replicas=1, redis_wait_timeout_ms=300)
    await log.append(draft(0), "warm")  # the script loaded, a connection made
    primary = sentinel_set.primary_port()
    [replica] = [node for port, node in sentinel_set.nodes.items() if port != primary]
    replica.pause()
    refusals = 0
    try:
        with pytest.raises(NotReplicated) as refused:
            await log.append(draft(1), "k1")
        refusals += 1
        [stored] = refused.value.ids
        assert (refused.value.status, refused.value.code, refused.value.retry_after) == (503, "not_replicated", 1)
        for _ in range(2):  # the same key, again: the same id, still not on a replica
            with pytest.raises(NotReplicated) as again:
                await log.append(draft(1), "k1")
            refusals += 1
            assert again.value.ids == [stored]
        with pytest.raises(NotReplicated) as batch:
            await log.append_many([(draft(2), "k2"), (draft(1), "k1")])
        refusals += 1
        assert batch.value.ids[1] == stored
    finally:
        replica.resume()
    assert await log.append(draft(1), "k1") == (stored, False)  # acknowledged once the replica has it
    assert [e.id for e in await log.read("t1", "user:u1", ZERO, await log.head(), 100)][1:2] == [stored]
    await asyncio.to_thread(sentinel_set.wait_settled)
    counted("replica paused", not_replicated=refusals, stored_once=1)


async def test_publish_answers_503_not_replicated_with_retry_after(
        sentinel_set: SentinelSet, make_settings: Callable[..., Settings]) -> None:
    # two replicas asked, one exists: every publish is stored, none acknowledged
    settings = make_settings(redis_url=sentinel_set.url(), redis_wait_replicas=2, redis_wait_timeout_ms=100)
    async with running_app(settings) as (_, client):
        body = {"tenant": "t1", "channel": "user:u1", "type": "test.event", "data": {}, "idempotency_key": "w1"}
        response = await client.post("/v1/events", json=body, headers=auth(service_token()))
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "not_replicated" and response.headers["retry-after"] == "1"
        assert "idempotency key" in response.json()["message"]


def test_wait_must_end_before_the_socket_timeout(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ValueError, match="REDIS_WAIT_TIMEOUT_MS"):
        make_settings(redis_wait_replicas=1, redis_wait_timeout_ms=5000, redis_socket_timeout=5)


# --------------------------------------------------------------------------------------------
# a live server on the Sentinel URL: every part that uses Redis
# --------------------------------------------------------------------------------------------


async def test_a_live_server_on_sentinel_delivers_with_tickets_presence_idempotency_and_ingest(
        live_servers: Callable[..., LiveServer], sentinel_set: SentinelSet, prefix: str, http: httpx.AsyncClient) -> None:
    server = live_servers(redis=False, REDIS_URL=sentinel_set.url())
    watcher = await ws_open(server, "u2", "t1", channels=["repository:r1"])
    ticket = (await http.post(f"{server.url}/v1/tickets", headers=auth(token("u1", "t1", channels=["repository:*"])))).json()
    async with watcher, await ws_open(server, "u1", "t1", channels=["repository:r1"], ticket=ticket["ticket"]) as ws:
        # presence, through Redis: GET /v1/presence, and the join as another member sees it
        async def present() -> bool:
            response = await http.get(f"{server.url}/v1/presence/repository:r1",
                                      headers=auth(token("u3", "t1", channels=["repository:*"])))
            return sorted(u["user_id"] for u in response.json()["users"]) == ["u1", "u2"]

        await eventually(present, WAIT)
        join = await watcher.next()
        assert join["type"] == "presence.join" and join["data"] == {"user_id": "u1"}, join
        # HTTP publishing with an idempotency key: one event
        body = {"tenant": "t1", "channel": "repository:r1", "type": "test.event", "data": {"n": 1}, "idempotency_key": "once"}
        first = await http.post(f"{server.url}/v1/events", json=body, headers=auth(service_token()))
        second = await http.post(f"{server.url}/v1/events", json=body, headers=auth(service_token()))
        assert first.status_code == second.status_code == 202 and first.json() == second.json()
        # a worker publishing with forge_publisher on redis-py's own Sentinel client (the ingest stream)
        workers = SyncSentinel([("127.0.0.1", s.port) for s in sentinel_set.sentinels], socket_timeout=2)
        primary = workers.master_for(SERVICE, socket_timeout=2)
        try:
            Publisher(primary, tenant="t1", prefix=prefix).publish("repository:r1", "test.event", {"n": 2})
        finally:
            primary.close()
        for client in (ws, watcher):
            got = await client.events(2)
            assert [e["data"] for e in got] == [{"n": 1}, {"n": 2}] and got[0]["id"] == first.json()["id"]


async def test_the_push_queue_and_the_outbox_on_sentinel(sentinel_set: SentinelSet, make_settings: Callable[..., Settings],
                                                         tmp_path: Path) -> None:
    await push_and_outbox_through(sentinel_set.url(), make_settings, tmp_path, wait=WAIT)


# --------------------------------------------------------------------------------------------
# failovers under load, counted
# --------------------------------------------------------------------------------------------

TOTAL, KILL_AT = 80, 25


class Watcher:
    """A WebSocket client that keeps every frame, in order, until told to stop."""

    def __init__(self) -> None:
        self.frames: list[Any] = []
        self.task: asyncio.Task[None] | None = None

    async def run(self, ws: Any) -> None:
        while True:
            frame = await ws.frames.get()
            self.frames.append(frame)
            if isinstance(frame, Closed):
                return

    @property
    def events(self) -> list[dict]:
        return [f for f in self.frames if isinstance(f, dict) and "op" not in f and not is_presence(f) and not f.get("snapshot")]

    @property
    def resets(self) -> int:
        return sum(1 for f in self.frames if f == {"op": "reset"})

    def ids_after_last_reset(self) -> list[str]:
        """The events' ids after the last reset frame (all of them without one)."""
        last = max((i for i, f in enumerate(self.frames) if f == {"op": "reset"}), default=-1)
        return [f["id"] for f in self.frames[last + 1:] if isinstance(f, dict) and "op" not in f and not is_presence(f)
                and not f.get("snapshot")]


async def publish_through_a_failover(servers: SentinelSet, live_servers: Callable[..., LiveServer], http: httpx.AsyncClient,
                                     *, wait_replicas: int) -> dict[str, Any]:
    """TOTAL publishes, one at a time, each with its idempotency key and retried on a 503 until
    acknowledged; the primary SIGKILLed after KILL_AT. With WAIT, the old primary is brought back
    as a replica once the failover is done and publishes were refused `not_replicated` (until
    then nothing can be acknowledged)."""
    server = live_servers(redis=False, REDIS_URL=servers.url(), REDIS_WAIT_REPLICAS=str(wait_replicas),
                          REDIS_WAIT_TIMEOUT_MS="500")
    acknowledged: list[str] = []  # ids answered 202, in publishing order
    refused: Counter[str] = Counter()  # 503s, by code
    headers = auth(service_token())
    failover: dict[str, Any] = {}
    ws = await ws_open(server, "u1", "t1")
    watcher = Watcher()
    watcher.task = asyncio.create_task(watcher.run(ws))

    async def fail_over() -> None:
        started = time.monotonic()
        old = await asyncio.to_thread(servers.kill_primary)
        new = await asyncio.to_thread(servers.wait_failover, old)
        failover.update(old=old, new=new, seconds=round(time.monotonic() - started, 1))
        if wait_replicas:
            # the new primary has no replica yet: appends are stored but not acknowledged (503
            # not_replicated, retried with their keys) until the old one is back as its replica
            await eventually(lambda: refused["not_replicated"] >= 2, WAIT * 2)
            await asyncio.to_thread(servers.restart_as_replica, old)
            await asyncio.to_thread(servers.wait_replicas, wait_replicas)

    failing: asyncio.Task[None] | None = None
    try:
        for n in range(TOTAL):
            if n == KILL_AT:
                failing = asyncio.create_task(fail_over())
            body = {"tenant": "t1", "channel": "user:u1", "type": "test.event", "data": {"n": n}, "idempotency_key": f"fo-{n}"}
            deadline = time.monotonic() + 60
            while True:
                response = await http.post(f"{server.url}/v1/events", json=body, headers=headers)
                if response.status_code == 202:
                    acknowledged.append(response.json()["id"])
                    break
                assert response.status_code == 503, response.text  # never a 500, never a hang
                refused[response.json()["code"]] += 1
                assert time.monotonic() < deadline, f"publish {n} not acknowledged within 60 s: {dict(refused)}"
                await asyncio.sleep(0.1)  # the retry a publisher makes after Retry-After, shortened
        assert failing is not None
        await asyncio.wait_for(failing, WAIT * 4)
        # ... and the same WebSocket receives, through the new primary, all that is still due (in id
        # order: once the last one is there, everything before it that will come has come)
        await eventually(lambda: acknowledged[-1] in {e["id"] for e in watcher.events}, WAIT * 2)
    finally:
        if failing is not None and not failing.done():
            failing.cancel()
        if watcher.task is not None:  # stopped first: the close below is ours, not a frame it saw
            watcher.task.cancel()
            await asyncio.gather(watcher.task, return_exceptions=True)
        await ws.aclose()
    return {"server": server, "acknowledged": acknowledged, "refused": refused, "watcher": watcher, "failover": failover}


async def test_a_failover_with_wait_delivers_every_acknowledged_publish_exactly_once(
        fresh_set: SentinelSet, live_servers: Callable[..., LiveServer], http: httpx.AsyncClient,
        counted: Callable[..., None]) -> None:
    run = await publish_through_a_failover(fresh_set, live_servers, http, wait_replicas=1)
    acknowledged, watcher = run["acknowledged"], run["watcher"]
    delivered = [e["id"] for e in watcher.events]
    counts = Counter(delivered)
    assert len(acknowledged) == TOTAL and len(set(acknowledged)) == TOTAL
    assert [i for i in acknowledged if counts[i] != 1] == [], "every acknowledged publish, exactly once"
    assert all(a < b for a, b in itertools.pairwise(tuple(map(int, i.split("-"))) for i in delivered)), "ids keep increasing"
    # written to the old primary and lost with it, never acknowledged (their retries were): seen, not promised
    unacknowledged = [i for i in delivered if i not in set(acknowledged)]
    assert watcher.resets <= 1  # WAIT: nothing acknowledged lost, so no reset (one only if an offset seen was lost)
    assert not any(isinstance(f, Closed) for f in watcher.frames), "the WebSocket stayed open"
    if watcher.resets == 0:  # a client resuming from before the failover replays all after its cursor, once
        async with await ws_open(run["server"], "u1", "t1", since=acknowledged[0]) as resumed:
            replayed: list[str] = []
            while not replayed or replayed[-1] != acknowledged[-1]:
                replayed += [e["id"] for e in await resumed.events(1)]
        # every acknowledged event, once and in order; an unacknowledged one the old primary had
        # already passed on may be among them (seen, not promised), as in `delivered` above
        assert [i for i in replayed if i in set(acknowledged)] == acknowledged[1:], "the log kept every acknowledged event"
        assert len(replayed) == len(set(replayed))
    counted("sentinel failover, WAIT 1", published=TOTAL, acknowledged=len(acknowledged),
            delivered_acknowledged=sum(1 for i in delivered if i in set(acknowledged)),
            delivered_unacknowledged=len(unacknowledged), resets=watcher.resets,
            refused_503=sum(run["refused"].values()), **{f"refused_{k}": v for k, v in run["refused"].items()},
            failover_seconds=run["failover"]["seconds"])


async def test_a_failover_without_wait_shows_any_loss_as_a_reset_never_a_gap(
        fresh_set: SentinelSet, live_servers: Callable[..., LiveServer], http: httpx.AsyncClient,
        counted: Callable[..., None]) -> None:
    run = await publish_through_a_failover(fresh_set, live_servers, http, wait_replicas=0)
    acknowledged, watcher = run["acknowledged"], run["watcher"]
    delivered = [e["id"] for e in watcher.events]
    assert len(acknowledged) == TOTAL and len(set(acknowledged)) == TOTAL
    assert watcher.resets == 1, "a promotion without WAIT may have lost acknowledged events: the client is told"
    reset_at = watcher.frames.index({"op": "reset"})
    after_reset = set(watcher.ids_after_last_reset())
    missing = [i for i in acknowledged if i not in set(delivered)]
    # whatever acknowledged event did not arrive was published before the reset the client got
    first_after = min((tuple(map(int, i.split("-"))) for i in after_reset), default=None)
    assert all(first_after is None or tuple(map(int, i.split("-"))) < first_after for i in missing), (missing, first_after)
    assert [i for i in acknowledged if Counter(delivered)[i] > 1] == []
    assert not any(isinstance(f, Closed) for f in watcher.frames), "the WebSocket stayed open"
    # a client resuming with a cursor from before the failover is told as well
    async with await ws_open(run["server"], "u1", "t1", since=acknowledged[0]) as resumed:
        assert await resumed.next() == {"op": "reset"}
    counted("sentinel failover, no WAIT", published=TOTAL, acknowledged=len(acknowledged), delivered=len(delivered),
            acknowledged_missing=len(missing), resets=watcher.resets, frames_before_reset=reset_at,
            refused_503=sum(run["refused"].values()), **{f"refused_{k}": v for k, v in run["refused"].items()},
            failover_seconds=run["failover"]["seconds"])



async def test_events_a_failover_lost_reach_no_client_silently(
        fresh_set: SentinelSet, live_servers: Callable[..., LiveServer], http: httpx.AsyncClient,
        counted: Callable[..., None]) -> None:
    """A loss made certain: the replica stopped (SIGSTOP) and its link cut by the primary (CLIENT
    KILL), five publishes acknowledged by the primary alone, then the primary SIGKILLed and the
    replica, resumed, promoted. Those five are gone from the log. Each connected client (which had
    them live) is told `reset` in its transport's form: WebSocket, SSE, and a long-poll parked
    across the failover; a client that was away and resumes from before them is told `reset` too,
    instead of a replay that would silently skip them; all go on live."""
    servers = fresh_set
    server = live_servers(redis=False, REDIS_URL=servers.url())
    primary = servers.primary_port()
    [replica_port] = [port for port in servers.nodes if port != primary]
    replica = servers.nodes[replica_port]
    tok = token("u1", "t1")
    async with await ws_open(server, "u1", "t1") as live, SSE(http, server, tok) as stream:
        kept = [await publish(http, server, "user:u1", {"n": n}) for n in range(5)]
        on_replica = sync_redis.Redis(port=replica_port, socket_timeout=2)
        try:
            def replicated() -> bool:
                return any(i.decode() == kept[-1] for i, _ in on_replica.xrevrange(f"{server_prefix(server)}:log", count=1))

            await eventually(replicated, WAIT)
            replica.pause()  # it cannot reconnect; what was sent before the cut is in its socket, kept
            to_primary = servers.nodes[primary].client()
            try:
                to_primary.client_kill_filter(_type="replica")
                await eventually(lambda: servers.replicas_online(primary) == 0, WAIT)
            finally:
                to_primary.close()
            try:
                lost = [await publish(http, server, "user:u1", {"n": n}) for n in range(5, 10)]  # 202: acknowledged
                # a long-poll at the head, parked when the primary goes: its set-up is done once it
                # counts as a resume (what is left, a replay from the hub's memory, reads no Redis)
                resumes = await resumed_count(http, server)
                parked = asyncio.create_task(poll(http, server, tok, since=lost[-1], timeout=25))
                await eventually(lambda: resumed_count(http, server, more_than=resumes), WAIT)
                await asyncio.to_thread(servers.nodes[primary].kill)
            finally:
                replica.resume()
            new = await asyncio.to_thread(servers.wait_failover, primary)
            assert new == replica_port
            after = await publish_retrying(http, server, {"n": "after"})
            log_ids = {i.decode() for i, _ in on_replica.xrange(f"{server_prefix(server)}:log")}
        finally:
            on_replica.close()
        assert set(kept) <= log_ids and not set(lost) & log_ids, "the five acknowledged by the old primary alone are lost"

        got = [await live.next() for _ in range(len(kept) + len(lost) + 2)]
        events = [f["id"] for f in got if "op" not in f]
        assert events == kept + lost + [after] and {"op": "reset"} in got, got
        assert got.index({"op": "reset"}) > len(kept) + len(lost) - 1, "told after what it had, before what follows"

        sse_frames = [await stream.next() for _ in range(len(kept) + len(lost) + 2)]
        assert [(f.event, f.data) for f in sse_frames if f.event == "reset"] == [("reset", "{}")], sse_frames
        assert [f.id for f in sse_frames if f.event != "reset"] == kept + lost + [after]

        answer = (await asyncio.wait_for(parked, WAIT * 2)).json()
        assert answer["reset"] is True, answer

    async with await ws_open(server, "u1", "t1", since=kept[-1]) as away:
        assert await away.next() == {"op": "reset"}, "a replay would have skipped the lost five"
        later = await publish(http, server, "user:u1", {"n": "later"})
        assert [e["id"] for e in await away.events(1)] == [later]
    counted("loss made certain", acknowledged=len(kept) + len(lost) + 2, acknowledged_lost=len(lost),
            resets_live_ws=1, resets_live_sse=1, resets_parked_poll=1, resumed_with_reset=1, silent_gaps=0)


async def resumed_count(http: httpx.AsyncClient, server: LiveServer, more_than: float | None = None) -> float:
    """realtime_resumes_total of the server; with `more_than`, 0 until it is higher."""
    text = (await http.get(f"{server.url}/metrics")).text
    value = next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("realtime_resumes_total "))
    return value if more_than is None or value > more_than else 0.0


def server_prefix(server: LiveServer) -> str:
    return server._env["REDIS_PREFIX"]


async def publish_retrying(http: httpx.AsyncClient, server: LiveServer, data: dict) -> str:
    """Until acknowledged (a 503 while the primary changes)."""
    response: httpx.Response | None = None

    async def accepted() -> bool:
        nonlocal response
        response = await http.post(f"{server.url}/v1/events", headers=auth(service_token()),
                                   json={"tenant": "t1", "channel": "user:u1", "type": "test.event", "data": data})
        assert response.status_code in (202, 503), response.text
        return response.status_code == 202

    await eventually(accepted, WAIT * 2, interval=0.1)
    assert response is not None
    return str(response.json()["id"])

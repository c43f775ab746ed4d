"""The live transport suite (tests/test_transports_live.py) again, with the servers on a Redis
Cluster (REDIS_URL=redis+cluster://..., REDIS_PARTITIONS=4; tests/redis_servers.py starts six nodes:
three primaries, three replicas): every test there that talks to the service only through its
sockets is collected here too, with the fixtures it takes pointed at the cluster.

Left to one Redis: the three tests that write Redis keys themselves (a filler pushed into the
ingest stream, a stored cursor read back, a worker's XADD); tests/test_cluster.py does those on the
cluster (the ingest, idempotency, live state, a partition that lost its keys)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from redis.cluster import key_slot

from app.keys import Keys, partition_of
from tests.conftest import LiveServer
from tests.redis_servers import ClusterSet
from tests.test_transports_live import (  # noqa: F401  (fixtures and the suite, collected here on the cluster)
    Shared,
    http,
    pair,
    publish,
    server,
    test_channels_of_two_tenants_never_meet,
    test_cursor_at_the_head_never_resets_however_quiet_the_log,
    test_each_transport_delivers_the_contract_envelope,
    test_event_published_through_one_process_reaches_live_clients_of_another,
    test_expiry_ends_live_connections_unless_the_websocket_refreshes,
    test_malformed_cursor_is_a_client_error,
    test_query_tokens_and_tickets_never_reach_the_logs,
    test_resume_on_another_process_loses_nothing,
    test_slow_websocket_consumer_is_cut_off_and_resumes_without_loss,
    test_sse_and_poll_refuse_bad_tokens_and_channels,
    test_sse_last_event_id_header_alone_resumes,
    test_tickets_work_once,
    test_websocket_handshake_refuses_origins_not_listed,
    test_websocket_refuses_bad_tokens_with_4001,
    test_websocket_reports_bad_frames_and_stays_usable,
    two_servers,
)

PARTITIONS = "4"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSet]:
    with ClusterSet(tmp_path_factory.mktemp("cluster") / "nodes") as servers:
        yield servers


@pytest.fixture
def redis_url(cluster: ClusterSet) -> str:
    return cluster.url()


@pytest.fixture
def live_servers(live_servers: Callable[..., LiveServer], cluster: ClusterSet) -> Callable[..., LiveServer]:
    """conftest's `live_servers`, on the cluster unless a test asks for no Redis."""
    def start(*, redis: bool = True, **extra_env: str) -> LiveServer:
        on_cluster = {"REDIS_URL": cluster.url(), "REDIS_PARTITIONS": PARTITIONS} if redis else {}
        return live_servers(redis=False, **{**on_cluster, **extra_env})

    return start


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, cluster: ClusterSet) -> Iterator[Shared]:
    """Two default-configured server processes on the cluster (the cluster goes with the module)."""
    with two_servers(tmp_path_factory, REDIS_URL=cluster.url(), REDIS_PARTITIONS=PARTITIONS) as servers:
        yield servers


async def test_these_servers_write_to_the_cluster_in_partitioned_keys(shared: Shared, cluster: ClusterSet,
                                                                      http: httpx.AsyncClient) -> None:
    """What makes the tests above a cluster run: the shared servers' log is in the cluster's tagged keys."""
    event_id = await publish(http, shared.a, "user:u1", {"where": "cluster"})
    log_key = Keys(shared.prefix, partitions=int(PARTITIONS)).log_of(partition_of("t1", int(PARTITIONS)))
    node = cluster.nodes[cluster.port_of_slot(key_slot(log_key.encode()))].client()
    try:
        assert event_id in {i.decode() for i, _ in node.xrevrange(log_key, count=10)}  # type: ignore[union-attr]
    finally:
        node.close()

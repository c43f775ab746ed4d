"""REDIS_PARTITIONS > 1 on one Redis (no Cluster): the hash-tagged layout, the same code paths as
on a Cluster but on the suite's local Redis. The event log's contract suite (tests/test_eventlog.py,
partition-aware) runs here with 3 partitions, and a hub fans out every partition's events to the
sessions of each tenant."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.core.hub import Hub
from app.eventlog.base import Event, EventLog
from app.settings import Settings
from tests.conftest import eventually
from tests.test_cluster import tenants_by_partition
from tests.test_eventlog import (  # noqa: F401  (fixtures and the contract suite, collected here with partitions)
    draft,
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
    test_redis_tail_skips_a_malformed_entry,
    test_same_channel_name_in_two_tenants_never_mixes,
    test_tail_yields_later_appends_in_order,
)

PARTITIONS = 3


@pytest.fixture
def engine_name() -> str:
    return "redis"


@pytest.fixture
def make_settings(tmp_path: Path, prefix: str) -> Callable[..., Settings]:
    from tests.conftest import TEST_SECRET

    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {"data_dir": tmp_path, "jwt_secret": TEST_SECRET, "redis_prefix": prefix,
                                     "redis_url": None, "database_url": None, "redis_partitions": PARTITIONS}
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return build


class Taker:
    """A subscriber that keeps what it is handed."""

    label = "test"

    def __init__(self, tenant: str) -> None:
        self.tenant, self.got, self.resets = tenant, [], 0  # type: ignore[var-annotated]

    def deliver(self, event: Event) -> bool:
        self.got.append(event.id)
        return True

    def fail(self) -> None:
        raise AssertionError("never fails")

    def reset(self) -> None:
        self.resets += 1


async def test_the_hub_follows_every_partition_and_keeps_a_position_in_each(redis_log: EventLog) -> None:
    log = redis_log
    assert log.partitions == PARTITIONS
    tenants = tenants_by_partition(PARTITIONS)
    hub = Hub(log)
    await hub.start()
    try:
        takers = {t: Taker(t) for t in tenants}
        for taker in takers.values():
            hub.add(taker, "user:u1")
        ids: dict[str, list[str]] = {t: [] for t in tenants}
        for n in range(5):
            for tenant in tenants:
                ids[tenant].append((await log.append(draft(tenant, "user:u1", {"n": n})))[0])
        await eventually(lambda: all(takers[t].got == ids[t] for t in tenants), 10)
        for tenant in tenants:  # where a new connection of each tenant starts: its partition's last event
            assert hub.position_of(tenant) == ids[tenant][-1]
            head, _ = await hub.bounds_of(tenant).read()
            assert head == ids[tenant][-1]
        assert hub.recent.capacity == 0  # the recent window assumes one order: off with partitions
    finally:
        await hub.stop()

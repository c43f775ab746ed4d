"""The Redis key layout, byte for byte: data already in Redis, workers' XADDs and operators' scripts
depend on these exact names, so a change here is a migration, not a refactor."""

from __future__ import annotations

from app.ingest import GROUP as INGEST_GROUP
from app.keys import Keys
from app.push.queue.redis import GROUP as PUSH_GROUP


def test_every_key_name_under_the_default_prefix() -> None:
    keys = Keys()
    assert keys.prefix == "rt"
    assert keys.log == "rt:log"
    assert keys.origin == "rt:origin"
    assert keys.channel("org_1", "analysis:a1") == "rt:ch:org_1:analysis:a1"
    assert keys.state("org_1", "analysis:a1") == "rt:state:org_1:analysis:a1"
    assert keys.idempotency("org_1", "job-7") == "rt:idem:org_1:job-7"
    assert keys.no_idempotency == "rt:idem:-"
    assert keys.cursor("org_1", "u1") == "rt:cursor:org_1:u1"
    assert keys.ticket("abc") == "rt:ticket:abc"
    assert keys.ingest == "rt:ingest"
    assert keys.ingest_rejected == "rt:ingest:rejected"
    assert keys.ingest_lease == "rt:ingest:lease"
    assert keys.presence("org_1", "board:b1") == "rt:presence:org_1:board:b1"
    assert keys.presence_since("org_1", "board:b1") == "rt:presence:org_1:board:b1:since"
    assert keys.presence_index == "rt:presence:index"
    assert keys.push == "rt:push"
    assert keys.push_delayed == "rt:push:delayed"
    assert (INGEST_GROUP, PUSH_GROUP) == ("realtime", "push")


def test_the_prefix_is_the_only_part_that_moves() -> None:
    keys = Keys("staging")
    assert (keys.log, keys.channel("t", "user:u"), keys.ingest, keys.push_delayed) == (
        "staging:log", "staging:ch:t:user:u", "staging:ingest", "staging:push:delayed")

"""Issue 12, item 5: small versions of the bench's `scale` and `storm` scenarios (bench/scale.py,
bench/swarm.py) against this service, on real Redis.

3,000 tabs (85% WebSocket, 10% SSE, 5% long-polling) on 3 server processes, two generator
processes, traffic through the ingest stream and HTTP with presence churn; then one server
process is SIGKILLed and its ~1,000 tabs resume on the other two with the browser client's
backoff. Checked: every event due to a tab arrived exactly once and in order (before and during
the storm), no 5xx, every victim resumed. Never a timing.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL


def test_scale_and_storm_deliver_every_due_event_exactly_once(redis_url: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_REDIS_URL", REDIS_URL)
    from bench import procstat
    from bench.scale import ScaleConf, ScaleRun
    from bench.scenarios import SCALE_OURS
    from bench.systems import Systems

    procstat.raise_nofile()
    systems = Systems(tmp_path)
    conf = ScaleConf(n=3000, processes=3, workers=2, ramp=[1.0], ramp_seconds=5, idle_seconds=2, seconds=10,
                     step_seconds=5, rate=300, churn=0.01, storm_seconds=60, settle_seconds=1, deadline=240)
    run_id = f"ci{uuid.uuid4().hex[:8]}"
    try:
        scale, storm = ScaleRun(systems, SCALE_OURS, conf, tmp_path, run_id, True, log=print).run()
        leftover = list(systems.redis.scan_iter(match=f"bench{run_id}:*", count=1000))
    finally:
        systems.close()
    assert leftover == [], "the run's Redis keys were not removed"

    assert scale["connect"]["connected"] == conf.n, scale["connect"]
    for rec in (scale, storm):
        acc = rec["accounting"]
        assert acc["due"] > 0
        assert acc["missing"] == 0, acc["missing_examples"]
        assert acc["duplicates_run"] == 0, acc["dup_examples"]
        assert acc["out_of_order_run"] == 0, acc["order_examples"]
        assert acc["foreign_run"] == 0
    assert scale["http_5xx"] == 0 and storm["http_5xx"] == 0, (scale["errors"], storm["http_status_refusals"])
    assert storm["victims"] >= conf.n // 4, storm["victims"]
    assert storm["unresumed"] == 0 and storm["resumed"] == storm["victims"], storm
    assert scale["ingest"].get("rejected", 0) == 0, scale["ingest"]
    assert scale["ingest_drainers"] == conf.drainers == 1  # the worker ingest went through `python -m app ingest`
    assert os.environ["BENCH_REDIS_URL"] == REDIS_URL

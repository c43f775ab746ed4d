"""`python -m bench.cluster_cost --smoke`: the one-Redis-against-the-cluster benchmark runs end to
end at tiny size and produces its numbers (issue 14).

Timings are not asserted (a second of load means nothing); only that the harness starts its own
Redis servers (one primary with its replica, and the six-node cluster), two service processes per
configuration, publishes, receives every acknowledged event on the other process, and reports the
operations of every node and where the partitions live. Three configurations (one of each engine,
and WAIT on one Redis) keep it well under a minute.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.redis_servers import redis_cli, redis_server

CONFIGS = ("redis-p1", "cluster-p12", "redis-p1-wait1")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_cluster_cost_smoke_measures_each_engine_and_the_spread(tmp_path: Path) -> None:
    redis_server()  # skip (CI: fail) without Debian's redis-server ...
    redis_cli()  # ... and redis-tools
    proc = subprocess.run([sys.executable, "-m", "bench.cluster_cost", "--smoke", "--configs", ",".join(CONFIGS),
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["skipped"] == {}
    runs = {run["config"]: run for run in result["runs"]}
    assert set(runs) == set(CONFIGS)
    for name, run in runs.items():
        throughput, latency = run["throughput"], run["latency"]
        assert throughput["acknowledged"] > 0 and throughput["errors"] == {}, name
        assert throughput["received"] == throughput["acknowledged"], name  # every acknowledged event reached its socket
        assert latency["received"] == latency["published"] > 0, name
        for value in (throughput["appends_per_s"], latency["p50_ms"], latency["p99_ms"], latency["answer_p99_ms"],
                      *throughput["cpu"].values()):
            assert _number(value), f"{name}: {value!r}"
        nodes = throughput["nodes"]
        assert len(nodes) == (6 if run["engine"] == "cluster" else 2), name
        assert sum(n["evalsha"] for n in nodes if n["role"] == "primary") >= throughput["acknowledged"], name
        assert sum(run["spread"]["publishes_per_partition"]) == throughput["acknowledged"], name
    per_primary = runs["cluster-p12"]["spread"]["per_primary"]
    assert len(per_primary) == 3  # 12 partitions reach all three primaries
    assert sorted(p for row in per_primary.values() for p in row["partitions"]) == list(range(12))
    assert (tmp_path / "summary.md").read_text().count("| cluster-p12 |") == 1

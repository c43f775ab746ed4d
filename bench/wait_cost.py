"""What REDIS_WAIT_REPLICAS costs an append: appends per second and append latency (p50, p99),
on a Sentinel set of one primary and one replica (tests/redis_servers.py starts one of its own
in a temporary directory, on free ports, and removes it afterwards), through the service's own
client and event log (`create_redis`, `RedisEventLog.append`), with WAIT 0 or WAIT N.

    python -m bench.wait_cost --wait-replicas 0 [--appends 20000] [--concurrency 32]
    python -m bench.wait_cost --wait-replicas 1 ...      # another run, minutes later

Each run measures one setting (run them apart, on a quiet machine: the replica, the Sentinels and
this process share its cores): a sequential pass (one append at a time: the latency of each, what
one publisher waits) and a concurrent pass (`--concurrency` appends in flight: the throughput a
busy server gets). `--url redis+sentinel://...` measures an existing set instead (keys under a
prefix of the run's own, deleted afterwards). One JSON line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.core.publish import prepare  # noqa: E402
from app.eventlog import create_event_log  # noqa: E402
from app.redis_client import create_redis  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench import local  # noqa: E402


async def measure(url: str, wait_replicas: int, appends: int, concurrency: int, prefix: str) -> dict[str, Any]:
    settings = Settings(redis_url=url, redis_prefix=prefix, redis_wait_replicas=wait_replicas, redis_wait_timeout_ms=1000,
                        redis_max_connections=max(concurrency * 2, 8), jwt_secret="wait-cost-bench-secret-wait-cost-bench",
                        data_dir=Path(tempfile.mkdtemp(prefix="wait-cost-")), database_url=None)  # type: ignore[call-arg]
    redis = create_redis(settings)
    assert redis is not None
    log = create_event_log(settings, redis)
    await log.start()
    drafts = [prepare("bench", f"repository:r{i % 100}", "bench.event", {"i": i, "pad": "x" * 200}, max_event_bytes=65536)
              for i in range(appends)]
    try:
        for draft in drafts[:200]:  # warm: the script loaded, connections made
            await log.append(draft)
        latencies: list[float] = []
        sequential = drafts[: max(appends // 4, 1)]
        started = time.perf_counter()
        for draft in sequential:
            begun = time.perf_counter()
            await log.append(draft)
            latencies.append(time.perf_counter() - begun)
        sequential_seconds = time.perf_counter() - started

        queue = list(drafts)
        concurrent_latencies: list[float] = []

        async def worker() -> None:
            while queue:
                draft = queue.pop()
                begun = time.perf_counter()
                await log.append(draft)
                concurrent_latencies.append(time.perf_counter() - begun)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        concurrent_seconds = time.perf_counter() - started
    finally:
        await local.delete_prefix(redis, prefix)
        await log.close()
        await redis.aclose()
    ms = 1000.0
    return {
        "wait_replicas": wait_replicas,
        "sequential_appends": len(sequential),
        "sequential_per_second": round(len(sequential) / sequential_seconds, 1),
        "latency_p50_ms": round(local.quantile(latencies, 0.50) * ms, 3),
        "latency_p99_ms": round(local.quantile(latencies, 0.99) * ms, 3),
        "latency_mean_ms": round(statistics.fmean(latencies) * ms, 3),
        "concurrency": concurrency,
        "concurrent_appends": appends,
        "concurrent_per_second": round(appends / concurrent_seconds, 1),
        "concurrent_p50_ms": round(local.quantile(concurrent_latencies, 0.50) * ms, 3),
        "concurrent_p99_ms": round(local.quantile(concurrent_latencies, 0.99) * ms, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait-replicas", type=int, required=True, help="REDIS_WAIT_REPLICAS for this run (0 or 1)")
    parser.add_argument("--appends", type=int, default=20_000, help="appends in the concurrent pass (a quarter of it sequential)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--url", help="an existing redis+sentinel:// (or redis://) set; default: start one")
    args = parser.parse_args()
    prefix = f"wait-cost-{os.getpid()}"
    if args.url:
        result = asyncio.run(measure(args.url, args.wait_replicas, args.appends, args.concurrency, prefix))
    else:
        from tests.redis_servers import SentinelSet

        with SentinelSet(Path(tempfile.mkdtemp(prefix="wait-cost-set-")) / "set") as servers:
            result = asyncio.run(measure(servers.url(), args.wait_replicas, args.appends, args.concurrency, prefix))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

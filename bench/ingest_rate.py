"""How fast a running server drains the ingest stream into the log (events/s), delivery aside.

Starts `python -m app serve` on Redis under a key prefix of its own, XADDs ENTRIES entries spread
over CHANNELS channels to `<prefix>:ingest` (what workers do), and times how long the log takes
to hold them all. Removes the server's keys afterwards.

    python -m bench.ingest_rate [--entries 50000] [--channels 1000] [--app-dir DIR]

`--app-dir` runs the server from another checkout (e.g. a git worktree of an older commit), to
compare before and after a change with the same harness.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from bench import local

ROOT = Path(__file__).resolve().parent.parent


async def _wait_for_group(redis: aioredis.Redis, stream: str, server: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """The server is draining once its consumer group exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        if await redis.exists(stream) and await redis.xinfo_groups(stream):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the server did not create its ingest consumer group in time")


async def _added(redis: aioredis.Redis, log_key: str) -> int:
    if not await redis.exists(log_key):
        return 0
    return int((await redis.xinfo_stream(log_key))["entries-added"])


async def measure(redis_url: str, prefix: str, entries: int, channels: int, app_dir: Path) -> dict[str, float]:
    redis = aioredis.Redis.from_url(redis_url)
    data_dir = tempfile.mkdtemp(prefix="ingest-rate-")
    env = {**os.environ, "REDIS_URL": redis_url, "REDIS_PREFIX": prefix, "DATA_DIR": data_dir,
           "JWT_SECRET": "ingest-rate-bench-secret-ingest-rate-bench", "PORT": str(local.free_port()), "HOST": "127.0.0.1"}
    env.pop("DATABASE_URL", None)
    server = local.serve(app_dir, env)
    try:
        stream, log_key = f"{prefix}:ingest", f"{prefix}:log"
        await _wait_for_group(redis, stream, server)
        start_count = await _added(redis, log_key)
        started = time.perf_counter()
        for offset in range(0, entries, 1000):
            async with redis.pipeline(transaction=False) as pipe:
                for i in range(offset, min(offset + 1000, entries)):
                    pipe.xadd(stream, {"tenant": "bench", "channel": f"bench:c{i % channels}", "type": "bench.tick",
                                       "data": b'{"i":%d}' % i})
                await pipe.execute()
        published = time.perf_counter() - started
        while (await _added(redis, log_key)) - start_count < entries:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with {server.returncode}")
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        # seconds: from the first XADD until the log holds every entry; lag: after the last XADD
        return {"entries": entries, "xadd_seconds": round(published, 3), "seconds": round(elapsed, 3),
                "lag_seconds": round(elapsed - published, 3), "events_per_second": round(entries / elapsed)}
    finally:
        local.stop(server)
        await local.delete_prefix(redis, prefix)
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--prefix", default=f"ingest-rate-{os.getpid()}")
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--channels", type=int, default=1_000)
    parser.add_argument("--app-dir", type=Path, default=ROOT)
    args = parser.parse_args()
    result = asyncio.run(measure(args.redis_url, args.prefix, args.entries, args.channels, args.app_dir.resolve()))
    print(" ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()

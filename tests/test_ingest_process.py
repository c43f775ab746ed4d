"""`python -m app ingest`: the worker ingest drained by a process that serves no connections,
next to serving processes with INGEST_DRAIN=false (what the scale benchmark runs at 100,000)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import redis as sync_redis
from forge_publisher import publish

from tests.conftest import REDIS_URL, ROOT, TEST_SECRET, LiveServer, eventually, free_port, token
from tests.live_support import WS


def start_ingest(tmp_path: Path, prefix: str, metrics_port: int, *, redis: bool = True) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update({"DATA_DIR": str(tmp_path), "JWT_SECRET": TEST_SECRET, "REDIS_PREFIX": prefix})
    if redis:
        env["REDIS_URL"] = REDIS_URL
    return subprocess.Popen([sys.executable, "-m", "app", "ingest", "--metrics-port", str(metrics_port), "--host", "127.0.0.1"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


async def test_a_serving_process_with_ingest_drain_off_leaves_the_stream_to_an_ingest_process(
    live_servers: Callable[..., LiveServer], redis_url: str, prefix: str, tmp_path: Path
) -> None:
    server = live_servers(INGEST_DRAIN="false")
    worker = sync_redis.Redis.from_url(redis_url)
    lease, stream = f"{prefix}:ingest:lease", f"{prefix}:ingest"
    async with await WS.connect(server.ws_url, token("u1", "t1", channels=["analysis:*"]), channels="analysis:a1") as ws:
        await ws.subscribed({"user:u1", "tenant:t1", "analysis:a1"})
        publish(worker, "t1", "analysis:a1", "analysis.progress", {"analysisId": "a1", "progress": 10}, prefix=prefix)
        await asyncio.sleep(1.0)  # a draining server would have taken the lease at startup and read the entry by now
        assert worker.get(lease) is None
        assert worker.xlen(stream) == 1
        assert ws.frames.empty()

        metrics_port = free_port()
        drainer = start_ingest(tmp_path, prefix, metrics_port)
        try:
            first = await ws.events(1)  # read by the drainer, appended, tailed and sent by the server
            assert (first[0]["type"], first[0]["data"]["progress"]) == ("analysis.progress", 10)
            publish(worker, "t1", "analysis:a1", "analysis.progress", {"analysisId": "a1", "progress": 20}, prefix=prefix)
            second = await ws.events(1)
            assert second[0]["data"]["progress"] == 20 and second[0]["id"] > first[0]["id"]
            assert worker.get(lease) is not None
            await eventually(lambda: worker.xlen(stream) == 0)  # acknowledged and deleted (just after the append)

            metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            assert 'realtime_events_published_total{source="ingest"} 2.0' in metrics

            drainer.send_signal(signal.SIGTERM)
            output, _ = drainer.communicate(timeout=15)
            assert drainer.returncode == 0, output.decode()
            assert worker.get(lease) is None  # given up at once: another drainer takes over without waiting it out
        finally:
            if drainer.poll() is None:
                drainer.kill()
                drainer.wait()


def test_the_ingest_command_refuses_to_start_without_redis(tmp_path: Path, prefix: str) -> None:
    drainer = start_ingest(tmp_path, prefix, free_port(), redis=False)
    output, _ = drainer.communicate(timeout=30)
    assert drainer.returncode != 0
    assert b"needs REDIS_URL" in output


"""One local `python -m app serve` for the focused benchmarks (ingest_rate, notify_latency,
tracing_cost): started from a checkout (`--app-dir`: a worktree of another commit, to compare
before and after with one harness), waited for, stopped, and its Redis keys removed."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis.asyncio as aioredis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def serve(app_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Migrate, then serve (`env` holds the settings: PORT, HOST, REDIS_URL, ...)."""
    subprocess.run([sys.executable, "-m", "app", "migrate"], cwd=app_dir, env=env, check=True, capture_output=True)
    return subprocess.Popen([sys.executable, "-m", "app", "serve", "--log-level", "warning"], cwd=app_dir, env=env)


async def answering(http: httpx.AsyncClient, server: subprocess.Popen[bytes], path: str = "/healthz",
                    timeout: float = 30) -> None:
    """Until `path` answers 200; raises when the server exits first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if (await http.get(path)).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            raise RuntimeError(f"the server did not answer {path} with 200")
        await asyncio.sleep(0.1)


def stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a drain), then SIGKILL after 20 s."""
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


async def delete_prefix(redis: aioredis.Redis, prefix: str) -> None:
    keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=1000)]
    for i in range(0, len(keys), 1000):
        await redis.delete(*keys[i : i + 1000])

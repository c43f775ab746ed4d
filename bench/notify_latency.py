"""How long a notification takes from `POST /v1/notifications` to the user's open WebSocket.

Starts `python -m app serve` on Redis (a key prefix of its own) and a Postgres database of its
own (created, migrated, dropped afterwards), opens one WebSocket as the user, then creates
NOTIFICATIONS notifications one at a time at RATE per second. For each: publish→receive (the POST
sent → the `notification.created` frame read) and the POST's own answer time. Several processes
of a sort the service would run are not needed here: this is the inbox's own path (transaction,
event, fan-out), which the outbox changed.

    python -m bench.notify_latency [--notifications 500] [--rate 50] [--app-dir DIR]

`--app-dir` runs the server from another checkout (a git worktree of an older commit), to compare
before and after with the same harness, minutes apart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import orjson
import redis.asyncio as aioredis
from sqlalchemy import NullPool, make_url, text
from sqlalchemy.ext.asyncio import create_async_engine
from websockets.asyncio.client import connect

from app.auth import mint_token
from app.settings import Settings
from bench import local

SECRET = "notify-latency-bench-secret-notify-latency"


async def _database(base_url: str) -> tuple[str, str]:
    name = f"bench_notify_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(base_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    return make_url(base_url).set(database=name).render_as_string(hide_password=False), name


async def _drop(base_url: str, name: str) -> None:
    admin = create_async_engine(base_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    async with admin.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


async def measure(redis_url: str, database_url: str, notifications: int, rate: float, app_dir: Path) -> dict[str, float]:
    prefix = f"notify-latency-{os.getpid()}"
    url, name = await _database(database_url)
    port = local.free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "REDIS_PREFIX": prefix, "DATABASE_URL": url,
           "DATA_DIR": tempfile.mkdtemp(prefix="notify-latency-"), "JWT_SECRET": SECRET, "PORT": str(port),
           "HOST": "127.0.0.1"}
    server = local.serve(app_dir, env)
    settings = Settings(jwt_secret=SECRET)
    user = mint_token(settings, user="u1", tenant="t1")
    service = mint_token(settings, user="bench", tenant="t1", scope="publish")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False) as http:
            await local.answering(http, server, "/readyz")
            async with connect(f"ws://127.0.0.1:{port}/v1/ws", additional_headers={"Authorization": f"Bearer {user}"},
                               proxy=None) as ws:
                received: dict[str, float] = {}
                subscribed = asyncio.Event()

                async def read() -> None:
                    async for raw in ws:
                        frame = orjson.loads(raw)
                        if frame.get("op") == "subscribed":
                            subscribed.set()
                        elif frame.get("type") == "notification.created":
                            received[frame["data"]["notification"]["title"]] = time.perf_counter()

                reader = asyncio.create_task(read())
                await asyncio.wait_for(subscribed.wait(), 10)
                sent: dict[str, float] = {}
                answered: list[float] = []
                for i in range(notifications):
                    title = f"n{i}"
                    sent[title] = time.perf_counter()
                    response = await http.post("/v1/notifications", headers={"Authorization": f"Bearer {service}"},
                                               json={"tenant": "t1", "user_id": "u1", "type": "bench.notification",
                                                     "title": title, "message": "latency"})
                    answered.append(time.perf_counter() - sent[title])
                    if response.status_code != 201:
                        raise RuntimeError(f"create answered {response.status_code}: {response.text}")
                    await asyncio.sleep(max(0.0, sent[title] + 1 / rate - time.perf_counter()))
                deadline = time.monotonic() + 30
                while len(received) < notifications and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                reader.cancel()
        latencies = [(received[t] - sent[t]) * 1000 for t in sent if t in received]
        return {"notifications": notifications, "received": len(latencies),
                "p50_ms": round(statistics.median(latencies), 2), "p99_ms": round(local.quantile(latencies, 0.99), 2),
                "max_ms": round(max(latencies), 2),
                "post_p50_ms": round(statistics.median(answered) * 1000, 2),
                "post_p99_ms": round(local.quantile(answered, 0.99) * 1000, 2)}
    finally:
        local.stop(server)
        redis = aioredis.Redis.from_url(redis_url)
        await local.delete_prefix(redis, prefix)
        await redis.aclose()
        await _drop(database_url, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL",
                                                                 "postgresql+asyncpg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--notifications", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--app-dir", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args()
    result = asyncio.run(measure(args.redis_url, args.database_url, args.notifications, args.rate, args.app_dir.resolve()))
    print(" ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()

"""What tracing (TRACING, app/tracing.py) costs the hot path: publish->receive and deliveries/s to
N WebSockets, with tracing off and on, and against an older checkout (before tracing existed).

Starts `python -m app serve` on Redis (a key prefix of its own, deleted afterwards), opens N
WebSockets subscribed to one channel, then:
- latency: EVENTS publishes over HTTP at RATE per second, each with a `traceparent` header (as a
  traced worker sends it); publish->receive is timed on one of the N sockets;
- burst: BURST publishes, 8 in flight, as fast as they go; deliveries/s = N x BURST / the time
  until every socket has them all.
For each phase, the server's CPU time (/proc) per delivered message. With `--tracing on` the
server exports over OTLP/HTTP to a receiver in this process that answers 200 and drops the spans
(the SDK's batching, encoding and sending are counted; a collector's own work is not).

    python -m bench.tracing_cost --tracing off|on [--connections 1000] [--events 300] [--rate 20]
                                 [--burst 300] [--app-dir DIR]

`--app-dir` runs the server from another checkout (a git worktree of the commit before tracing),
to compare with the same harness minutes apart. Run under the machine lock. One line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect

from app.auth import mint_token
from app.settings import Settings
from bench import local

SECRET = "tracing-cost-bench-secret-tracing-cost-bench"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that drops what it gets."""

    protocol_version = "HTTP/1.1"
    received = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).received += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _Socket:
    """One subscriber: counts event frames; the observer also notes when each id arrived."""

    def __init__(self, conn: ClientConnection, observe: bool) -> None:
        self.conn, self.observe = conn, observe
        self.count = 0
        self.arrived: dict[str, float] = {}
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.conn:
            text = raw if isinstance(raw, str) else raw.decode()
            if text.startswith('{"id"'):
                self.count += 1
                if self.observe:
                    self.arrived[text[7 : text.index('"', 7)]] = time.perf_counter()


async def measure(redis_url: str, tracing: bool, connections: int, events: int, rate: float, burst: int,
                  app_dir: Path) -> dict[str, Any]:
    prefix = f"tracing-cost-{os.getpid()}"
    port = local.free_port()
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    env = {**os.environ, "REDIS_URL": redis_url, "REDIS_PREFIX": prefix, "DATA_DIR": tempfile.mkdtemp(prefix="tracing-cost-"),
           "JWT_SECRET": SECRET, "PORT": str(port), "HOST": "127.0.0.1", "PUBLISH_PER_SECOND": "0",
           "TRACING": "true" if tracing else "false", "OTEL_SERVICE_NAME": "tracing-cost",
           "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}"}
    env.pop("DATABASE_URL", None)
    server = local.serve(app_dir, env)
    settings = Settings(jwt_secret=SECRET)
    user = mint_token(settings, user="u1", tenant="t1", channels=["job:*"])
    service = mint_token(settings, user="bench", tenant="t1", scope="publish")
    channel = f"job:{uuid.uuid4().hex[:8]}"
    headers = {"Authorization": f"Bearer {service}", "traceparent": TRACEPARENT}
    sockets: list[_Socket] = []
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False) as http:
            await local.answering(http, server, "/healthz")

            async def open_socket(i: int) -> _Socket:
                conn = await connect(f"ws://127.0.0.1:{port}/v1/ws?channels={channel}", proxy=None, open_timeout=60,
                                     additional_headers={"Authorization": f"Bearer {user}"}, max_queue=None)
                return _Socket(conn, observe=i == 0)

            for start in range(0, connections, 100):
                sockets += await asyncio.gather(*(open_socket(i) for i in range(start, min(start + 100, connections))))
            await asyncio.sleep(2)  # every subscription made (frames before the first event are not counted)

            async def publish(i: int) -> tuple[str, float]:
                sent = time.perf_counter()
                response = await http.post("/v1/events", headers=headers,
                                           json={"tenant": "t1", "channel": channel, "type": "bench.event", "data": {"i": i}})
                if response.status_code != 202:
                    raise RuntimeError(f"publish answered {response.status_code}: {response.text}")
                return response.json()["id"], sent

            async def delivered(total: int, timeout: float = 120) -> None:
                deadline = time.monotonic() + timeout
                while sum(s.count for s in sockets) < total:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{sum(s.count for s in sockets)} of {total} deliveries")
                    await asyncio.sleep(0.01)

            for i in range(20):  # warm up
                await publish(i)
            await delivered(20 * connections)
            for s in sockets:
                s.count = 0
            sockets[0].arrived.clear()

            # latency: at `rate`, timed on one socket
            cpu = _cpu_seconds(server.pid)
            sent: dict[str, float] = {}
            for i in range(events):
                event_id, at = await publish(i)
                sent[event_id] = at
                await asyncio.sleep(max(0.0, at + 1 / rate - time.perf_counter()))
            await delivered(events * connections)
            latency_cpu = _cpu_seconds(server.pid) - cpu
            latencies = [(sockets[0].arrived[e] - t) * 1000 for e, t in sent.items()]
            for s in sockets:
                s.count = 0

            # burst: 8 publishes in flight
            cpu, started = _cpu_seconds(server.pid), time.perf_counter()
            queue = iter(range(burst))

            async def publisher() -> None:
                for i in queue:
                    await publish(i)

            await asyncio.gather(*(publisher() for _ in range(8)))
            await delivered(burst * connections)
            elapsed = time.perf_counter() - started
            burst_cpu = _cpu_seconds(server.pid) - cpu
        return {"tracing": "on" if tracing else "off", "app": app_dir.name, "connections": connections,
                "p50_ms": round(statistics.median(latencies), 2), "p99_ms": round(local.quantile(latencies, 0.99), 2),
                "cpu_us_per_msg": round(latency_cpu / (events * connections) * 1e6, 2),
                "burst_msg_per_s": round(burst * connections / elapsed),
                "burst_cpu_us_per_msg": round(burst_cpu / (burst * connections) * 1e6, 2),
                "otlp_posts": _Sink.received}
    finally:
        for s in sockets:
            s.task.cancel()
            await s.conn.close()
        local.stop(server)
        sink.shutdown()
        redis = aioredis.Redis.from_url(redis_url)
        await local.delete_prefix(redis, prefix)
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--tracing", choices=["off", "on"], default="off")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--burst", type=int, default=300)
    parser.add_argument("--app-dir", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args()
    result = asyncio.run(measure(args.redis_url, args.tracing == "on", args.connections, args.events, args.rate, args.burst,
                                 args.app_dir.resolve()))
    print(" ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()

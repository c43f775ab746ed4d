"""python-socketio 5 (AsyncServer + AsyncRedisManager) on uvicorn: a system under test of `python -m bench`.

Clients connect with ?user=U&tenant=T and join rooms `user:U` and `tenant:T`. Publishing is
Redis-driven, as for the other systems: a backend XADDs `room R data <json>` to PUB_STREAM; every
process reads it in one consumer group and calls `sio.emit("event", data, room=R)`, which the
AsyncRedisManager hands to this process's sockets and publishes (Redis PUB/SUB) to the others.

    python bench/servers/pysocketio_server.py --port 3100
"""

from __future__ import annotations

import argparse
import asyncio
import os
from urllib.parse import parse_qs

import orjson
import redis.asyncio as aioredis
import socketio
import uvicorn

GROUP = "bench"


def build(redis_url: str, pub_stream: str, channel: str) -> socketio.ASGIApp:
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=socketio.AsyncRedisManager(redis_url, channel=channel),
                               cors_allowed_origins="*")

    @sio.event
    async def connect(sid: str, environ: dict, auth: object) -> None:
        q = parse_qs(environ.get("QUERY_STRING", ""))
        await sio.enter_room(sid, f"user:{q.get('user', ['-'])[0]}")
        await sio.enter_room(sid, f"tenant:{q.get('tenant', ['-'])[0]}")

    tasks: list[asyncio.Task] = []

    async def consume() -> None:
        r = aioredis.from_url(redis_url)
        consumer = f"py-{os.getpid()}"
        while True:
            try:
                response = await r.xreadgroup(GROUP, consumer, {pub_stream: ">"}, count=100, block=1000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep serving; the bench sees missing deliveries
                print("consume:", exc, flush=True)
                await asyncio.sleep(0.2)
                continue
            for _stream, entries in response or ():
                ids = []
                for entry_id, fields in entries:
                    await sio.emit("event", orjson.loads(fields[b"data"]), room=fields[b"room"].decode())
                    ids.append(entry_id)
                if ids:
                    await r.xack(pub_stream, GROUP, *ids)
                    await r.xdel(pub_stream, *ids)

    async def startup() -> None:
        r = aioredis.from_url(redis_url)
        try:
            await r.xgroup_create(pub_stream, GROUP, id="0", mkstream=True)
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        await r.aclose()
        tasks.append(asyncio.create_task(consume()))

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()

    async def healthz(scope: dict, receive: object, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        ok = scope["path"] == "/healthz"
        await send({"type": "http.response.start", "status": 200 if ok else 404, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok" if ok else b"not found"})

    return socketio.ASGIApp(sio, other_asgi_app=healthz, on_startup=startup, on_shutdown=shutdown)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3100)
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--pub-stream", default=os.environ.get("PUB_STREAM", "bench-pysio:pub"))
    p.add_argument("--channel", default=os.environ.get("PYSIO_CHANNEL", "bench-pysio"))
    args = p.parse_args()
    app = build(args.redis_url, args.pub_stream, args.channel)
    # the same uvicorn settings as our service's `serve` (websockets-sansio, no compression, no access log)
    uvicorn.run(app, host=args.host, port=args.port, ws="websockets-sansio", ws_per_message_deflate=False,
                access_log=False, log_level="warning", timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()

"""`python -m app <command>`: serve, drain the worker ingest, migrate, mint a development token, publish an event,
make a VAPID key."""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from contextlib import AsyncExitStack
from types import FrameType
from typing import TYPE_CHECKING

import orjson

from app.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI


def serve(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    from app import gc_tuning, logs
    from app.main import create_app
    from app.transports import direct

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, telling the app at signal time that it is draining. uvicorn itself only
        stops accepting, closes WebSockets (1012), then waits up to DRAIN_SECONDS for the other
        connections; the lifespan shutdown comes after that wait, too late to end a long-poll."""

        def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
            super().__init__(config)
            self.app = app
            self.loop: asyncio.AbstractEventLoop | None = None

        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            self.loop = asyncio.get_running_loop()  # signal handlers run on the main thread: this loop's
            await super().serve(sockets)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)  # should_exit (sse-starlette patches this to end its streams too)
            services = getattr(self.app.state, "services", None)  # None before startup: nothing to drain
            if services is not None and self.loop is not None:
                services.drain.begin_soon(self.loop)

    logs.configure(args.log_level.upper())
    gc_tuning.count_collections()
    app = create_app(settings)
    problem = direct.incompatibility()
    if problem is None:
        direct.record_write_path(True, f"uvicorn {uvicorn.__version__}" + (
            "; connections that negotiate permessage-deflate use ASGI" if settings.ws_compression else ""))
    else:
        direct.record_write_path(False, problem)
    config = uvicorn.Config(
        app,
        host=args.host or settings.host,
        port=args.port or settings.port,
        # uvicorn's websockets-sansio (it waits for the socket to drain: a stalled client cannot grow
        # our buffers), plus the direct frame writes the fan-out uses
        ws=direct.DirectWebSocketProtocol if problem is None else "websockets-sansio",
        http=direct.DirectHttpProtocol if problem is None else "httptools",  # plus direct writes of SSE events
        # direct: pings from one wheel per process (app.keepalive), not a timer per connection
        ws_ping_interval=None if problem is None else (settings.ws_ping_seconds or None),
        ws_per_message_deflate=settings.ws_compression,
        ws_max_size=settings.max_frame_bytes * 4,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=settings.drain_seconds,
        timeout_keep_alive=settings.http_keepalive_seconds,
    )
    server = DrainingServer(config, app)
    gc_tuning.tune(settings.gc_thresholds)
    server.run()
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE, as uvicorn.run exits


def ingest(settings: Settings, args: argparse.Namespace) -> None:
    """Drain the worker ingest stream into the log, serving no connections (until SIGTERM or SIGINT).

    Any serving process can drain (INGEST_DRAIN, one at a time through the lease), but one that
    holds thousands of connections gets a turn once per event-loop iteration, and under load its
    round trips set the drain rate. Run one or two of these next to processes with
    INGEST_DRAIN=false: the lease still lets one drain at a time, the others stand by.
    """
    import signal

    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from app import logs
    from app.eventlog import create_event_log
    from app.ingest import Ingest
    from app.redis_client import create_redis, keys_for
    from app.tracing import create as create_tracing

    logs.configure(args.log_level.upper())
    if not settings.redis_url:
        sys.exit("python -m app ingest needs REDIS_URL: the ingest stream is a Redis stream")
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.host or settings.host)

    async def run() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        async with AsyncExitStack() as stack:
            redis = create_redis(settings)
            assert redis is not None  # REDIS_URL is set
            stack.push_async_callback(redis.aclose)
            tracing = create_tracing(settings)  # TRACING: a publish span per entry drained
            if tracing is not None:
                stack.push_async_callback(asyncio.to_thread, tracing.shutdown)
            log = create_event_log(settings, redis)
            drainer = Ingest(redis, log, keys=keys_for(settings), max_event_bytes=settings.max_event_bytes,
                             claim_idle_ms=settings.ingest_claim_idle_ms, state_namespaces=settings.state_namespace_set,
                             tracing=tracing)
            try:
                await log.start()
                await drainer.start()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                sys.exit(f"python -m app ingest: Redis unreachable: {exc}")
            stack.push_async_callback(log.close)
            stack.push_async_callback(drainer.stop)  # stores what it read, then gives the lease up
            await stopping.wait()

    asyncio.run(run())


def migrate(settings: Settings, args: argparse.Namespace) -> None:
    from app import db, logs

    logs.configure()
    db.run_migrations(settings)


def token(settings: Settings, args: argparse.Namespace) -> None:
    from app.auth import mint_token

    print(mint_token(settings, user=args.sub, tenant=args.tid, ttl=args.ttl,
                     channels=args.channels.split(",") if args.channels else None, scope=args.scope))


def publish(settings: Settings, args: argparse.Namespace) -> None:
    """Publish through a running server's HTTP API with a freshly minted service token."""
    import httpx

    from app.auth import mint_token

    service = mint_token(settings, user="cli", tenant=args.tenant, ttl=60, scope="publish")
    body = {"tenant": args.tenant, "channel": args.channel, "type": args.type, "data": orjson.loads(args.data)}
    url = args.url or f"http://{settings.host}:{settings.port}"
    response = httpx.post(f"{url}/v1/events", json=body, headers={"Authorization": f"Bearer {service}"})
    print(response.text)
    if response.status_code >= 400:
        sys.exit(1)


def vapid(settings: Settings, args: argparse.Namespace) -> None:
    """A new Web Push key pair: set VAPID_PRIVATE_KEY to the first line; browsers get the second
    from GET /v1/push/vapid-public-key. Replacing a key in use invalidates every subscription."""
    from app.push.vapid import generate

    private, public = generate()
    print(f"VAPID_PRIVATE_KEY={private}")
    print(f"# public key (applicationServerKey): {public}")


def info(settings: Settings, args: argparse.Namespace) -> None:
    """The log's engine, head, floor (oldest resumable cursor) and configured retention (with
    REDIS_PARTITIONS > 1: each partition's head and floor as well)."""
    from app.eventlog import create_event_log
    from app.redis_client import create_redis

    async def read() -> dict[str, object]:
        async with AsyncExitStack() as stack:
            redis = create_redis(settings)
            if redis is not None:
                stack.push_async_callback(redis.aclose)
            log = create_event_log(settings, redis)
            await log.start()
            stack.push_async_callback(log.close)
            found: dict[str, object] = {"engine": type(log).__name__, "head": await log.head(),
                                        "floor": await log.floor(), "max_events": settings.log_max_events,
                                        "retention_seconds": settings.log_retention_seconds}
            if log.partitions > 1:  # head and floor above are partition 0's; each partition's too
                found["partitions"] = [{"head": await log.head(p), "floor": await log.floor(p)}
                                       for p in range(log.partitions)]
            return found

    print(orjson.dumps(asyncio.run(read()), option=orjson.OPT_INDENT_2).decode())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("serve", help="serve HTTP/WebSocket on HOST:PORT")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--log-level", default="info")
    p.set_defaults(run=serve)
    p = commands.add_parser("ingest", help="drain the worker ingest stream into the log, serving no connections")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on HOST:PORT")
    p.add_argument("--host", help="address for --metrics-port (default HOST)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(run=ingest)
    commands.add_parser("migrate", help="apply database migrations").set_defaults(run=migrate)
    p = commands.add_parser("token", help="mint an HS256 token signed with this service's secret")
    p.add_argument("--sub", default="demo-user")
    p.add_argument("--tid", default="demo-tenant")
    p.add_argument("--ttl", type=int, default=3600)
    p.add_argument("--channels", help="comma-separated patterns, e.g. 'repository:*,analysis:*'")
    p.add_argument("--scope", help="'publish' for a service token")
    p.set_defaults(run=token)
    p = commands.add_parser("publish", help="publish one event through a running server")
    p.add_argument("tenant")
    p.add_argument("channel")
    p.add_argument("type")
    p.add_argument("data", nargs="?", default="{}")
    p.add_argument("--url")
    p.set_defaults(run=publish)
    commands.add_parser("info", help="show the log's head, floor and retention").set_defaults(run=info)
    commands.add_parser("vapid", help="print a new VAPID key pair for Web Push").set_defaults(run=vapid)
    args = parser.parse_args(argv)
    args.run(Settings(), args)

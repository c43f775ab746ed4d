"""The app factory: builds the service's parts for one process and mounts every route."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.routing import request_response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from app import db, demo, faithful
from app.api import operators, presence, publish
from app.auth import TicketStore, TokenVerifier
from app.channels import Authorizer
from app.core.hub import Hub
from app.deps import Services
from app.errors import Busy, ServiceError
from app.eventlog import create_event_log
from app.ingest import Ingest
from app.limits import ConnectionSlots, RateLimiter, report_configured, retry_after_header
from app.logs import RequestLog
from app.notifications import api as notifications
from app.notifications.inbox import SnoozeClock
from app.notifications.outbox import Outbox, Relay
from app.presence import create_presence
from app.presence.tracker import PresenceTracker
from app.push import api as push
from app.push import vapid
from app.push.queue import create_push_queue
from app.push.sender import PushSender
from app.push.worker import PushWorker
from app.redis_client import BUSY_RETRY_AFTER, PoolReaper, create_redis, engine_failure, keys_for, pool_of
from app.settings import Settings
from app.tracing import Tracing
from app.tracing import create as create_tracing
from app.transports import LIMIT_RESPONSES, direct, poll, sse, ws

DESCRIPTION = """
Real-time delivery for Forge Factory: analysis progress, job status, notifications and presence,
over **WebSocket** (`/v1/ws`), **Server-Sent Events** (`/v1/sse`) or **long-polling** (`/v1/poll`),
all resuming from one event log without loss. Notifications are stored (`/v1/notifications`),
announced on `user:<id>` and pushed to closed tabs through Web Push (`/v1/push`). The wire
contract, including the WebSocket frames, is described in the README ("Wire protocol") and on each
route below; the WebSocket and SSE channels (every frame, event name, close code and error code) are
described in AsyncAPI 3 at [/asyncapi.yaml](/asyncapi.yaml).
"""


class RealtimeApp(FastAPI):
    """FastAPI, with the two routes a connection uses again and again served past the middleware
    and the router:
    - a WebSocket to /v1/ws goes straight to its endpoint (with the request log around it): the
      middleware's frames, and FastAPI's exit stack, would stay on every connection's stack for
      its whole life for nothing a WebSocket uses (CORS does not apply; the endpoint answers its
      own errors and checks Origin itself);
    - GET /v1/poll (a long-poll is one request per delivery) goes through the request log, CORS
      and the exception handlers only (`serve_polls_directly`): at 14,000 connections the rest of
      the stack, the router's matching above all, was half of a poll's CPU."""

    _websocket = RequestLog(ws.websocket_app)
    _poll: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == ws.PATH:
            scope["app"] = self
            await self._websocket(scope, receive, send)
            return
        if self._poll is not None and scope["type"] == "http" and scope["path"] == poll.PATH and scope["method"] == "GET":
            scope["app"] = self
            await self._poll(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def serve_polls_directly(self, cors: dict[str, Any]) -> None:
        """Once the exception handlers are registered: the same answers to every error as the
        full stack gives (a 500 from the Exception handler, the others by class)."""
        handlers = dict(self.exception_handlers)
        internal = handlers.pop(Exception)
        endpoint = ExceptionMiddleware(request_response(poll.poll_request), handlers=handlers)
        self._poll = RequestLog(ServerErrorMiddleware(CORSMiddleware(endpoint, **cors), handler=internal))


def create_app(settings: Settings | None = None, *, tracing: Tracing | None = None) -> RealtimeApp:
    """`tracing` (tests): spans to record instead of TRACING's (its owner shuts it down)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """Each part is started, then its stop is pushed on one exit stack: at shutdown, or when a
        later part fails to start, what started is stopped in reverse order (drain first)."""
        identity = vapid.load(settings)  # configuration errors before anything starts
        keys = keys_for(settings)
        async with AsyncExitStack() as stack:
            tracer = tracing
            if tracer is None:
                tracer = create_tracing(settings)  # None when TRACING is off
                if tracer is not None:  # stopped last: it exports the spans of the parts' last moments
                    stack.push_async_callback(asyncio.to_thread, tracer.shutdown)
            redis = create_redis(settings)  # the process's one pool; every part below borrows it
            if redis is not None:
                stack.push_async_callback(redis.aclose)
                pool = pool_of(redis)
                if pool is not None:  # one task per process closes idle connections after a burst
                    reaper = PoolReaper(pool, idle_seconds=settings.redis_pool_idle_seconds,
                                        keep_idle=settings.redis_pool_min_idle)
                    await reaper.start()
                    stack.push_async_callback(reaper.stop)
            event_log = create_event_log(settings, redis)
            await event_log.start()
            stack.push_async_callback(event_log.close)
            engine = db.create_engine(settings)
            stack.push_async_callback(engine.dispose)
            sessionmaker = db.sessionmaker(engine)
            authorizer = Authorizer(settings.authz_url, cache_seconds=settings.authz_cache_seconds,
                                    timeout=settings.authz_timeout_seconds)
            stack.push_async_callback(authorizer.close)
            if redis is not None and settings.ingest_drain:
                ingest = Ingest(redis, event_log, keys=keys, max_event_bytes=settings.max_event_bytes,
                                claim_idle_ms=settings.ingest_claim_idle_ms, state_namespaces=settings.state_namespace_set,
                                tracing=tracer)
                await ingest.start()
                stack.push_async_callback(ingest.stop)
            push_queue = create_push_queue(settings, redis)
            await push_queue.start()
            stack.push_async_callback(push_queue.close)
            sender = PushSender(identity, subject=settings.vapid_subject, timeout=settings.push_timeout_seconds)
            await sender.start()
            stack.push_async_callback(sender.close)
            pusher = PushWorker(push_queue, sender, sessionmaker, concurrency=settings.push_concurrency,
                                max_attempts=settings.push_max_attempts, retry_base_seconds=settings.push_retry_base_seconds,
                                retry_max_seconds=settings.push_retry_max_seconds)
            await pusher.start()
            stack.push_async_callback(pusher.stop)
            outbox = Outbox(event_log, push_queue, sessionmaker, tracing=tracer)
            stack.push_async_callback(outbox.close)
            relay = Relay(outbox, sessionmaker, poll_seconds=settings.outbox_poll_seconds,
                          lease_seconds=settings.outbox_lease_seconds, chores=[SnoozeClock(sessionmaker, outbox, settings)])
            await relay.start()
            stack.push_async_callback(relay.stop)
            hub = Hub(event_log, recent_events=settings.replay_memory_events, writes=direct.HELD, tracing=tracer)
            await hub.start()
            stack.push_async_callback(hub.stop)
            tracker = PresenceTracker(create_presence(settings, redis), event_log, namespaces=settings.presence_namespace_set,
                                      heartbeat_seconds=settings.presence_heartbeat_seconds)
            await tracker.start()
            stack.push_async_callback(tracker.stop)
            services = Services(
                settings=settings,
                log=event_log,
                hub=hub,
                verifier=TokenVerifier(settings),
                authorizer=authorizer,
                tickets=TicketStore(settings.ticket_ttl_seconds, redis=redis, keys=keys),
                engine=engine,
                db=sessionmaker,
                vapid=identity,
                push_queue=push_queue,
                outbox=outbox,
                presence=tracker,
                connections=ConnectionSlots(settings.max_connections),
                publish_rate=(RateLimiter(settings.publish_per_second, settings.publish_burst)
                              if settings.publish_per_second else None),
                tracing=tracer,
            )
            for wheel in services.keepalive.values():
                await wheel.start()
                stack.push_async_callback(wheel.stop)
            # pushed last, so it runs first: app.cli's server began it at SIGTERM already; other servers, here
            stack.callback(services.drain.begin)
            report_configured(settings)
            app.state.services = services
            yield

    # every route's parameters and parsed JSON body are checked before the schema validates them:
    # what cannot be stored or encoded faithfully is a 422 `unrepresentable_json`, never a 500
    app = RealtimeApp(title="Forge Factory real-time service", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                      dependencies=[Depends(faithful.guard)])
    cors: dict[str, Any] = {
        "allow_origins": settings.allowed_origins or ["*"],
        "allow_methods": ["GET", "POST", "PUT", "DELETE", "OPTIONS"],
        "allow_headers": ["Authorization", "Content-Type", "Last-Event-ID"],
        "expose_headers": ["Last-Event-ID", "X-Request-ID", "Retry-After"],
    }
    app.add_middleware(CORSMiddleware, **cors)
    app.add_middleware(RequestLog)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        headers: dict[str, str] = {}
        if exc.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if exc.retry_after is not None:
            headers["Retry-After"] = retry_after_header(exc.retry_after)
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    @app.exception_handler(TimeoutError)
    async def engine_failed(request: Request, exc: Exception) -> JSONResponse:
        """A retryable 503, like the database's, never a 500: `unavailable` when Redis is down or
        restarting, `busy` when this process's pool had no free connection in time or Redis
        answered too slowly (app.redis_client.engine_failure)."""
        error = engine_failure(exc) or Busy("the request timed out; retry shortly", retry_after=BUSY_RETRY_AFTER)
        return await service_error(request, error)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        """A bug: a named 500 (Starlette still logs the traceback), never a bare text page."""
        return JSONResponse({"code": "internal_error", "message": "the server failed this request"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"code": "invalid_request", "message": "request does not match the schema",
                             "errors": jsonable_encoder(exc.errors())}, status_code=422)

    app.serve_polls_directly(cors)

    for router in (publish.router, presence.router, sse.router, poll.router, ws.router, notifications.router, push.router,
                   operators.router):
        # the stream routes also document the limits they enforce (connections, subscriptions)
        app.include_router(router, responses=LIMIT_RESPONSES if router in (sse.router, poll.router) else None)
    # The demo page (static, built from clients/js) and its development-only helpers (DEMO_TOKENS).
    app.include_router(demo.router(settings))
    app.mount("/demo", StaticFiles(directory=demo.STATIC_DIR, html=True), name="demo")
    return app

"""Every knob of the service, read once from the environment (names are part of the contract)."""

from __future__ import annotations

import os
import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, PositiveInt, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.rules import TENANT_PATTERN


def write_secret_once(path: Path, content: bytes) -> None:
    """Create `path` (mode 0600) holding `content` unless it exists. Atomic: processes starting
    together all end up with the one file that won."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    draft.write_bytes(content)
    draft.chmod(0o600)
    try:
        os.link(draft, path)
    except FileExistsError:
        pass  # another process won the race; its file is the one
    finally:
        draft.unlink()


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


# The browsers' push services (Chrome and Chromium browsers: FCM; Firefox: Mozilla autopush;
# Safari: Apple; Edge on Windows: WNS, whose hosts vary, e.g. wns2-par02p.notify.windows.com).
DEFAULT_PUSH_ENDPOINTS = (
    "https://fcm.googleapis.com/,https://updates.push.services.mozilla.com/,"
    "https://web.push.apple.com/,https://*.notify.windows.com/"
)
_LOOPBACK = {"127.0.0.1", "localhost", "[::1]"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    http_keepalive_seconds: int = Field(
        5, ge=1, le=3600, description="How long an idle HTTP/1.1 connection stays open for its client's next request "
                                      "(uvicorn's timeout_keep_alive). A client that reuses a connection exactly as the "
                                      "server closes it gets a network error, so keep this above the idle timeout of "
                                      "whatever reuses connections: a proxy or load balancer (65 behind a 60 s one), "
                                      "or an HTTP client pool (httpx and aiohttp keep idle connections 5 s, requests "
                                      "longer).")
    data_dir: Path = Field(Path("var"), description="Where embedded defaults keep their files.")

    redis_url: str | None = Field(None, description="Redis engine; unset: the embedded in-process log.")
    redis_prefix: str = Field("rt", description="Prefix of every Redis key this service owns.")
    redis_max_connections: int = Field(200, ge=4, description="Connections per process; requests wait when all are busy.")
    redis_pool_timeout: float = Field(
        10.0, gt=0, description="How long a Redis call waits for a free pool connection before the request is answered "
                                "503 busy (counted as the limit redis_pool).")
    redis_socket_timeout: float = Field(
        5.0, ge=2, description="How long a Redis command waits for its reply (and a new connection to connect) before "
                               "the request is answered 503 busy; above the 1 s blocking reads of the tail and workers.")
    redis_pool_idle_seconds: float = Field(
        60.0, ge=0, description="An idle pool connection unused this long is closed (beyond REDIS_POOL_MIN_IDLE), so "
                                "the pool returns to its size at rest after a burst. 0 = never.")
    redis_pool_min_idle: int = Field(4, ge=0, description="Idle pool connections kept however long they sit unused.")
    redis_wait_replicas: int = Field(
        0, ge=0, description="Every append to the event log waits (Redis WAIT, on the same connection) until this many "
                             "replicas have it before the publish is acknowledged; fewer within REDIS_WAIT_TIMEOUT_MS: "
                             "503 not_replicated (stored on the primary; retry with the same idempotency key). "
                             "0 = acknowledged once the primary has it (a failover may then lose it: clients get reset).")
    redis_wait_timeout_ms: int = Field(
        500, ge=1, description="How long an append waits for REDIS_WAIT_REPLICAS replicas; below REDIS_SOCKET_TIMEOUT.")
    redis_partitions: int = Field(
        1, ge=1, le=1024, description="Partitions of the event log, by tenant (each a stream with its keys under one hash "
                                      "tag, so a Redis Cluster spreads them over its primaries). 1 = one log, today's "
                                      "key names; another count is another layout: every old cursor resumes with reset.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; unset: SQLite in DATA_DIR.")

    jwt_secret: str | None = Field(None, description="HS256 secret; unset: generated once into DATA_DIR.")
    metrics_token: str | None = Field(
        None, min_length=16, description="When set, GET /metrics answers only `Authorization: Bearer <it>` (Prometheus: "
                                         "`authorization: {credentials_file: ...}`); unset: open, for a port that only "
                                         "the scraper reaches.")
    jwt_algorithms: str = "HS256"
    jwt_public_key: str | None = None
    jwt_jwks_url: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_seconds: int = Field(5, ge=0, le=30)
    ticket_ttl_seconds: int = Field(30, ge=1, le=300)

    authz_url: str | None = None
    authz_cache_seconds: float = 30.0
    authz_timeout_seconds: float = 2.0

    cors_origins: str = ""

    log_max_events: int = Field(1_000_000, ge=1)
    log_retention_seconds: int = Field(24 * 3600, ge=1)
    max_event_bytes: int = Field(65536, ge=256)
    idempotency_seconds: int = 24 * 3600
    drain_seconds: int = Field(
        10, ge=1, description="On SIGTERM, how long the process waits for its connections to close before it cancels "
                              "them (uvicorn's graceful shutdown). Long-polls answer and SSE streams end at once, "
                              "WebSockets get 1012; give the orchestrator's stop timeout a few seconds more.")

    replay_batch: int = Field(500, ge=1, description="Events read from the log per replay round trip.")
    max_backlog: int = Field(10_000, ge=1, description="Queued events before a slow client is cut off.")
    replay_memory_events: int = Field(
        50_000, ge=0, description="The newest events each process keeps in memory (as its fan-out saw them), so that "
                                  "resumes from a recent cursor, a reconnect storm's above all, read no Redis and share "
                                  "one encoding. 0 = off.")
    max_frame_bytes: int = Field(65536, ge=128, description="Largest client frame accepted on WebSocket.")
    gc_thresholds: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        (50_000, 20, 100), description="Python's garbage collector under `serve` (app/gc_tuning.py): collect the youngest "
                                       "objects every N allocations, each older generation every M collections of the "
                                       "one below (JSON, e.g. [50000,20,100]; CPython's own: [700,10,10], which at "
                                       "14,000 connections spent a third of the loop in full collections). What exists "
                                       "once the app is built is frozen.")
    ws_compression: bool = Field(False, description="permessage-deflate; off: one zlib state per socket is costly.")
    ws_ping_seconds: float = Field(
        25.0, ge=0, description="WebSocket pings this often to a socket nothing else was written to meanwhile, from one "
                                "timer per process (app.keepalive): keeps proxies from closing idle sockets and lets "
                                "the kernel notice a vanished peer. 0 = none.")
    sse_ping_seconds: float = Field(15.0, ge=0, description="SSE keep-alive comments this often (as WS_PING_SECONDS). 0 = none.")
    sse_send_timeout: float = Field(30.0, description="A stream whose client accepts nothing this long is ended.")
    poll_max_timeout: float = 60.0
    poll_default_timeout: float = 25.0
    cursor_flush_seconds: float = 0.5

    # Operator-set limits (app.limits). Each refusal gives the client a named code and counts in
    # realtime_limit_hits_total{limit}. 0 = unlimited where a limit allows it.
    max_connections: int = Field(
        50_000, ge=0, description="Client connections one process holds (WebSocket, SSE and waiting long-polls together); "
                                  "past it: 503 too_many_connections, WebSocket close 1013. 0 = unlimited.")
    max_subscriptions: int = Field(
        200, ge=0, description="Channels one connection may hold, counting the automatic user: and tenant: ones; "
                               "past it: too_many_subscriptions. 0 = unlimited, else at least 2.")
    ws_messages_per_second: float = Field(
        50.0, ge=0, description="Frames per second a client may send on one WebSocket (token bucket); "
                                "past it: rate_limited error frames. 0 = unlimited.")
    ws_message_burst: int = Field(
        100, ge=1, description="Frames a WebSocket client may send at once before WS_MESSAGES_PER_SECOND applies; "
                               "twice this many refused in a row closes the socket (1008).")
    publish_per_second: float = Field(
        1000.0, ge=0, description="HTTP publishes per second per token (tenant and subject) on POST /v1/events and "
                                  "POST /v1/notifications; past it: 429 rate_limited. 0 = unlimited.")
    publish_burst: int = Field(2000, ge=1, description="Publishes one token may make at once before PUBLISH_PER_SECOND applies.")

    state_namespaces: str = Field("analysis,job", description="Namespaces whose channels keep live state.")
    presence_namespaces: str = Field("repository", description="Namespaces whose channels track presence.")
    presence_ttl_seconds: float = Field(30.0, gt=0, description="A dead process's users leave presence after this.")
    presence_heartbeat_seconds: float = Field(10.0, gt=0)

    ingest_claim_idle_ms: int = Field(30_000, description="Ingest entries idle this long are taken over.")
    ingest_drain: bool = Field(
        True, description="This serving process competes for the ingest lease (one process drains at a time). "
                          "False where `python -m app ingest` processes drain instead: a drainer that also holds "
                          "thousands of connections gets a turn once per event-loop iteration, so under load "
                          "its round trips, not Redis, set the drain rate.")

    tracing: bool = Field(
        False, description="OpenTelemetry spans (app/tracing.py, needs the `tracing` extra): a `publish` span per event "
                           "published (a child of the request's traceparent header or the ingest entry's traceparent "
                           "field), a `deliver` span per event per process linked to it; exported as the standard "
                           "OTEL_* variables say (OTLP/HTTP by default). Off: the tracing SDK is never loaded.")

    outbox_poll_seconds: float = Field(
        0.5, gt=0, le=10, description="How often the outbox relay's holder publishes what writers left behind "
                                      "(Redis away, a process killed after its commit) and releases due snoozes.")
    outbox_lease_seconds: float = Field(5.0, gt=0, description="A relay that stops renewing its lease this long is replaced.")

    notification_critical_categories: str = Field(
        "", description="Comma-separated categories users cannot opt out of (e.g. 'security,billing').")

    vapid_private_key: str | None = Field(
        None, description="Web Push identity (raw base64url, DER or PEM); unset: generated once into DATA_DIR.")
    vapid_subject: str = Field("mailto:webpush@localhost", description="VAPID `sub`: a mailto: or https: contact.")
    push_allowed_endpoints: str = Field(
        DEFAULT_PUSH_ENDPOINTS, description="URL prefixes a push subscription's endpoint must start with.")
    push_ttl_seconds: int = Field(86_400, ge=0, le=28 * 86_400, description="How long a push service keeps an undelivered push.")
    push_urgency: Literal["very-low", "low", "normal", "high"] = "normal"
    push_max_attempts: int = Field(5, ge=1, description="Sends of one push before it is given up (429, 5xx, network).")
    push_retry_base_seconds: float = Field(2.0, gt=0, description="First retry delay; doubles per attempt.")
    push_retry_max_seconds: float = Field(600.0, gt=0, description="Longest backoff without a Retry-After.")
    push_timeout_seconds: float = Field(10.0, gt=0)
    push_concurrency: int = Field(16, ge=1, description="Pushes one process sends at once.")
    push_claim_idle_ms: int = Field(60_000, ge=1, description="A push left pending this long is taken over.")

    demo_tokens: bool | None = Field(
        None, description="Development-only /demo/token and /demo/publish (sign in as anyone, publish samples): "
                          "unset: on only while JWT_SECRET is unset (the generated development secret). Never in production.")
    demo_tenant: str = Field("demo", pattern=TENANT_PATTERN.pattern, description="The tenant demo users belong to.")
    demo_token_ttl_seconds: int = Field(300, ge=30, le=86_400, description="Lifetime of a demo sign-in token.")

    @field_validator("jwt_algorithms")
    @classmethod
    def _known_algorithms(cls, value: str) -> str:
        allowed = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"}
        algorithms = _split(value)
        unknown = set(algorithms) - allowed
        if not algorithms or unknown:
            raise ValueError(f"JWT_ALGORITHMS must name some of {sorted(allowed)}; got {value!r}")
        return value

    @field_validator("vapid_subject")
    @classmethod
    def _contact(cls, value: str) -> str:
        if not value.startswith(("mailto:", "https://")):
            raise ValueError("VAPID_SUBJECT must be a mailto: or https:// contact (RFC 8292)")
        return value

    @field_validator("push_allowed_endpoints")
    @classmethod
    def _https_or_loopback(cls, value: str) -> str:
        for prefix in _split(value):
            parts = urlsplit(prefix)
            if parts.scheme == "https" and parts.netloc:
                continue
            if parts.scheme == "http" and parts.netloc.rsplit(":", 1)[0] in _LOOPBACK:
                continue  # a loopback fake push service, only when configured explicitly (tests)
            raise ValueError(f"PUSH_ALLOWED_ENDPOINTS: {prefix!r} must be https:// (or http:// on loopback)")
        return value

    @field_validator("max_subscriptions")
    @classmethod
    def _room_for_automatic_channels(cls, value: int) -> int:
        if value == 1:
            raise ValueError("MAX_SUBSCRIPTIONS must be 0 (unlimited) or at least 2: user: and tenant: are joined automatically")
        return value

    @model_validator(mode="after")
    def _wait_within_a_reply(self) -> Settings:
        # WAIT blocks the connection: its reply must come before the client gives up on it
        if self.redis_wait_replicas and self.redis_wait_timeout_ms >= self.redis_socket_timeout * 1000:
            raise ValueError("REDIS_WAIT_TIMEOUT_MS must be below REDIS_SOCKET_TIMEOUT (in ms)")
        return self

    @model_validator(mode="after")
    def _claim_outlasts_a_send(self) -> Settings:
        # a push still being sent must not be taken over by another worker: it would go out twice
        if self.push_claim_idle_ms < 2000 * self.push_timeout_seconds:
            raise ValueError("PUSH_CLAIM_IDLE_MS must be at least twice PUSH_TIMEOUT_SECONDS (in ms)")
        return self

    @cached_property
    def push_endpoint_prefixes(self) -> list[str]:
        return _split(self.push_allowed_endpoints)

    @cached_property
    def critical_categories(self) -> frozenset[str]:
        return frozenset(_split(self.notification_critical_categories))

    @property
    def demo_enabled(self) -> bool:
        """The /demo helpers mint HS256 tokens with the service's own secret: only in development."""
        wanted = self.demo_tokens if self.demo_tokens is not None else self.jwt_secret is None
        return wanted and "HS256" in self.algorithms

    @cached_property
    def algorithms(self) -> list[str]:
        return _split(self.jwt_algorithms)

    @cached_property
    def state_namespace_set(self) -> frozenset[str]:
        return frozenset(_split(self.state_namespaces))

    @cached_property
    def presence_namespace_set(self) -> frozenset[str]:
        return frozenset(_split(self.presence_namespaces))

    @cached_property
    def allowed_origins(self) -> list[str]:
        return _split(self.cors_origins)

    @cached_property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'realtime.db'}"

    def hs_secret(self) -> str:
        """The HMAC secret; in development one is generated once and kept in DATA_DIR."""
        if self.jwt_secret:
            return self.jwt_secret
        path = self.data_dir / "jwt-secret"
        write_secret_once(path, secrets.token_urlsafe(48).encode())
        return path.read_text().strip()

"""HTTP routes in-process (both engines): publishing rules, auth, polling, operators; and /readyz of a
live server whose Redis goes away and comes back."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as sync_redis
from redis.exceptions import ConnectionError as RedisConnectionError

from app.settings import Settings
from tests.conftest import LiveServer, auth, eventually, free_port, running_app, service_token, skip_unless_ci, token

EVENT = {"tenant": "t1", "channel": "analysis:a1", "type": "analysis.progress", "data": {"progress": 1}}


async def test_publish_needs_a_service_token(settings: Settings) -> None:
    async with running_app(settings) as (_, client):
        assert (await client.post("/v1/events", json=EVENT)).status_code == 401
        assert (await client.post("/v1/events", json=EVENT, headers=auth("not-a-jwt"))).status_code == 401
        response = await client.post("/v1/events", json=EVENT, headers=auth(token()))
        assert response.status_code == 403 and response.json()["code"] == "forbidden"
        response = await client.post("/v1/events", json=EVENT, headers=auth(service_token()))
        assert response.status_code == 202 and response.json()["id"]


METRICS_TOKEN = "m" * 12 + "-scrape-token"


async def test_metrics_answer_only_the_scraper_once_metrics_token_is_set(make_settings: Any) -> None:
    async with running_app(make_settings(metrics_token=METRICS_TOKEN)) as (_, client):
        for headers in ({}, auth("wrong-" + METRICS_TOKEN), auth(service_token()), {"Authorization": f"Basic {METRICS_TOKEN}"},
                        auth(METRICS_TOKEN[:-1]), auth(METRICS_TOKEN + "x")):
            refused = await client.get("/metrics", headers=headers)
            assert refused.status_code == 401 and refused.json()["code"] == "unauthorized", (headers, refused.text)
            assert refused.headers["www-authenticate"] == "Bearer" and "realtime_" not in refused.text
        scraped = await client.get("/metrics", headers=auth(METRICS_TOKEN))
        assert scraped.status_code == 200 and "realtime_connections" in scraped.text
        assert (await client.get("/healthz")).status_code == 200  # the probes stay open
    async with running_app(make_settings()) as (_, client):  # unset: open, as a scraper without credentials expects
        assert (await client.get("/metrics")).status_code == 200


def test_a_metrics_token_too_short_to_be_a_secret_is_refused_at_start(make_settings: Any) -> None:
    with pytest.raises(ValueError, match="metrics_token"):
        make_settings(metrics_token="short")


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"channel": "Not A Channel"}, 400, "bad_channel"),
        ({"channel": "analysis:" + "x" * 129}, 400, "bad_channel"),
        ({"type": "has space"}, 400, "bad_channel"),
        ({"tenant": "t:1"}, 422, "invalid_event"),
        ({"data": [1, 2]}, 422, "invalid_request"),
        ({"data": {"blob": "x" * 70_000}}, 413, "event_too_large"),
    ],
)
async def test_publish_refuses_bad_events_clearly(settings: Settings, change: dict, status: int, code: str) -> None:
    async with running_app(settings) as (app, client):
        response = await client.post("/v1/events", json={**EVENT, **change}, headers=auth(service_token()))
        assert response.status_code == status, response.text
        assert response.json()["code"] == code
        assert await app.state.services.log.head() == "0-0"  # nothing was stored


async def test_idempotency_key_publishes_once(settings: Settings) -> None:
    async with running_app(settings) as (app, client):
        body = {**EVENT, "idempotency_key": "k1"}
        first = await client.post("/v1/events", json=body, headers=auth(service_token()))
        second = await client.post("/v1/events", json=body, headers=auth(service_token()))
        assert first.json()["id"] == second.json()["id"]
        log = app.state.services.log
        assert len(await log.read("t1", "analysis:a1", "0-0", await log.head(), 10)) == 1


async def test_poll_returns_missed_events_of_own_tenant_only(settings: Settings) -> None:
    async with running_app(settings) as (_, client):
        head = (await client.get("/v1/poll", params={"timeout": 0}, headers=auth(token()))).json()["cursor"]
        for tenant in ("t1", "t2"):
            for n in range(3):
                body = {**EVENT, "tenant": tenant, "channel": "board:r1", "type": "board.updated",
                        "data": {"n": n, "tenant": tenant}}
                assert (await client.post("/v1/events", json=body, headers=auth(service_token(tenant)))).status_code == 202
        reader = token("u2", "t2", channels=["board:*"])
        response = await client.get("/v1/poll", params={"channels": "board:r1", "since": head, "timeout": 0},
                                    headers=auth(reader))
        body = response.json()
        assert [e["data"] for e in body["events"]] == [{"n": n, "tenant": "t2"} for n in range(3)]
        assert body["cursor"] == body["events"][-1]["id"] and body["reset"] is False
        again = await client.get("/v1/poll", params={"channels": "board:r1", "since": body["cursor"], "timeout": 0},
                                 headers=auth(reader))
        assert again.json() == {"events": [], "cursor": body["cursor"], "reset": False}


async def test_poll_refuses_bad_requests(settings: Settings) -> None:
    async with running_app(settings) as (_, client):
        assert (await client.get("/v1/poll", params={"timeout": 0})).status_code == 401
        response = await client.get("/v1/poll", params={"since": "yesterday", "timeout": 0}, headers=auth(token()))
        assert response.status_code == 400 and response.json()["code"] == "bad_cursor"
        response = await client.get("/v1/poll", params={"channels": "repository:r1", "timeout": 0}, headers=auth(token()))
        assert response.status_code == 403 and response.json()["channel"] == "repository:r1"
        response = await client.get("/v1/poll", params={"channels": "user:someone-else", "timeout": 0}, headers=auth(token()))
        assert response.status_code == 403
        response = await client.get("/v1/poll", params={"channels": "UPPER:x", "timeout": 0}, headers=auth(token()))
        assert response.status_code == 400 and response.json()["code"] == "bad_channel"
        response = await client.get("/v1/poll", params={"timeout": 0}, headers=auth(token(ttl=-60)))
        assert response.status_code == 401 and response.json()["code"] == "token_expired"


async def test_sse_refuses_before_streaming(settings: Settings) -> None:
    async with running_app(settings) as (_, client):
        assert (await client.get("/v1/sse")).status_code == 401
        assert (await client.get("/v1/sse", params={"access_token": "x.y.z"})).status_code == 401
        response = await client.get("/v1/sse", params={"since": "1-2-3"}, headers=auth(token()))
        assert response.status_code == 400


async def test_ticket_works_once(settings: Settings) -> None:
    async with running_app(settings) as (_, client):
        assert (await client.post("/v1/tickets")).status_code == 401
        issued = (await client.post("/v1/tickets", headers=auth(token()))).json()
        assert issued["expires_in"] == settings.ticket_ttl_seconds
        first = await client.get("/v1/poll", params={"ticket": issued["ticket"], "timeout": 0})
        assert first.status_code == 200
        second = await client.get("/v1/poll", params={"ticket": issued["ticket"], "timeout": 0})
        assert second.status_code == 401


async def test_operator_routes(settings: Settings) -> None:
    async with running_app(settings) as (_, client):
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ok", "engine": "ok", "database": "ok"}
        await client.post("/v1/events", json=EVENT, headers=auth(service_token()))
        metrics = (await client.get("/metrics")).text
        assert 'realtime_events_published_total{source="http"}' in metrics
        paths = (await client.get("/openapi.json")).json()["paths"]
        for path in ("/v1/events", "/v1/tickets", "/v1/sse", "/v1/poll", "/v1/ws", "/healthz", "/readyz", "/metrics"):
            assert path in paths


async def test_readyz_reports_an_unreachable_engine(make_settings) -> None:
    settings = make_settings(redis_url="redis://127.0.0.1:1/0")
    from app.main import create_app

    app = create_app(settings)
    with pytest.raises(RedisConnectionError):  # the engine is required at start-up: no silent half-service
        async with app.router.lifespan_context(app):
            pass


async def test_cors_answers_for_configured_origins(make_settings) -> None:
    settings = make_settings(cors_origins="https://app.example")
    async with running_app(settings) as (_, client):
        preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET",
                     "Access-Control-Request-Headers": "authorization"}
        allowed = await client.options("/v1/poll", headers=preflight)
        assert allowed.headers.get("access-control-allow-origin") == "https://app.example"
        denied = await client.options("/v1/poll", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in denied.headers


async def test_plain_get_on_the_websocket_route_explains_itself(settings: Settings) -> None:
    async with running_app(settings) as (_, client):
        response = await client.get("/v1/ws")
        assert response.status_code == 426 and response.json()["code"] == "upgrade_required"


async def test_publish_answers_503_when_redis_goes_away(make_settings, redis_url: str) -> None:
    settings = make_settings(redis_url=redis_url)
    async with running_app(settings) as (app, client):
        pool = app.state.services.log.redis.connection_pool
        pool.connection_kwargs["port"] = 1  # nothing listens there: Redis is gone for this app
        await pool.disconnect()
        pool.reset()
        response = await client.post("/v1/events", json=EVENT, headers=auth(service_token()))
        assert response.status_code == 503 and response.json()["code"] == "unavailable"
        assert response.headers["retry-after"] == "1"


class OwnRedis:
    """A redis-server of this test's own on a free port (never the shared one: other tests use it),
    to be killed and started again on the same port."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tmp_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if shutil.which("redis-server") is None:
            skip_unless_ci("redis-server is not installed; install it to test Redis going away")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", str(self._dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                if sync_redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping():
                    return
            except sync_redis.ConnectionError:
                pass
            assert self.process.poll() is None, f"redis-server exited with {self.process.returncode}"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.kill()


async def test_readyz_answers_503_while_redis_is_away_and_200_once_it_is_back(
        own_redis: OwnRedis, live_servers: Callable[..., LiveServer]) -> None:
    server = live_servers(REDIS_URL=own_redis.url)
    async with httpx.AsyncClient(base_url=server.url, timeout=15, trust_env=False) as client:

        async def ready_is(status: int) -> httpx.Response | None:
            response = await client.get("/readyz")
            return response if response.status_code == status else None

        ready = await client.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ok", "engine": "ok", "database": "ok"})

        own_redis.kill()
        away = await eventually(lambda: ready_is(503), 15)
        assert isinstance(away, httpx.Response)
        body = away.json()
        # says which dependency is down: the engine, with the error's kind; the database is fine
        assert body["status"] == "unavailable" and body["database"] == "ok", body
        assert body["engine"].startswith("error: ") and len(body["engine"]) > len("error: "), body
        assert (await client.get("/healthz")).status_code == 200  # alive, just not ready

        own_redis.start()  # the same port: the process reconnects by itself
        back = await eventually(lambda: ready_is(200), 15)
        assert isinstance(back, httpx.Response)
        assert back.json() == {"status": "ok", "engine": "ok", "database": "ok"}


def _answer(sock: socket.socket) -> bytes:
    """One HTTP/1.1 response off the socket (head and Content-Length body); b"" if it was closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += sock.recv(4096)
    return head


def test_an_idle_connection_serves_its_next_request_until_http_keepalive_seconds(
        live_servers: Callable[..., LiveServer]) -> None:
    """Idle past uvicorn's own 5 s but within HTTP_KEEPALIVE_SECONDS, a connection still serves its
    client's next request (what a proxy reusing its upstream connections needs); idle past the
    setting, the service closes it."""
    server = live_servers(redis=False, HTTP_KEEPALIVE_SECONDS="8")
    request = b"GET /healthz HTTP/1.1\r\nHost: realtime\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(request)
        assert _answer(sock).startswith(b"HTTP/1.1 200")
        time.sleep(6)  # longer than uvicorn's default keep-alive (5 s), shorter than the setting
        sock.sendall(request)
        assert _answer(sock).startswith(b"HTTP/1.1 200"), "the service closed the idle connection too early"
        assert sock.recv(1) == b""  # and it does close it once idle longer than the setting

"""Shared fixtures: real Redis and Postgres on this machine, in-process apps and live servers.

Redis and Postgres are found at TEST_REDIS_URL / TEST_DATABASE_URL (defaults: the local
services). Where one is missing the tests that need it are skipped with the reason and how to
enable them; under CI=true a missing service fails the run instead.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Self

import httpx
import pytest
import redis as sync_redis

from app.auth import mint_token
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TEST_SECRET = "test-secret-for-the-suite-only-0123456789"
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"


def skip_unless_ci(message: str) -> None:
    """Skip with `message` (what is missing and how to enable it); under CI=true fail instead."""
    if IN_CI:
        pytest.fail(f"{message} (CI=true: nothing may skip)")
    pytest.skip(message)


def _unavailable(what: str, how: str) -> None:
    skip_unless_ci(f"{what} is not reachable; {how}")


_redis_ok: bool | None = None


@pytest.fixture(scope="session")
def redis_url() -> str:
    global _redis_ok
    if _redis_ok is None:
        try:
            sync_redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
            _redis_ok = True
        except Exception:
            _redis_ok = False
    if not _redis_ok:
        _unavailable(f"Redis at {REDIS_URL}", "start redis-server or set TEST_REDIS_URL")
    return REDIS_URL


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A key prefix of this test's own, deleted afterwards, so tests never see each other's keys."""
    value = f"test{uuid.uuid4().hex[:10]}"
    yield value
    if _redis_ok:
        delete_prefix(REDIS_URL, value)


def delete_prefix(redis_url: str, prefix: str) -> None:
    """Delete every key under `prefix` on the Redis at `redis_url`."""
    client = sync_redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()


@pytest.fixture(params=["memory", "redis"])
def engine_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_settings(tmp_path: Path, prefix: str) -> Callable[..., Settings]:
    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "data_dir": tmp_path,
            "jwt_secret": TEST_SECRET,
            "redis_prefix": prefix,
            "redis_url": None,
            "database_url": None,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return build


@pytest.fixture
def settings(engine_name: str, make_settings: Callable[..., Settings], request: pytest.FixtureRequest) -> Settings:
    """Settings for the parametrized engine (memory, or the local Redis)."""
    if engine_name == "redis":
        return make_settings(redis_url=request.getfixturevalue("redis_url"))
    return make_settings()


# a token minted at import (a module's constant) must outlive the whole suite (CI allows 90 min)
IMPORT_TTL = 2 * 3600


def token(sub: str = "u1", tid: str = "t1", *, ttl: int = 600, channels: list[str] | None = None, scope: str | None = None,
          settings: Settings | None = None) -> str:
    return mint_token(settings or Settings(jwt_secret=TEST_SECRET), user=sub, tenant=tid, ttl=ttl, channels=channels, scope=scope)


def service_token(tid: str = "t1", *, ttl: int = 600) -> str:
    return token("worker", tid, ttl=ttl, scope="publish")


def auth(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[object, httpx.AsyncClient]]:
    """The app with its lifespan run, and an in-process HTTP client."""
    from app.main import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield app, client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The tests' HTTP clients (httpx) keep idle connections 5 s, as long as uvicorn's default: a request
# sent on one as the server closes it fails (httpx.ReadError). Longer on the server, as the README
# says for any client pool or proxy in front (HTTP_KEEPALIVE_SECONDS); a test may set its own.
LIVE_KEEPALIVE_SECONDS = "30"


class LiveServer:
    """`python -m app serve` in a subprocess: real sockets, real uvicorn."""

    def __init__(self, env: dict[str, str], port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        self._env = {"HTTP_KEEPALIVE_SECONDS": LIVE_KEEPALIVE_SECONDS, **env}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(env["DATA_DIR"]) / f"server-{port}.log"

    start_timeout = 20.0

    def command(self) -> list[str]:
        return [sys.executable, "-m", "app", "serve", "--port", str(self.port)]

    def start(self) -> Self:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - the server's output for its whole life; stop() closes it
        self.process = subprocess.Popen(self.command(), cwd=ROOT, env=self._env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not start:\n{self.log_path.read_text()}")

    def stop(self, kill: bool = False) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill() if kill else self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if getattr(self, "_log", None):
            self._log.close()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def live_servers(tmp_path: Path, prefix: str) -> Iterator[Callable[..., LiveServer]]:
    """Start servers: `start(redis=True, **env)`; every server started is stopped afterwards."""
    started: list[LiveServer] = []

    def start(*, redis: bool = True, **extra_env: str) -> LiveServer:
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        env.update({"DATA_DIR": str(tmp_path), "JWT_SECRET": TEST_SECRET, "REDIS_PREFIX": prefix})
        if redis:
            env["REDIS_URL"] = REDIS_URL
        env.update(extra_env)
        server = LiveServer(env, free_port()).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def live_server(live_servers: Callable[..., LiveServer], redis_url: str) -> LiveServer:
    return live_servers()


async def eventually(check: Callable[[], object], timeout: float = 5.0, interval: float = 0.02) -> object:
    """Poll `check` until it returns something truthy (for asynchronous effects, not timing)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------------------------
# under CI=true nothing may skip, whatever skipped it
# --------------------------------------------------------------------------------------------
# skip_unless_ci above fails the test it is called in; a skip from anywhere else (a skip or skipif
# marker, pytest.skip, pytest.importorskip, a third-party plugin, a module skipped at collection)
# would pass silently. These hooks collect every skip and fail the whole run under CI=true,
# listing them. An xfail stays an xfail.

_skipped_in_ci: list[tuple[str, str]] = []


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return str(longrepr[2])
    return str(longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        _skipped_in_ci.append((report.nodeid, _skip_reason(report)))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if IN_CI and report.skipped:
        _skipped_in_ci.append((report.nodeid, _skip_reason(report)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if IN_CI and _skipped_in_ci and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# Fault and consistency tests report what they counted (published against delivered, stored
# against announced): `counted("what", stored=..., announced=...)`. Printed after the run, so
# the counts are in the output of a passing run too.
_counted: list[tuple[str, str, dict[str, int | float | str]]] = []


@pytest.fixture
def counted(request: pytest.FixtureRequest) -> Callable[..., None]:
    def record(what: str, **counts: int | float | str) -> None:
        _counted.append((request.node.nodeid, what, counts))
    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _counted:
        terminalreporter.section("counts", sep="=")
        for nodeid, what, counts in _counted:
            figures = ", ".join(f"{name}={value}" for name, value in counts.items())
            terminalreporter.line(f"{nodeid}: {what}: {figures}")
    if IN_CI and _skipped_in_ci:
        terminalreporter.section("CI=true: nothing may skip", sep="=", red=True, bold=True)
        for nodeid, reason in _skipped_in_ci:
            terminalreporter.line(f"SKIPPED {nodeid}: {reason}", red=True)
        terminalreporter.line(f"{len(_skipped_in_ci)} skipped under CI=true, so the run fails: make what they need "
                              "available, or remove the skip", red=True)

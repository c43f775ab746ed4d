"""Faults, each with a count of events published against events delivered (issue 7).

- Redis goes away while clients are connected (a TCP proxy of the test's own is cut) and comes
  back: the server recovers by itself and the connected client gets every event published; Redis
  restarted empty (the log lost): the connected client and a client resuming with an old cursor
  get `{"op":"reset"}`, then live events, never silence.
- A server process killed (SIGKILL) under load: its clients resume on another process from their
  last id and receive every published event exactly once, in order.
- The database goes away (a proxy in front of Postgres is cut): notifications answer 503
  `unavailable` while publishing and WebSockets keep working; restored, they answer 200 by themselves.

The shared Redis and Postgres of this machine are never stopped: faults hit a throwaway
redis-server of the test's own and proxies the test controls. Every wait is for a condition (with a
deadline that only turns a hang into a failure); the one sleep holds an outage open, it times nothing.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as sync_redis

from tests.conftest import DATABASE_URL, LiveServer, auth, eventually, free_port, service_token, token
from tests.notify_support import migrate_and_empty, postgres_database
from tests.test_transports_live import WAIT, Closed, is_presence, publish, ws_open

OUTAGE_SECONDS = 2.0


# --------------------------------------------------------------------------------------------
# a TCP forwarder that can be cut and restored, and a redis-server of the test's own
# --------------------------------------------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target>, on an event loop in a thread of its own
    (the live servers' subprocess start-up blocks the test's loop). `cut()` stops listening and
    aborts every forwarded connection, as a dead host or a restart would; `restore()` listens again
    on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"proxy-{self.port}", daemon=True)
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=WAIT)

    def start(self) -> TcpProxy:
        self._thread.start()
        self.restore()
        return self

    def restore(self) -> None:
        self._call(self._listen())

    def cut(self) -> None:
        self._call(self._cut())

    def close(self) -> None:
        if self._thread.is_alive():
            self.cut()
            self._call(self._finish_forwarding())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(WAIT)
        self._loop.close()

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port, reuse_address=True)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    async def _finish_forwarding(self) -> None:
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _forward(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._transports.add(client_writer.transport)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.transport.abort()
            self._transports.discard(client_writer.transport)
            return
        self._transports.add(upstream_writer.transport)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                writer.transport.abort()

        await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))
        self._transports.discard(client_writer.transport)
        self._transports.discard(upstream_writer.transport)


class OwnRedis:
    """A throwaway redis-server (no persistence): `restart()` comes back empty, as a Redis that
    lost its data does."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OwnRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (the fault tests start one of their own)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--logfile", str(self.directory / f"redis-{self.port}.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = sync_redis.Redis(port=self.port, socket_connect_timeout=1)
        try:
            for _ in range(200):
                try:
                    if client.ping():
                        return self
                except sync_redis.ConnectionError:
                    if self.process.poll() is not None:
                        raise RuntimeError(f"redis-server exited with {self.process.returncode}") from None
                    threading.Event().wait(0.05)
            raise RuntimeError("redis-server did not answer")
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # no SHUTDOWN: nothing is saved, the data is gone
            self.process.wait(WAIT)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def proxies() -> Iterator[Any]:
    started: list[TcpProxy] = []

    def start(target_port: int) -> TcpProxy:
        proxy = TcpProxy(target_port).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    directory = tmp_path / "own-redis"
    directory.mkdir()
    server = OwnRedis(directory).start()
    yield server
    server.stop()


@pytest.fixture
async def http() -> Any:
    async with httpx.AsyncClient(timeout=httpx.Timeout(WAIT * 2, connect=5.0), trust_env=False) as client:
        yield client


async def try_publish(http: httpx.AsyncClient, server: LiveServer, channel: str, data: dict,
                      tenant: str = "t1") -> httpx.Response:
    return await http.post(f"{server.url}/v1/events", headers=auth(service_token(tenant)),
                           json={"tenant": tenant, "channel": channel, "type": "test.event", "data": data})


async def ready(http: httpx.AsyncClient, server: LiveServer) -> bool:
    response = await http.get(f"{server.url}/readyz")
    if response.status_code != 200:
        print(f"readyz: {response.status_code} {response.text}")
    return response.status_code == 200


# --------------------------------------------------------------------------------------------
# (a) Redis cut and restored, then restarted empty
# --------------------------------------------------------------------------------------------


async def test_redis_outage_recovers_by_itself_and_a_lost_log_resets_old_cursors(
        live_servers: Any, own_redis: OwnRedis, proxies: Any, http: httpx.AsyncClient) -> None:
    proxy = proxies(own_redis.port)
    server = live_servers(redis=False, REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0")
    published: list[str] = []
    refused = [0]  # publishes answered 503 while Redis was away (not published: not counted)
    async with await ws_open(server, "u1", "t1") as ws:
        for i in range(5):
            published.append(await publish(http, server, "user:u1", {"n": i}))
        delivered = [e["id"] for e in await ws.events(5)]

        proxy.cut()
        # publishing fails fast and retryably while Redis is away (never a 500, never a hang) ...
        async def refused_now() -> bool:
            response = await try_publish(http, server, "user:u1", {"n": "during"})
            assert response.status_code in (202, 503), response.text
            if response.status_code == 202:  # raced the cut: it was published, so it must arrive
                published.append(response.json()["id"])
                return False
            assert response.json()["code"] == "unavailable"
            return True

        await eventually(refused_now, timeout=WAIT)
        refused[0] += 1
        await asyncio.sleep(OUTAGE_SECONDS)  # the outage lasts a while (holds the fault; times nothing)
        response = await try_publish(http, server, "user:u1", {"n": "still down"})
        assert (response.status_code, response.json()["code"]) == (503, "unavailable")
        refused[0] += 1
        proxy.restore()

        # ... and recovers by itself: the same connection gets what is published afterwards
        async def accepted_now() -> bool:
            response = await try_publish(http, server, "user:u1", {"n": "after"})
            if response.status_code == 503:
                refused[0] += 1
                return False
            assert response.status_code == 202, response.text
            published.append(response.json()["id"])
            return True

        await eventually(accepted_now, timeout=WAIT)
        for i in range(5):
            published.append(await publish(http, server, "user:u1", {"n": f"after-{i}"}))
        delivered += [e["id"] for e in await ws.events(len(published) - len(delivered))]
        assert delivered == published, (len(published), len(delivered))
        await eventually(lambda: ready(http, server), timeout=WAIT)  # readiness comes back too

        # Redis loses everything (restarted empty): the live client is told (it may have missed what
        # was stored and not yet tailed when Redis died) and keeps receiving ...
        own_redis.restart()
        fresh: list[str] = []

        async def accepted_after_restart() -> bool:
            response = await try_publish(http, server, "user:u1", {"n": "after restart"})
            if response.status_code == 503:
                return False
            assert response.status_code == 202, response.text
            fresh.append(response.json()["id"])
            return True

        await eventually(accepted_after_restart, timeout=WAIT)
        assert await ws.next() == {"op": "reset"}
        assert [e["id"] for e in await ws.events(1)] == fresh

    # ... and a client resuming with a cursor from the lost log is told so, then goes on live
    async with await ws_open(server, "u1", "t1", since=published[0]) as resumed:
        assert await resumed.next() == {"op": "reset"}
        live = await publish(http, server, "user:u1", {"n": "live after reset"})
        assert [e["id"] for e in await resumed.events(1)] == [live]
    print(f"redis outage: published {len(published) + len(fresh) + 1}, delivered {len(delivered) + len(fresh) + 1}, "
          f"refused with 503 while down: {refused[0]}")


# --------------------------------------------------------------------------------------------
# (b) a server process killed under load
# --------------------------------------------------------------------------------------------


async def test_clients_of_a_killed_process_resume_on_another_with_every_event_once_in_order(
        live_servers: Any, redis_url: str, http: httpx.AsyncClient) -> None:
    a, b = live_servers(), live_servers()
    total, kill_after, clients = 300, 100, 4
    published: list[str] = []
    a_killed = asyncio.Event()
    reached_kill_point = asyncio.Event()

    async def publisher() -> None:
        # one at a time through B, so publishing order is id order (and A's death loses no request)
        for i in range(total):
            published.append(await publish(http, b, "tenant:t1", {"i": i}))
            if len(published) == kill_after:
                reached_kill_point.set()

    class Client:
        def __init__(self, user: str) -> None:
            self.user = user
            self.received: list[str] = []
            self.connections: list[str] = []

        async def run(self) -> None:
            tok = token(self.user, "t1")
            server = a
            ws = await ws_open(server, self.user, "t1", tok=tok)
            self.connections.append("a")
            try:
                while len(self.received) < total:
                    frame = await ws.next()
                    if isinstance(frame, Closed):
                        assert a_killed.is_set() and server is a, f"{self.user}: closed {frame!r} on {server.url}"
                        await ws.aclose()
                        server = b  # resume on the other process from the last id delivered
                        ws = await ws_open(server, self.user, "t1", tok=tok, since=self.received[-1] if self.received else None)
                        self.connections.append("b")
                        continue
                    assert isinstance(frame, dict), frame
                    assert frame.get("op") in (None, "subscribed"), f"{self.user}: {frame!r}"
                    if "op" not in frame and not is_presence(frame):
                        self.received.append(frame["id"])
            finally:
                await ws.aclose()

    users = [Client(f"load{i}") for i in range(clients)]
    readers = [asyncio.create_task(c.run()) for c in users]
    # every client is live before the first event, so each must get all of them
    await eventually(lambda: all(c.connections for c in users), timeout=WAIT)
    writing = asyncio.create_task(publisher())
    try:
        await asyncio.wait_for(reached_kill_point.wait(), WAIT * 4)
        a_killed.set()
        await asyncio.to_thread(a.stop, kill=True)  # SIGKILL while B keeps publishing
        await asyncio.wait_for(writing, WAIT * 4)
        await asyncio.wait_for(asyncio.gather(*readers), WAIT * 4)
    finally:
        for task in (writing, *readers):
            task.cancel()
        await asyncio.gather(writing, *readers, return_exceptions=True)

    assert len(published) == total and len(set(published)) == total
    for c in users:
        assert c.connections == ["a", "b"], (c.user, c.connections)
        assert c.received == published, (c.user, len(c.received), len(set(c.received)), total)
    print(f"killed under load: published {total}, delivered {[len(c.received) for c in users]} to {clients} clients")


# --------------------------------------------------------------------------------------------
# (c) the database stopped
# --------------------------------------------------------------------------------------------


async def test_database_outage_is_a_503_while_real_time_goes_on_and_recovers_by_itself(
        live_servers: Any, redis_url: str, proxies: Any, http: httpx.AsyncClient) -> None:
    from sqlalchemy.engine import make_url

    async with postgres_database() as url:
        await migrate_and_empty(url)
        target = make_url(url)
        proxy = proxies(target.port or 5432)
        through_proxy = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        assert through_proxy.startswith("postgresql+asyncpg://"), DATABASE_URL
        server = live_servers(DATABASE_URL=through_proxy)
        try:
            tok = token("u1", "t1")
            inbox = await http.get(f"{server.url}/v1/notifications", headers=auth(tok))
            assert inbox.status_code == 200, inbox.text
            published: list[str] = []
            async with await ws_open(server, "u1", "t1", tok=tok) as ws:
                proxy.cut()

                async def unavailable() -> bool:
                    response = await http.get(f"{server.url}/v1/notifications", headers=auth(tok))
                    assert response.status_code in (200, 503), response.text
                    return response.status_code == 503 and response.json()["code"] == "unavailable"

                await eventually(unavailable, timeout=WAIT)
                # while the database is away: publishing, a connected client and a new one all work
                for i in range(10):
                    published.append(await publish(http, server, "user:u1", {"i": i}))
                delivered = [e["id"] for e in await ws.events(len(published))]
                async with await ws_open(server, "u1", "t1", tok=tok, since=published[4]) as late:
                    assert [e["id"] for e in await late.events(5)] == published[5:]
                for path in ("/v1/notifications", "/v1/notifications/unread-count"):
                    response = await http.get(f"{server.url}{path}", headers=auth(tok))
                    assert (response.status_code, response.json()["code"]) == (503, "unavailable"), (path, response.text)
                readiness = await http.get(f"{server.url}/readyz")  # still ready: real-time is what it serves
                assert readiness.status_code == 200, readiness.text
                assert readiness.json()["status"] == "degraded" and readiness.json()["database"] != "ok", readiness.text
                assert (await http.get(f"{server.url}/healthz")).status_code == 200

                proxy.restore()

                async def available() -> bool:
                    response = await http.get(f"{server.url}/v1/notifications", headers=auth(tok))
                    assert response.status_code in (200, 503), response.text
                    return response.status_code == 200

                await eventually(available, timeout=WAIT)
                published.append(await publish(http, server, "user:u1", {"i": "after"}))
                delivered += [e["id"] for e in await ws.events(1)]
            assert delivered == published
            await eventually(lambda: ready(http, server), timeout=WAIT)
            print(f"database outage: published {len(published)}, delivered {len(delivered)}")
        finally:
            server.stop()

"""Graceful drain: on SIGTERM a process tells its WebSocket clients to reconnect elsewhere (close
1012, "service restart"), answers its waiting long-polls at once, ends SSE streams, answers
/readyz with 503, and exits within DRAIN_SECONDS; the clients resume on another process without
losing an event."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import h11
import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.settings import Settings
from tests.conftest import LiveServer, auth, eventually, running_app, service_token, token

WAIT = 15.0


async def publish(client: httpx.AsyncClient, url: str, n: int) -> str:
    response = await client.post(f"{url}/v1/events", headers=auth(service_token()),
                                 json={"tenant": "t1", "channel": "user:u1", "type": "drain.test", "data": {"n": n}})
    assert response.status_code == 202, response.text
    return response.json()["id"]


async def test_sigterm_sends_1012_and_clients_resume_elsewhere_without_loss(live_servers: Any, redis_url: str) -> None:
    a, b = live_servers(), live_servers()
    tok = token("u1", "t1")
    async with httpx.AsyncClient(timeout=WAIT) as http:
        ws = await connect(f"{a.ws_url}/v1/ws?access_token={tok}")
        # positioned once its channels are confirmed: what is published from then on is due to it
        assert {json.loads(await ws.recv())["op"] for _ in range(2)} == {"subscribed"}
        published = [await publish(http, b.url, n) for n in range(5)]
        seen: list[str] = []

        async def read_until_closed() -> None:
            try:
                while True:
                    frame = json.loads(await ws.recv())
                    if "id" in frame:
                        seen.append(frame["id"])
            except ConnectionClosed:
                return

        reader = asyncio.create_task(read_until_closed())
        await eventually(lambda: len(seen) >= 5, WAIT)
        a.stop()  # SIGTERM
        await asyncio.wait_for(reader, WAIT)
        assert ws.close_code == 1012, ws.close_code
        assert a.process is not None and a.process.returncode is not None  # it exited by itself

        published += [await publish(http, b.url, n) for n in range(5, 10)]
        async with connect(f"{b.ws_url}/v1/ws?access_token={tok}&since={seen[-1]}") as resumed:
            while len(seen) < len(published):
                frame = json.loads(await asyncio.wait_for(resumed.recv(), WAIT))
                if "id" in frame:
                    seen.append(frame["id"])
        assert seen == published


async def connections(http: httpx.AsyncClient, url: str, transport: str) -> float:
    """The server's `realtime_connections{transport=...}` gauge: a request counts once it is in its handler."""
    text = (await http.get(f"{url}/metrics")).text
    match = re.search(rf'^realtime_connections{{transport="{transport}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def poll_until(http: httpx.AsyncClient, url: str, tok: str, cursor: str, want: int) -> tuple[list[str], str]:
    """Long-poll from `cursor` until `want` events came; their ids and the cursor to continue from
    (a failure, not a hang, when they do not come)."""
    ids: list[str] = []
    deadline = time.monotonic() + WAIT * 2
    while len(ids) < want:
        assert time.monotonic() < deadline, f"only {len(ids)} of {want} events"
        response = await http.get(f"{url}/v1/poll", params={"since": cursor, "timeout": 5}, headers=auth(tok))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["reset"] is False
        ids += [event["id"] for event in body["events"]]
        cursor = body["cursor"]
    return ids, cursor


async def read_sse(http: httpx.AsyncClient, url: str, tok: str, seen: list[str], *, last_event_id: str) -> None:
    """Append every event id of one SSE stream to `seen`; returns when the server ends the stream."""
    headers = {**auth(tok), "Last-Event-ID": last_event_id}
    async with http.stream("GET", f"{url}/v1/sse", headers=headers) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                seen.append(line[4:])


async def test_sigterm_answers_waiting_long_polls_ends_sse_and_clients_resume_elsewhere_without_loss(
        live_servers: Any, redis_url: str) -> None:
    """DRAIN_SECONDS (60) and the poll's own wait (50 s) are both far above the exit asserted (20 s):
    without the drain signal the waiting long-poll would hold the process for its whole timeout."""
    poll_wait, exit_within = 50, 20.0
    a, b = live_servers(DRAIN_SECONDS="60", POLL_MAX_TIMEOUT=str(poll_wait)), live_servers()
    tok = token("u1", "t1")
    async with httpx.AsyncClient(timeout=poll_wait + 10) as http:
        start = (await http.get(f"{a.url}/v1/poll", params={"timeout": 0}, headers=auth(tok))).json()["cursor"]
        published = [await publish(http, b.url, n) for n in range(5)]

        polled, cursor = await poll_until(http, a.url, tok, start, len(published))
        sse_seen: list[str] = []
        sse = asyncio.create_task(read_sse(http, a.url, tok, sse_seen, last_event_id=start))
        await eventually(lambda: len(sse_seen) >= len(published), WAIT)
        waiting = asyncio.create_task(http.get(f"{a.url}/v1/poll", params={"since": cursor, "timeout": poll_wait},
                                               headers=auth(tok)))
        await eventually(lambda: connections(http, a.url, "poll"), WAIT)  # the long-poll is parked in A

        assert a.process is not None
        sigterm_at = time.monotonic()
        a.process.terminate()
        answer = await asyncio.wait_for(waiting, exit_within)
        await asyncio.wait_for(sse, exit_within)  # the stream ended (no exception: a clean end)
        returncode = await asyncio.to_thread(a.process.wait, exit_within)
        exited_after = time.monotonic() - sigterm_at

        # the waiting poll answered at once, empty, with the cursor to resume from
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"events": [], "cursor": cursor, "reset": False}
        # uvicorn re-raises the SIGTERM it caught once its graceful shutdown is done; nothing was cancelled
        assert returncode == -signal.SIGTERM, a.logs()
        assert "Application shutdown complete" in a.logs() and "graceful shutdown exceeded" not in a.logs()
        assert exited_after < exit_within, f"exited {exited_after:.1f} s after SIGTERM"

        # published while A was going away and after: both clients resume on B and miss nothing
        published += [await publish(http, b.url, n) for n in range(5, 10)]
        more, _ = await poll_until(http, b.url, tok, answer.json()["cursor"], len(published) - len(polled))
        assert polled + more == published
        await asyncio.wait_for(read_sse_until(http, b.url, tok, sse_seen, len(published)), WAIT)
        assert sse_seen == published


async def read_sse_until(http: httpx.AsyncClient, url: str, tok: str, seen: list[str], want: int) -> None:
    """Resume SSE from the last id in `seen` (as a browser does, with Last-Event-ID) until `want` ids."""
    headers = {**auth(tok), "Last-Event-ID": seen[-1]}
    async with http.stream("GET", f"{url}/v1/sse", headers=headers) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                seen.append(line[4:])
                if len(seen) >= want:
                    return


async def test_draining_app_answers_polls_at_once_ends_streams_and_is_not_ready(
        make_settings: Callable[..., Settings]) -> None:
    """In-process (embedded engine), where the drain is begun directly: what a SIGTERM triggers
    and a live server makes hard to observe (it stops accepting within 0.1 s), e.g. /readyz."""
    tok = token("u1", "t1")
    async with running_app(make_settings(poll_max_timeout=60)) as (app, http):
        services = app.state.services  # type: ignore[attr-defined]
        assert (await http.get("/readyz")).status_code == 200
        head = (await http.get("/v1/poll", params={"timeout": 0}, headers=auth(tok))).json()["cursor"]
        waiting = asyncio.create_task(http.get("/v1/poll", params={"since": head, "timeout": 60}, headers=auth(tok)))
        # at the live head (no `since`): Session.next_batch can miss a close() that lands while it reads a
        # replay, and such a stream ends by sse-starlette's own shutdown watcher instead (within 0.5 s)
        stream = asyncio.create_task(http.get("/v1/sse", headers=auth(tok)))
        await eventually(lambda: services.drain.listeners == 2, WAIT)  # both parked, waiting for events

        services.drain.begin()
        answer, ended = await asyncio.wait_for(asyncio.gather(waiting, stream), WAIT)
        assert answer.json() == {"events": [], "cursor": head, "reset": False}
        assert ended.status_code == 200 and "id: " not in ended.text
        ready = await http.get("/readyz")
        assert (ready.status_code, ready.json()) == (503, {"status": "draining"})

        # while draining, a poll still gets what is waiting for it, at once; a new stream ends at once
        event = await http.post("/v1/events", headers=auth(service_token()),
                                json={"tenant": "t1", "channel": "user:u1", "type": "drain.test", "data": {}})
        late = await asyncio.wait_for(http.get("/v1/poll", params={"since": head, "timeout": 60}, headers=auth(tok)), WAIT)
        assert [e["id"] for e in late.json()["events"]] == [event.json()["id"]]
        late_stream = await asyncio.wait_for(http.get("/v1/sse", params={"since": head}, headers=auth(tok)), WAIT)
        assert late_stream.status_code == 200 and "id: " not in late_stream.text


# --- what is in flight when SIGTERM comes ---------------------------------------------------


class HeldPublish:
    """A publish whose request is in flight for as long as the test likes: its headers carry
    `Expect: 100-continue` and its body is sent only on `finish()`. The server's "100 Continue"
    says the app is running the request and waiting for the body (h11 does the HTTP framing)."""

    def __init__(self, sock: socket.socket, body: bytes) -> None:
        self.sock, self.body = sock, body
        self.conn = h11.Connection(our_role=h11.CLIENT)

    @classmethod
    async def start(cls, url: str, n: int) -> HeldPublish:
        host, port = url.removeprefix("http://").split(":")
        sock = socket.socket()
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, int(port))), WAIT)
        body = json.dumps({"tenant": "t1", "channel": "user:u1", "type": "drain.test", "data": {"n": n}}).encode()
        held = cls(sock, body)
        await held._send(held.conn.send(h11.Request(method="POST", target="/v1/events", headers=[
            ("Host", f"{host}:{port}"), ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
            ("Expect", "100-continue"), *auth(service_token()).items()])))
        informational = await held._next_event()
        assert isinstance(informational, h11.InformationalResponse) and informational.status_code == 100, informational
        return held

    async def _send(self, data: bytes | None) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data or b"")

    async def _next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 65536), WAIT * 2)
            except ConnectionResetError:
                data = b""
            self.conn.receive_data(data)

    async def finish(self) -> tuple[int, dict]:
        """Send the body; the answer's status and JSON body."""
        await self._send(self.conn.send(h11.Data(data=self.body)))
        await self._send(self.conn.send(h11.EndOfMessage()))
        return await self.answer()

    async def answer(self) -> tuple[int, dict]:
        """The server's answer (status, JSON body); (0, {}) if it closed the connection without one."""
        try:
            response = await self._next_event()
        except h11.RemoteProtocolError:  # closed before a response
            return 0, {}
        if isinstance(response, h11.ConnectionClosed):
            return 0, {}
        assert isinstance(response, h11.Response), response
        body = b""
        while not isinstance(event := await self._next_event(), h11.EndOfMessage):
            body += event.data
        return response.status_code, json.loads(body) if body.startswith(b"{") else {"raw": body.decode()}

    def close(self) -> None:
        self.sock.close()


def exited(server: LiveServer) -> bool:
    return server.process is not None and server.process.poll() is not None


async def ws_closed_with_1012(url: str) -> Callable[[], Any]:
    """A WebSocket on `url`, subscribed; returns a waiter for its end (the close code). SIGTERM's
    first visible step: uvicorn closes WebSockets (1012), then waits for the other connections."""
    ws = await connect(f"{url}/v1/ws?access_token={token('u9', 't1')}")
    assert json.loads(await asyncio.wait_for(ws.recv(), WAIT))["op"] == "subscribed"

    async def closed() -> int | None:
        try:
            while True:
                await asyncio.wait_for(ws.recv(), WAIT * 2)
        except ConnectionClosed:
            return ws.close_code

    return closed


async def test_a_request_in_flight_at_sigterm_gets_drain_seconds_to_finish(live_servers: Any, redis_url: str) -> None:
    """The body of a publish arrives well after the drain began (the process's WebSockets were
    closed, and a while passed: a fixed short grace instead of DRAIN_SECONDS would have cut it
    off): it is still answered and stored, and the process then exits by itself, nothing cancelled."""
    hold = 2.0  # seconds into the drain before the body is sent; DRAIN_SECONDS is far above it
    a, b = live_servers(DRAIN_SECONDS="30"), live_servers()
    tok = token("u1", "t1")
    async with httpx.AsyncClient(timeout=WAIT) as http:
        start = (await http.get(f"{b.url}/v1/poll", params={"timeout": 0}, headers=auth(tok))).json()["cursor"]
        ws_end = await ws_closed_with_1012(a.ws_url)
        held = await HeldPublish.start(a.url, 1)
        try:
            assert a.process is not None
            sigterm_at = time.monotonic()
            a.process.terminate()
            assert await ws_end() == 1012  # the drain is under way...
            await eventually(lambda: time.monotonic() > sigterm_at + hold, WAIT)
            assert not exited(a)  # ...and the request in flight holds the process (up to DRAIN_SECONDS)
            status, body = await held.finish()
        finally:
            held.close()
        assert status == 202, body
        returncode = await asyncio.to_thread(a.process.wait, WAIT)
        assert returncode == -signal.SIGTERM, a.logs()
        assert "graceful shutdown exceeded" not in a.logs()
        # it was published: another process serves it
        ids, _ = await poll_until(http, b.url, tok, start, 1)
        assert ids == [body["id"]]


async def test_what_still_runs_after_drain_seconds_is_cancelled_and_the_process_exits(
        live_servers: Any, redis_url: str) -> None:
    """A request whose body never comes would hold the process forever: after DRAIN_SECONDS it is
    cancelled (never answered 2xx, nothing published) and the process exits, its lifespan shutdown
    run. Bounds, not timings: never before DRAIN_SECONDS, and not a hang."""
    drain_seconds = 2
    a, b = live_servers(DRAIN_SECONDS=str(drain_seconds)), live_servers()
    tok = token("u1", "t1")
    async with httpx.AsyncClient(timeout=WAIT) as http:
        start = (await http.get(f"{b.url}/v1/poll", params={"timeout": 0}, headers=auth(tok))).json()["cursor"]
        held = await HeldPublish.start(a.url, 1)
        try:
            assert a.process is not None
            sigterm_at = time.monotonic()
            a.process.terminate()
            returncode = await asyncio.to_thread(a.process.wait, drain_seconds + WAIT)
            exited_after = time.monotonic() - sigterm_at
            status, body = await held.answer()  # what the client got, if anything
        finally:
            held.close()
        assert returncode == -signal.SIGTERM, a.logs()
        assert exited_after >= drain_seconds, f"exited {exited_after:.1f} s after SIGTERM, before DRAIN_SECONDS"
        logs = a.logs()
        assert re.search(r"Cancel [1-9]\d* running task\(s\), timeout graceful shutdown exceeded", logs), logs
        assert "Application shutdown complete" in logs  # the lifespan shutdown still ran
        assert not 200 <= status < 300, (status, body)
        # nothing was published by the cancelled request
        assert (await http.get(f"{b.url}/v1/poll", params={"since": start, "timeout": 0},
                               headers=auth(tok))).json()["events"] == []


def id_key(event_id: str) -> tuple[int, int]:
    """Test-side ordering of ids (`<ms>-<seq>`): the log's order of events published concurrently."""
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


class Client:
    """One client of each transport, first on A, then (once A ends it) resumed on B from its last
    id, as the browser client does; `seen` is every event id it got, in the order it got them."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.ended_on_a: object = None  # how A ended it (a close code, an empty poll answer)
        self.on_b = False


async def ws_client(client: Client, a: LiveServer, b: LiveServer, tok: str, live: asyncio.Event) -> None:
    for server in (a, b):
        url = f"{server.ws_url}/v1/ws?access_token={tok}" + (f"&since={client.seen[-1]}" if client.seen else "")
        async with connect(url) as ws:
            client.on_b = server is b
            subscribed = 0
            try:
                while True:
                    frame = json.loads(await ws.recv())
                    if "id" in frame:
                        client.seen.append(frame["id"])
                    elif frame.get("op") == "subscribed" and (subscribed := subscribed + 1) == 2:
                        live.set()  # user:u1 and tenant:t1 joined: live from here
            except ConnectionClosed:
                if server is a:
                    client.ended_on_a = ws.close_code
                else:
                    raise


async def sse_client(client: Client, a: LiveServer, b: LiveServer, tok: str, live: asyncio.Event) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(WAIT, read=None)) as http:
        for server in (a, b):
            headers = {**auth(tok), **({"Last-Event-ID": client.seen[-1]} if client.seen else {})}
            async with http.stream("GET", f"{server.url}/v1/sse", headers=headers) as response:
                assert response.status_code == 200
                client.on_b = server is b
                live.set()
                async for line in response.aiter_lines():
                    if line.startswith("id: "):
                        client.seen.append(line[4:])
            assert server is a, "B ended its stream"
            client.ended_on_a = "stream ended"


async def poll_client(client: Client, a: LiveServer, b: LiveServer, tok: str, cursor: str) -> None:
    """Long-polls A until A is gone (a refused or dropped connection), then B, from its cursor."""
    server = a
    async with httpx.AsyncClient(timeout=WAIT * 2) as http:
        while True:
            try:
                response = await http.get(f"{server.url}/v1/poll", params={"since": cursor, "timeout": WAIT},
                                          headers=auth(tok))
            except httpx.TransportError as exc:
                assert server is a, exc
                client.ended_on_a, server, client.on_b = type(exc).__name__, b, True
                continue
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["reset"] is False
            client.seen += [event["id"] for event in body["events"]]
            cursor = body["cursor"]


async def test_events_published_while_a_process_drains_reach_its_clients_elsewhere_exactly_once_in_order(
        live_servers: Any, redis_url: str) -> None:
    """A publisher keeps publishing (through B, and once through A itself) from right after A's
    SIGTERM until after A exited. A publish held in flight keeps A draining until enough events
    were published meanwhile, so the window is exercised by construction, not by timing. Each
    transport's client, moved to B, ends with every event exactly once, in the log's order."""
    during = 20  # events published while A is known to be draining
    a, b = live_servers(DRAIN_SECONDS="60"), live_servers()
    tok = token("u1", "t1")
    async with httpx.AsyncClient(timeout=WAIT) as http:
        cursor = (await http.get(f"{b.url}/v1/poll", params={"timeout": 0}, headers=auth(tok))).json()["cursor"]
        clients = {"ws": Client(), "sse": Client(), "poll": Client()}
        ws_live, sse_live = asyncio.Event(), asyncio.Event()
        held: HeldPublish | None = None
        tasks = [asyncio.create_task(ws_client(clients["ws"], a, b, tok, ws_live)),
                 asyncio.create_task(sse_client(clients["sse"], a, b, tok, sse_live)),
                 asyncio.create_task(poll_client(clients["poll"], a, b, tok, cursor))]
        try:
            await asyncio.wait_for(asyncio.gather(ws_live.wait(), sse_live.wait()), WAIT)
            published = [await publish(http, b.url, n) for n in range(3)]  # before: every client has a cursor
            await eventually(lambda: all(len(c.seen) == 3 for c in clients.values()), WAIT)
            await eventually(lambda: connections(http, a.url, "poll"), WAIT)  # the long-poll waits in A
            held = await HeldPublish.start(a.url, -1)

            assert a.process is not None
            a.process.terminate()
            # publishing from right after SIGTERM on; A drains meanwhile, held up by the publish in flight
            for n in range(3, 3 + during):
                published.append(await publish(http, b.url, n))
            assert not exited(a), "A exited with a request in flight"
            status, body = await held.finish()  # that publish goes through the draining process itself
            assert status == 202, body
            published.append(body["id"])
            deadline = time.monotonic() + WAIT * 2
            while not exited(a):  # on until A is gone...
                assert time.monotonic() < deadline, "A did not exit once its last request was answered"
                published.append(await publish(http, b.url, len(published)))
            for _ in range(5):  # ...and after
                published.append(await publish(http, b.url, len(published)))
            assert a.process.returncode == -signal.SIGTERM, a.logs()

            # every client was moved to B by the drain and gets everything there, up to the last event
            published.sort(key=id_key)
            await eventually(lambda: all(c.on_b and published[-1] in c.seen for c in clients.values()), WAIT * 2)
        finally:
            if held is not None:
                held.close()
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            assert isinstance(result, asyncio.CancelledError), result  # no client failed on its own
        assert clients["ws"].ended_on_a == 1012
        assert clients["sse"].ended_on_a == "stream ended"
        for name, client in clients.items():
            assert client.seen == published, (name, len(client.seen), len(published))

"""Graceful drain: on SIGTERM a process tells its WebSocket clients to reconnect elsewhere (close
1012, "service restart"), answers its waiting long-polls at once, ends SSE streams, answers
/readyz with 503, and exits within DRAIN_SECONDS; the clients resume on another process without
losing an event."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.settings import Settings
from tests.conftest import auth, eventually, running_app, service_token, token

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
    """Long-poll from `cursor` until `want` events came; their ids and the cursor to continue from."""
    ids: list[str] = []
    while len(ids) < want:
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

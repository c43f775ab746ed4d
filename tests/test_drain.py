"""Graceful drain: on SIGTERM a process tells its WebSocket clients to reconnect elsewhere (close
1012, "service restart"), ends SSE streams, and exits; the clients resume on another process
without losing an event."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import auth, eventually, service_token, token

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

"""Presence of long-polling clients (README, "Presence and live state"): a long-poll client counts
as one connection per `client_id` and leaves by expiry, its requests coming and going.

So across a client's successive polls presence shows it once (one connection, one
`presence.join`), between its polls too; two client_ids of one user are two connections; and once
it stops polling it leaves PRESENCE_TTL_SECONDS later, with one `presence.leave`. Seen only from
outside: GET /v1/presence/<channel>, the channel's events, /metrics.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, eventually, service_token, token
from tests.live_support import WAIT

TTL = 10  # PRESENCE_TTL_SECONDS: long enough that a loaded machine does not expire a client between two polls
SETTINGS = {"PRESENCE_TTL_SECONDS": str(TTL), "PRESENCE_HEARTBEAT_SECONDS": "1"}
REPO = ["repository:*"]


@pytest.fixture
async def http() -> Any:
    async with httpx.AsyncClient(timeout=httpx.Timeout(WAIT * 3, connect=5.0), trust_env=False) as client:
        yield client


class Room:
    """One repository channel of one server, watched over HTTP."""

    def __init__(self, http: httpx.AsyncClient, server: LiveServer) -> None:
        self.http, self.server = http, server
        self.channel = f"repository:{uuid.uuid4().hex[:12]}"

    async def poll(self, user: str, client_id: str | None, *, timeout: float = 0, since: str | None = None,
                   join: bool = True) -> dict:
        params: dict[str, Any] = {"timeout": timeout}
        if join:
            params["channels"] = self.channel
        if client_id is not None:
            params["client_id"] = client_id
        if since is not None:
            params["since"] = since
        response = await self.http.get(f"{self.server.url}/v1/poll", params=params,
                                       headers={"Authorization": f"Bearer {token(user, 't1', channels=REPO)}"})
        assert response.status_code == 200, response.text
        return response.json()

    async def present(self) -> dict[str, int]:
        """user_id -> connections, as GET /v1/presence says (asked by a user who is not polling)."""
        response = await self.http.get(f"{self.server.url}/v1/presence/{self.channel}",
                                       headers={"Authorization": f"Bearer {token('watcher', 't1', channels=REPO)}"})
        assert response.status_code == 200, response.text
        return {u["user_id"]: u["connections"] for u in response.json()["users"]}

    async def waiting_polls(self) -> float:
        text = (await self.http.get(f"{self.server.url}/metrics")).text
        match = re.search(r'^realtime_connections\{transport="poll"\} (\S+)$', text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    async def publish(self, data: dict) -> str:
        response = await self.http.post(f"{self.server.url}/v1/events", json={
            "tenant": "t1", "channel": self.channel, "type": "test.event", "data": data},
            headers={"Authorization": f"Bearer {service_token()}"})
        assert response.status_code == 202, response.text
        return response.json()["id"]

    async def presence_events(self, since: str) -> list[tuple[str, str]]:
        """(type, user_id) of the channel's presence events after `since`, in order (read by a
        user of its own, after the test's own clients are done)."""
        out: list[tuple[str, str]] = []
        while True:
            body = await self.poll("auditor", None, since=since)
            if not body["events"]:
                return [(t, u) for t, u in out if u != "auditor"]
            out += [(e["type"], e["data"]["user_id"]) for e in body["events"] if e["type"].startswith("presence.")]
            since = body["cursor"]


@pytest.fixture(params=["redis", "memory"])
def server(request: pytest.FixtureRequest, live_servers: Callable[..., LiveServer]) -> LiveServer:
    if request.param == "redis":
        request.getfixturevalue("redis_url")
    return live_servers(redis=request.param == "redis", **SETTINGS)


async def test_a_long_poll_client_is_one_connection_per_client_id_and_leaves_by_expiry(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    room = Room(http, server)
    start = (await room.poll("auditor", None, join=False))["cursor"]  # the log's head, before anything below

    # successive polls of one client_id (each sending back the cursor it got): one connection,
    # present between its polls as well
    cursor = start
    for _ in range(3):
        cursor = (await room.poll("u1", "c1", since=cursor))["cursor"]
        assert await room.present() == {"u1": 1}

    # while one of its polls waits, still that one connection
    before = await room.waiting_polls()
    waiting = asyncio.create_task(room.poll("u1", "c1", timeout=WAIT, since=cursor))
    try:
        await eventually(lambda: _more(room, before), timeout=WAIT)
        assert await room.present() == {"u1": 1}
        event_id = await room.publish({"wake": "up"})
        assert [e["id"] for e in (await waiting)["events"] if e["type"] == "test.event"] == [event_id]
    finally:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
    assert await room.present() == {"u1": 1}

    # another client_id of the same user is another connection; another user is another viewer
    await room.poll("u1", "c2")
    assert await room.present() == {"u1": 2}
    await room.poll("u2", "c1")
    assert await room.present() == {"u1": 2, "u2": 1}

    # nobody polls any more: they leave by expiry (PRESENCE_TTL_SECONDS), not before
    assert await eventually(lambda: _empty(room), timeout=TTL * 4)

    # and the channel saw one join and one leave per user, the leaves after every join (a leave
    # is announced by the sweep, up to PRESENCE_HEARTBEAT_SECONDS after the expiry itself)
    async def both_left() -> list[tuple[str, str]] | None:
        events = await room.presence_events(start)
        return events if sum(t == "presence.leave" for t, _ in events) >= 2 else None

    events = await eventually(both_left, timeout=WAIT)
    assert sorted(events) == sorted([("presence.join", "u1"), ("presence.join", "u2"),
                                     ("presence.leave", "u1"), ("presence.leave", "u2")]), events
    assert [t for t, _ in events] == ["presence.join", "presence.join", "presence.leave", "presence.leave"], events


async def _empty(room: Room) -> bool:
    return await room.present() == {}


async def _more(room: Room, before: float) -> bool:
    return await room.waiting_polls() > before
